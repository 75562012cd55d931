"""Issue 17: AvailableComponents, with the whole operator on the test bed's real servers.

The first test uses the opamp-go test agent (`--available-component`): opamp-go v0.23.0 sends
only the hash in its first message and the full map when the server sets
ReportAvailableComponents. It does not tell which flags a reply carried, so the second test
is a scripted WebSocket client written from the specification (the OpAMP frame header and
one AgentToServer per binary frame): it reads every reply's flags, repeats the hash in one
session (a Collector does after a ReportFullState) and sends a map too large to keep.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from websockets.asyncio.client import ClientConnection, connect

from opamp_operator.kube.shapes.naming import resource_name
from opamp_operator.opamp.frames import decode_ws_frame, encode_ws_frame
from opamp_operator.opamp.generated import opamp_pb2
from tests.e2e.conftest import OperatorFactory
from tests.e2e.helpers import get_agent_cr
from tests.support.fake_agents import hello
from tests.support.goagent import GoAgent
from tests.support.operator_process import OperatorProcess, metric_value
from tests.support.polling import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

ASK = int(opamp_pb2.ServerToAgentFlags_ReportAvailableComponents)
REPORTS = int(opamp_pb2.AgentCapabilities_ReportsAvailableComponents)
REQUESTS = "opamp_available_components_requests_total"


def cr_of(kubeconfig: Path, namespace: str, agent_id: str) -> dict[str, Any]:
    return get_agent_cr(kubeconfig, namespace, resource_name(agent_id)) or {}


def summary_of(kubeconfig: Path, namespace: str, agent_id: str) -> dict[str, Any]:
    return dict(
        cr_of(kubeconfig, namespace, agent_id).get("status", {}).get("availableComponents") or {}
    )


async def requests(operator: OperatorProcess) -> float:
    return metric_value(await operator.metrics_text(), REQUESTS)


async def stored_row(dsn: str, agent_id: str) -> asyncpg.Record | None:
    connection = await asyncpg.connect(dsn)
    try:
        return await connection.fetchrow(
            "SELECT hash, components::text, counts::text, total "
            "FROM agent_available_components WHERE agent_id = $1",
            agent_id,
        )
    finally:
        await connection.close()


async def test_goagent_hash_then_full_set_in_cr_rest_and_postgres(
    operator_factory: OperatorFactory, kubeconfig: Path, namespace: str, postgres_dsn: str
) -> None:
    operator = operator_factory()
    await operator.start()
    agent_id = str(uuid.uuid4())
    entries = ["receivers/otlp", "receivers/prometheus", "processors/batch", "exporters/debug"]
    args = [item for entry in entries for item in ("--available-component", entry)]
    async with GoAgent() as agent:
        await agent.start(url=operator.ws_url, instance_uid=agent_id, heartbeat=1, extra_args=args)
        summary = await eventually(
            "the full component set summarised in the CR",
            lambda: (s := summary_of(kubeconfig, namespace, agent_id)).get("complete") and s,
            within=30,
        )  # fmt: skip
        assert summary["counts"] == {"exporters": 1, "processors": 1, "receivers": 2}
        assert summary["total"] == 4 and len(summary["hash"]) == 64
        # opamp-go sent the map only because the server asked: once.
        assert await requests(operator) == 1

        listed = await operator.get_json(f"/api/v1/agents/{agent_id}/components")
        assert listed["source"] == "fleet" and listed["complete"] is True
        assert listed["hash"] == summary["hash"]
        otlp = listed["components"]["receivers"]["subComponents"]["otlp"]
        assert otlp == {"metadata": {"version": "0.0.0-test"}, "subComponents": {}}
        status = await operator.get_json(f"/api/v1/agents/{agent_id}/status")
        assert status["availableComponents"] == summary

        row = await eventually(
            "the components row in PostgreSQL",
            lambda: _complete_row(postgres_dsn, agent_id),
            within=30,
        )  # fmt: skip
        assert row["hash"] == summary["hash"] and row["total"] == 4
        assert json.loads(row["counts"]) == summary["counts"]
        assert "prometheus" in json.loads(row["components"])["receivers"]["subComponents"]

        # A new session sends the same hash again: the server holds the set, asks nothing.
        before = status["connection"]["sessionId"]
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{operator.api_url}/api/v1/agents/{agent_id}/reconnect") as response,
        ):
            assert response.status == 202

        async def new_session() -> bool:
            now = await operator.get_json(f"/api/v1/agents/{agent_id}/status")
            connection = now.get("connection") or {}
            return bool(connection.get("sessionId") not in (None, before))

        await eventually("a new session", new_session, within=30)
        assert await requests(operator) == 1
        assert summary_of(kubeconfig, namespace, agent_id) == summary
    assert await operator.terminate() == 0


async def _complete_row(dsn: str, agent_id: str) -> asyncpg.Record | None:
    row = await stored_row(dsn, agent_id)
    return row if row is not None and row["components"] is not None else None


async def exchange(socket: ClientConnection, message: opamp_pb2.AgentToServer) -> Any:
    await socket.send(encode_ws_frame(message.SerializeToString()))
    return opamp_pb2.ServerToAgent.FromString(decode_ws_frame(await socket.recv(decode=False)))


def with_components(
    message: opamp_pb2.AgentToServer, digest: bytes, names: dict[str, list[str]] | None = None
) -> opamp_pb2.AgentToServer:
    message.capabilities |= REPORTS
    message.available_components.hash = digest
    for kind, items in (names or {}).items():
        details = message.available_components.components[kind]
        for item in items:
            details.sub_component_map[item].metadata.add(key="version").value.string_value = "1"
    return message


async def status_writes(operator: OperatorProcess) -> float:
    text = await operator.metrics_text()
    return metric_value(text, "opamp_kube_writes_total", {"kind": "status", "outcome": "ok"})


def heartbeat(agent_id: str, seq: int) -> opamp_pb2.AgentToServer:
    return opamp_pb2.AgentToServer(instance_uid=uuid.UUID(agent_id).bytes, sequence_num=seq)


async def test_scripted_client_repeated_hash_is_not_asked_again_nor_written(
    operator_factory: OperatorFactory, kubeconfig: Path, namespace: str
) -> None:
    operator = operator_factory()
    await operator.start()
    agent_id = str(uuid.uuid4())
    collector = {"receivers": ["otlp"], "exporters": ["otlp", "debug"], "extensions": ["opamp"]}
    async with connect(operator.ws_url, open_timeout=10) as socket:
        first = await exchange(socket, with_components(hello(agent_id), b"\x01" * 32))
        assert first.flags & ASK  # only the hash: the server asks for the map
        reply = await exchange(
            socket, with_components(heartbeat(agent_id, 1), b"\x01" * 32, collector)
        )
        assert not reply.flags & ASK
        summary = await eventually(
            "the summary in the CR",
            lambda: (s := summary_of(kubeconfig, namespace, agent_id)).get("complete") and s,
            within=30,
        )  # fmt: skip
        assert summary == {
            "hash": "01" * 32,
            "complete": True,
            "counts": {"exporters": 2, "extensions": 1, "receivers": 1},
            "total": 4,
        }
        writes = await status_writes(operator)
        for seq in (2, 3, 4):  # the same hash again: hash only, in full, hash only
            names = collector if seq == 3 else None
            repeat = with_components(heartbeat(agent_id, seq), b"\x01" * 32, names)
            assert not (await exchange(socket, repeat)).flags & ASK
        # Then a change the CR shows: the status writer takes events in order, so once the
        # CR shows it every repeat was handled, and exactly one status write was made.
        unhealthy = heartbeat(agent_id, 5)
        unhealthy.health.healthy = False
        unhealthy.health.status = "StatusError"
        await exchange(socket, unhealthy)
        await eventually(
            "health in the CR",
            lambda: cr_of(kubeconfig, namespace, agent_id)["status"]["health"]["healthy"] is False,
            within=30,
        )  # fmt: skip
        assert await status_writes(operator) == writes + 1

        bad_before = metric_value(
            await operator.metrics_text(),
            "opamp_bad_input_total",
            {"reason": "available_components_too_large"},
        )
        huge = {"receivers": [f"r{i:05d}" for i in range(5000)]}
        too_large = with_components(heartbeat(agent_id, 6), b"\x02" * 32, huge)
        reply = await exchange(socket, too_large)
        assert not reply.HasField("error_response")  # the rest of the message stands
        assert not reply.flags & ASK  # asking again would bring the same map back
        text = await operator.metrics_text()
        labels = {"reason": "available_components_too_large", "transport": "websocket"}
        assert metric_value(text, "opamp_bad_input_total", labels) == bad_before + 1
        stale = await eventually(
            "the new hash, without a list",
            lambda: (s := summary_of(kubeconfig, namespace, agent_id)).get("hash") == "02" * 32
            and s,
            within=30,
        )  # fmt: skip
        assert stale["complete"] is False and stale["total"] == 0 and stale["counts"] == {}
    assert await operator.terminate() == 0
