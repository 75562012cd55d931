"""The whole operator with real OpAMP clients: CRs, history, REST and metrics agree.

The operator runs as `python -m opamp_operator run` against the test bed's kube-apiserver
and PostgreSQL; agents are the opamp-go test agent (WebSocket and HTTP) and the official
Python client (HTTP). Timings: heartbeat 1 s, timeout 3 s, Error after 6 s Offline.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode

from opamp_operator.kube.shapes.naming import resource_name
from opamp_operator.opamp.frames import decode_ws_frame, encode_ws_frame
from opamp_operator.opamp.generated import opamp_pb2
from tests.e2e.conftest import OperatorFactory
from tests.e2e.helpers import condition, get_agent_cr
from tests.support.fake_agents import hello
from tests.support.goagent import GoAgent
from tests.support.opamp_clients import PythonAgent
from tests.support.operator_process import OperatorProcess, kubectl, metric_value
from tests.support.polling import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


async def history_rows(dsn: str, agent_id: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(dsn)
    try:
        return list(
            await connection.fetch(
                "SELECT * FROM agent_connection_history WHERE agent_id = $1 ORDER BY id", agent_id
            )
        )
    finally:
        await connection.close()


async def transitions(dsn: str, agent_id: str) -> list[tuple[Any, ...]]:
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT from_status, to_status, reason FROM agent_state_transitions"
            " WHERE agent_id = $1 ORDER BY id",
            agent_id,
        )
        return [tuple(row) for row in rows]
    finally:
        await connection.close()


def phase_of(kubeconfig: Path, namespace: str, agent_id: str) -> str | None:
    cr = get_agent_cr(kubeconfig, namespace, resource_name(agent_id))
    return None if cr is None else cr.get("status", {}).get("phase")


async def test_real_clients_are_mirrored_time_out_and_come_back(
    operator_factory: OperatorFactory, kubeconfig: Path, namespace: str, postgres_dsn: str
) -> None:
    operator = operator_factory()
    await operator.start()
    ws_id, http_id, py_id = (str(uuid.uuid4()) for _ in range(3))
    async with GoAgent() as ws_agent, GoAgent() as http_agent, PythonAgent() as py_agent:
        await ws_agent.start(
            url=operator.ws_url,
            instance_uid=ws_id,
            service_name="checkout",
            service_version="1.2.3",
            host_name="node-a",
            heartbeat=1,
        )
        await http_agent.start(
            url=operator.http_url,
            instance_uid=http_id,
            service_name="payments",
            service_version="2.0.0",
            heartbeat=1,
        )
        await py_agent.start(url=operator.http_url, instance_uid=py_id, service_name="pyagent",
                             heartbeat=1)  # fmt: skip

        async def all_online() -> str | None:
            out = kubectl(kubeconfig, "-n", namespace, "get", "opampagents")
            return out if out.count("Online") == 3 else None

        table = await eventually("three Online agents in kubectl", all_online, within=30)
        header = table.splitlines()[0].split()
        assert header[:6] == ["NAME", "PHASE", "SERVICE", "VERSION", "HOST", "SINCE"]
        checkout = next(line for line in table.splitlines() if resource_name(ws_id) in line)
        assert checkout.split()[1:5] == ["Online", "checkout", "1.2.3", "node-a"]
        wide = kubectl(kubeconfig, "-n", namespace, "get", "opampagents", "-o", "wide")
        assert "websocket" in wide and "http" in wide and ws_id in wide
        selected = kubectl(kubeconfig, "-n", namespace, "get", "opampagents",
                           "-l", "opamp.dev/service-name=payments", "-o", "name")  # fmt: skip
        assert selected.strip() == f"opampagent.opamp.dev/{resource_name(http_id)}"

        status = await operator.get_json(f"/api/v1/agents/{ws_id}/status")
        assert status["phase"] == "Online"
        metrics = await operator.metrics_text()
        assert metric_value(metrics, "opamp_agents_online_total") == 3

        # The WebSocket agent freezes: Offline after the 3 s timeout, then Error after 6 s.
        ws_agent.freeze()
        cr = await eventually(
            "the frozen agent Offline in its CR",
            lambda: _cr_in_phase(kubeconfig, namespace, ws_id, "Offline"),
            within=3 + 1 + 2,  # timeout + 1 s detection budget + the mirror's write
        )
        assert cr["status"]["disconnectReason"] == "heartbeat_timeout"
        assert condition(cr, "Connected")["status"] == "False"
        assert condition(cr, "Ready")["status"] == "False"
        selector = f"involvedObject.name={resource_name(ws_id)}"
        events = kubectl(kubeconfig, "-n", namespace, "get", "events", "--field-selector", selector)
        assert "heartbeat_timeout" in events or "HeartbeatTimeout" in events
        await eventually(
            "the frozen agent in Error",
            lambda: _cr_in_phase(kubeconfig, namespace, ws_id, "Error"),
            within=6 + 3,
        )
        metrics = await operator.metrics_text()
        assert metric_value(metrics, "opamp_agent_heartbeat_missed_total") >= 1
        assert metric_value(metrics, "opamp_agents_offline_total") >= 1

        # It thaws and reconnects: Online again in the CR.
        ws_agent.thaw()
        await eventually(
            "the thawed agent Online again",
            lambda: _cr_in_phase(kubeconfig, namespace, ws_id, "Online"),
            within=20,
        )

    rows = await history_rows(postgres_dsn, ws_id)
    first = rows[0]
    assert first["disconnect_reason"] == "heartbeat_timeout"
    assert first["transport"] == "websocket"
    assert first["duration_seconds"] > 0
    assert first["remote_addr"].startswith("127.0.0.1")

    async def came_back() -> list[tuple[Any, ...]] | None:
        steps = await transitions(postgres_dsn, ws_id)
        return steps if ("error", "online", "connected") in steps else None

    steps = await eventually("the return in the transition log", came_back, within=5)
    assert steps[:3] == [
        (None, "online", "connected"),
        ("online", "offline", "heartbeat_timeout"),
        ("offline", "error", "offline_too_long"),
    ]
    history = await operator.get_json(f"/api/v1/agents/{ws_id}/connection-history")
    reasons = [item.get("disconnectReason") for item in history["items"]]
    assert "heartbeat_timeout" in reasons


async def _cr_in_phase(
    kubeconfig: Path, namespace: str, agent_id: str, phase: str
) -> dict[str, Any] | None:
    cr = await asyncio.to_thread(get_agent_cr, kubeconfig, namespace, resource_name(agent_id))
    if cr is not None and cr.get("status", {}).get("phase") == phase:
        return cr
    return None


async def test_closed_websocket_is_offline_at_once_with_its_reason(
    operator_factory: OperatorFactory, kubeconfig: Path, namespace: str, postgres_dsn: str
) -> None:
    operator = operator_factory(heartbeat_timeout=30.0, error_after_offline=60.0)
    await operator.start()
    agent_id = str(uuid.uuid4())
    async with GoAgent() as agent:
        await agent.start(url=operator.ws_url, instance_uid=agent_id, service_name="quitter",
                          service_version="1.2.3", heartbeat=1, no_disconnect=True,
                          run_for=2)  # fmt: skip
        await eventually(
            "Online", lambda: _cr_in_phase(kubeconfig, namespace, agent_id, "Online"), within=20
        )
        listed = await operator.get_json("/api/v1/agents")
        assert [item["serviceVersion"] for item in listed["items"]] == ["1.2.3"]
        cr = await eventually(
            "Offline long before the 30 s heartbeat timeout",
            lambda: _cr_in_phase(kubeconfig, namespace, agent_id, "Offline"),
            within=8,
        )
    assert cr["status"]["disconnectReason"] == "connection_closed"
    offline = await operator.get_json("/api/v1/agents/offline")
    assert [item["serviceVersion"] for item in offline["items"]] == ["1.2.3"]
    rows = await eventually(
        "a closed history row", lambda: _closed_rows(postgres_dsn, agent_id), within=5
    )
    assert [row["disconnect_reason"] for row in rows] == ["connection_closed"]


async def _closed_rows(dsn: str, agent_id: str) -> list[asyncpg.Record]:
    rows = await history_rows(dsn, agent_id)
    return [row for row in rows if row["disconnected_at"] is not None]


async def _ws_and_http_online(
    operator: OperatorProcess,
    agents: tuple[GoAgent, GoAgent],
    ids: list[str],
    kubeconfig: Path,
    namespace: str,
) -> None:
    """Start one WebSocket and one HTTP agent (1 s heartbeats); wait until both CRs are Online."""
    for agent, agent_id, url, service in zip(
        agents, ids, (operator.ws_url, operator.http_url), ("a", "b"), strict=True
    ):
        await agent.start(url=url, instance_uid=agent_id, service_name=service, heartbeat=1)
    for agent_id in ids:
        await eventually("Online", lambda a=agent_id: _cr_in_phase(  # type: ignore[misc]
            kubeconfig, namespace, a, "Online"), within=20)  # fmt: skip


async def test_sigterm_ends_every_session_as_operator_shutdown(
    operator_factory: OperatorFactory, kubeconfig: Path, namespace: str, postgres_dsn: str
) -> None:
    """Every session row ends operator_shutdown, and a WebSocket client sees close code 1001
    (going away). That client is scripted from the OpAMP specification (an AgentToServer per
    binary frame) because opamp-go's client does not expose the close code it received."""
    operator = operator_factory()
    await operator.start()
    ids = [str(uuid.uuid4()) for _ in range(2)]
    scripted_id = str(uuid.uuid4())
    async with GoAgent() as ws_agent, GoAgent() as http_agent:
        await _ws_and_http_online(operator, (ws_agent, http_agent), ids, kubeconfig, namespace)
        async with connect(operator.ws_url, open_timeout=10, ping_interval=None) as socket:
            # No ReportsHeartbeat: the connection, not the 3 s heartbeat timeout, judges its
            # liveness, so nothing but the shutdown can end this session.
            first = hello(scripted_id, service="scripted", reports_heartbeat=False)
            await socket.send(encode_ws_frame(first.SerializeToString()))
            frame = await asyncio.wait_for(socket.recv(), timeout=10)
            assert isinstance(frame, bytes)
            reply = opamp_pb2.ServerToAgent.FromString(decode_ws_frame(frame))
            assert reply.instance_uid == uuid.UUID(scripted_id).bytes
            assert not reply.HasField("error_response"), reply.error_response
            await eventually("the scripted client Online", lambda: _cr_in_phase(
                kubeconfig, namespace, scripted_id, "Online"), within=20)  # fmt: skip
            closing = asyncio.create_task(_close_seen(socket))
            assert await operator.terminate(within=30) == 0
            closed = await asyncio.wait_for(closing, timeout=10)
    # rcvd is None when the server aborted the TCP connection instead of closing it.
    assert closed.rcvd is not None, f"no close frame from the server: {closed!r}"
    assert closed.rcvd.code == CloseCode.GOING_AWAY, closed.rcvd
    assert closed.rcvd.reason == "operator_shutdown", closed.rcvd
    for agent_id in [*ids, scripted_id]:
        rows = await history_rows(postgres_dsn, agent_id)
        assert rows and all(row["disconnected_at"] is not None for row in rows)
        # Every session of the run, not only the last: a WebSocket handler cancelled by
        # Kopf's task sweep ends as connection_closed and the agent reconnects in time.
        assert [row["disconnect_reason"] for row in rows] == ["operator_shutdown"], agent_id
        cr = get_agent_cr(kubeconfig, namespace, resource_name(agent_id))
        assert cr is not None
        assert cr["status"]["phase"] == "Offline"
        assert cr["status"]["disconnectReason"] == "operator_shutdown"


async def _close_seen(socket: ClientConnection) -> ConnectionClosed:
    """Read until the connection ends; the ConnectionClosed that ended it."""
    try:
        while True:
            await socket.recv()
    except ConnectionClosed as closed:
        return closed


async def test_sigterm_with_a_frozen_peer_ends_every_session_as_operator_shutdown(
    operator_factory: OperatorFactory, kubeconfig: Path, namespace: str, postgres_dsn: str
) -> None:
    """A frozen WebSocket peer holds its close handshake for the close timeout (5 s), longer
    than the 3 s heartbeat timeout: no session may time out while the listener waits."""
    operator = operator_factory()
    await operator.start()
    ids = [str(uuid.uuid4()) for _ in range(2)]
    async with GoAgent() as frozen, GoAgent() as http_agent:
        await _ws_and_http_online(operator, (frozen, http_agent), ids, kubeconfig, namespace)
        frozen.freeze()
        assert await operator.terminate(within=30) == 0
        assert "1 WebSockets closed" in operator.log_text()  # the frozen one was still open
    for agent_id in ids:
        rows = await history_rows(postgres_dsn, agent_id)
        assert [row["disconnect_reason"] for row in rows] == ["operator_shutdown"], agent_id


async def test_sigkill_then_restart_closes_orphaned_rows_and_agents_return(
    operator_factory: OperatorFactory, kubeconfig: Path, namespace: str, postgres_dsn: str
) -> None:
    # A CR's lastSeenAt may lag by the refresh interval, so an orphaned CR is judged Offline
    # after timeout + refresh; a short refresh keeps the test short.
    operator = operator_factory(last_seen_refresh=2.0)
    await operator.start()
    back_id, gone_id = str(uuid.uuid4()), str(uuid.uuid4())
    async with GoAgent() as back, GoAgent() as gone:
        await back.start(url=operator.ws_url, instance_uid=back_id, service_name="back",
                         heartbeat=1)  # fmt: skip
        await gone.start(url=operator.ws_url, instance_uid=gone_id, service_name="gone",
                         heartbeat=1)  # fmt: skip
        for agent_id in (back_id, gone_id):
            await eventually("Online", lambda a=agent_id: _cr_in_phase(  # type: ignore[misc]
                kubeconfig, namespace, a, "Online"), within=20)  # fmt: skip
        for agent_id in (back_id, gone_id):  # a SIGKILL loses what was not yet flushed
            await eventually("an open history row", lambda a=agent_id: _rows_open(  # type: ignore[misc]
                postgres_dsn, a), within=10)  # fmt: skip
        await operator.kill()
        await gone.kill()  # this one never comes back
        await operator.start()  # same replica id, ports and database
        await eventually(
            "the reconnecting agent Online with a new session",
            lambda: _open_rows(postgres_dsn, back_id),
            within=30,
        )
        # Nothing in this process holds the vanished agent: its CR, left Online by the
        # killed process, must turn Offline by the heartbeat deadline.
        cr = await eventually(
            "the vanished agent Offline",
            lambda: _cr_in_phase(kubeconfig, namespace, gone_id, "Offline"),
            within=3 + 2 + 5 + 5,  # timeout + refresh + liveness check interval + slack
        )
        assert cr["status"]["disconnectReason"] == "heartbeat_timeout"
    for agent_id in (back_id, gone_id):
        rows = await history_rows(postgres_dsn, agent_id)
        assert rows[0]["disconnect_reason"] == "operator_restart"
        assert rows[0]["duration_seconds"] > 0


async def _rows_open(dsn: str, agent_id: str) -> list[asyncpg.Record]:
    return [row for row in await history_rows(dsn, agent_id) if row["disconnected_at"] is None]


async def _open_rows(dsn: str, agent_id: str) -> list[asyncpg.Record]:
    rows = await history_rows(dsn, agent_id)
    return [row for row in rows if row["disconnected_at"] is None] if len(rows) >= 2 else []
