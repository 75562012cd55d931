"""Issue 17: the Restart command, duplicate instance uids, the OpAMP-Instance-UID header and
custom capabilities, with the whole operator on the test bed's real servers.

Agents are the opamp-go test agent (tests/agents/goagent): it accepts Restart with
`--accept-restart` (opamp-go's OnCommand) and reports `--custom-capability`. opamp-go cannot
be made to send a wrong OpAMP-Instance-UID header, so the header refusals use a scripted
client written from the specification (plain HTTP POST and a WebSocket with the OpAMP frame
header), as the test says where it does so.
"""

from __future__ import annotations

import asyncio
import functools
import json
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from opamp_operator.kube.shapes.naming import resource_name
from opamp_operator.opamp.frames import encode_ws_frame
from opamp_operator.opamp.generated import opamp_pb2
from tests.e2e.conftest import OperatorFactory
from tests.e2e.helpers import get_agent_cr, label_applied
from tests.support.goagent import GoAgent
from tests.support.operator_process import OperatorProcess, kubectl, metric_value
from tests.support.polling import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

RESTART_ANNOTATION = "opamp.dev/restart-requested-at"


def status_of(kubeconfig: Path, namespace: str, agent_id: str) -> dict[str, Any]:
    cr = get_agent_cr(kubeconfig, namespace, resource_name(agent_id)) or {}
    return dict(cr.get("status") or {})


async def online(kubeconfig: Path, namespace: str, *agent_ids: str) -> None:
    def is_online(agent_id: str) -> bool:
        return status_of(kubeconfig, namespace, agent_id).get("phase") == "Online"

    for agent_id in agent_ids:
        await eventually(f"{agent_id} Online", functools.partial(is_online, agent_id), within=30)


async def replies(agent: GoAgent, count: int, what: str) -> None:
    """Wait until `agent` got `count` more server replies: the server handled as many more
    of its messages (each a chance to act on it)."""
    start = len(agent.events_named("message"))
    await eventually(what, lambda: len(agent.events_named("message")) >= start + count, within=20)


def events_about(kubeconfig: Path, namespace: str, agent_id: str) -> list[dict[str, Any]]:
    selector = f"involvedObject.name={resource_name(agent_id)}"
    out = kubectl(
        kubeconfig, "-n", namespace, "get", "events", "--field-selector", selector, "-o", "json"
    )
    return list(json.loads(out)["items"])


async def event_with_reason(
    kubeconfig: Path, namespace: str, agent_id: str, reason: str
) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        found = [e for e in events_about(kubeconfig, namespace, agent_id) if e["reason"] == reason]
        return found[0] if found else None

    return await eventually(f"a {reason} Event about {agent_id}", probe, within=30)


async def post(operator: OperatorProcess, path: str) -> tuple[int, str, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.post(operator.api_url + path) as r:
        return r.status, r.content_type, json.loads(await r.text())


def annotate(kubeconfig: Path, namespace: str, agent_id: str, value: str) -> None:
    kubectl(
        kubeconfig, "-n", namespace, "annotate", "--overwrite", "opampagent",
        resource_name(agent_id), f"{RESTART_ANNOTATION}={value}",
    )  # fmt: skip


async def restart_recorded(
    kubeconfig: Path, namespace: str, agent_id: str, value: str
) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        restart = status_of(kubeconfig, namespace, agent_id).get("restart") or {}
        return restart if restart.get("requestedAt") == value else None

    return await eventually(f"{agent_id} to record restart {value}", probe, within=30)


async def test_rest_restart_reaches_opamp_go_and_shows_in_history_and_transitions(
    operator_factory: OperatorFactory, kubeconfig: Path, namespace: str
) -> None:
    operator = operator_factory()
    await operator.start()
    ws_id, plain_id = str(uuid.uuid4()), str(uuid.uuid4())
    async with GoAgent() as ws, GoAgent() as plain:
        await ws.start(
            url=operator.ws_url, instance_uid=ws_id, heartbeat=1, extra_args=["--accept-restart"]
        )
        await plain.start(url=operator.ws_url, instance_uid=plain_id, heartbeat=1)
        await online(kubeconfig, namespace, ws_id, plain_id)

        # REST, WebSocket agent: sent at once; opamp-go hands it to OnCommand, the agent
        # restarts (AgentDisconnect, Close, a new connection with the same uid).
        status, _, body = await post(operator, f"/api/v1/agents/{ws_id}/restart")
        assert status == 202, body
        assert body == {
            "id": ws_id, "status": "restart requested", "result": "sent", "transport": "websocket"
        }  # fmt: skip
        command = await ws.wait_for_event("command", 15)
        assert command.get("type") == "CommandType_Restart"
        await ws.wait_for_event("restarted", 15)
        await ws.wait_for_event("connected", 15, start=command.index)

        async def history_shows_restart() -> list[dict[str, Any]] | None:
            page = await operator.get_json(f"/api/v1/agents/{ws_id}/connection-history")
            ended = [s["disconnectReason"] for s in page["items"]]
            return page["items"] if "restart_requested" in ended else None

        sessions = await eventually("the restart in the history", history_shows_restart, within=30)
        assert sessions[0]["disconnectedAt"] is None  # the session after the restart is live
        transitions = (await operator.get_json(f"/api/v1/agents/{ws_id}/transitions"))["items"]
        assert [(t["to"], t["reason"]) for t in transitions[:2]] == [
            ("Online", "connected"), ("Offline", "restart_requested"),
        ]  # fmt: skip
        await online(kubeconfig, namespace, ws_id)

        # REST, an agent without AcceptsRestartCommand: 409 with a problem document.
        status, content_type, problem = await post(operator, f"/api/v1/agents/{plain_id}/restart")
        assert (status, content_type) == (409, "application/problem+json")
        assert problem["type"].endswith("/restart-not-supported")
        assert "AcceptsRestartCommand" in problem["detail"]
        status, _, problem = await post(operator, f"/api/v1/agents/{uuid.uuid4()}/restart")
        assert status == 404

        text = await operator.metrics_text()
        restarts = {"source": "api", "result": "sent"}
        assert metric_value(text, "opamp_restart_requests_total", restarts) == 1
        for result in ("not_supported", "unknown_agent"):
            labels = {"source": "api", "result": result}
            assert metric_value(text, "opamp_restart_requests_total", labels) == 1, labels
    assert await operator.terminate() == 0
    assert "Traceback" not in operator.log_text()


async def test_restart_annotation_acts_once_per_value_and_refusals_are_visible(
    operator_factory: OperatorFactory, kubeconfig: Path, namespace: str
) -> None:
    operator = operator_factory()
    await operator.start()
    http_id, plain_id = str(uuid.uuid4()), str(uuid.uuid4())
    async with GoAgent() as http, GoAgent() as plain:
        await http.start(
            url=operator.http_url, instance_uid=http_id, heartbeat=1,
            extra_args=["--accept-restart"],
        )  # fmt: skip
        await plain.start(url=operator.ws_url, instance_uid=plain_id, heartbeat=1)
        await online(kubeconfig, namespace, http_id, plain_id)

        # Annotation, HTTP agent: queued, delivered in the reply to its next poll.
        annotate(kubeconfig, namespace, http_id, "2026-12-02T10:00:00Z")
        record = await restart_recorded(kubeconfig, namespace, http_id, "2026-12-02T10:00:00Z")
        assert record["result"] in ("queued", "sent") and record["replica"] == "e2e"
        await http.wait_for_event("command", 15)
        await http.wait_for_event("restarted", 15)
        await event_with_reason(kubeconfig, namespace, http_id, "RestartRequested")

        # Annotation, an agent that cannot restart: refused, in the status and a Warning.
        annotate(kubeconfig, namespace, plain_id, "first")
        record = await restart_recorded(kubeconfig, namespace, plain_id, "first")
        assert record["result"] == "not_supported"
        refused = await event_with_reason(kubeconfig, namespace, plain_id, "RestartRefused")
        assert refused["type"] == "Warning" and "AcceptsRestartCommand" in refused["message"]
        assert plain.events_named("command") == []

        # Once per value: another change to the CR does not restart the HTTP agent again
        # (once the controller applied the label, it had asked again or never will).
        await label_applied(operator, kubeconfig, namespace, resource_name(http_id), "a=b")
        text = await operator.metrics_text()
        by_annotation = {"source": "annotation"}
        assert metric_value(text, "opamp_restart_requests_total", by_annotation) == 2  # 1 each
        await replies(http, 2, "two more polls of the HTTP agent")  # a queued one goes out
        assert len(http.events_named("command")) == 1

        labels = {"source": "annotation", "result": "not_supported"}
        assert metric_value(text, "opamp_restart_requests_total", labels) == 1
        sessions = await operator.get_json(f"/api/v1/agents/{http_id}/connection-history")
        assert "restart_requested" in [s["disconnectReason"] for s in sessions["items"]]
    assert await operator.terminate() == 0
    assert "Traceback" not in operator.log_text()


async def test_websocket_clone_gets_its_own_uid_and_cr_but_a_reconnect_does_not(
    operator_factory: OperatorFactory, kubeconfig: Path, namespace: str
) -> None:
    operator = operator_factory()
    await operator.start()
    shared = str(uuid.uuid4())
    async with GoAgent() as original, GoAgent() as clone, GoAgent() as again:
        await original.start(
            url=operator.ws_url, instance_uid=shared, host_name="vm-a", heartbeat=1
        )
        await online(kubeconfig, namespace, shared)
        # A cloned VM: same uid, another host, while the first is connected.
        await clone.start(url=operator.ws_url, instance_uid=shared, host_name="vm-b", heartbeat=1)
        told = await clone.wait_for_event("message", 15, where=lambda e: e.get("new_instance_uid"))
        assigned = str(uuid.UUID(hex=told.get("new_instance_uid")))
        assert assigned != shared and uuid.UUID(assigned).version == 7
        await online(kubeconfig, namespace, shared, assigned)
        assert status_of(kubeconfig, namespace, shared)["agent"]["hostName"] == "vm-a"
        assert status_of(kubeconfig, namespace, assigned)["agent"]["hostName"] == "vm-b"
        warning = await event_with_reason(kubeconfig, namespace, shared, "DuplicateInstanceUid")
        assert warning["type"] == "Warning" and assigned in warning["message"]
        assert "host.name=vm-b" in warning["message"]
        # Both stay connected, each under its own uid (no supersede ping-pong), while the
        # server handles their heartbeats.
        await asyncio.gather(replies(original, 3, "3 replies to the original"),
                             replies(clone, 3, "3 replies to the clone"))  # fmt: skip
        assert len(original.events_named("connected")) == 1
        assert len(clone.events_named("connected")) == 1
        text = await operator.metrics_text()
        assert metric_value(text, "opamp_duplicate_instance_uids_total") == 1

        # The same agent reconnecting while its old socket still looks open (the process is
        # frozen: nothing is closed) is the same agent, not a duplicate.
        original.freeze()
        await again.start(
            url=operator.ws_url, instance_uid=shared, host_name="vm-a", heartbeat=1,
            service_version="2.0.0",
        )  # fmt: skip
        await again.wait_for_event("connected", 15)
        await replies(again, 2, "2 replies to the reconnected agent")  # one would say so
        assert [e for e in again.events_named("message") if e.get("new_instance_uid")] == []
        text = await operator.metrics_text()
        assert metric_value(text, "opamp_duplicate_instance_uids_total") == 1
        await eventually(
            "the reconnected agent's version in the CR",
            lambda: status_of(kubeconfig, namespace, shared).get("agent", {}).get("serviceVersion")
            == "2.0.0",
            within=30,
        )  # fmt: skip
        original.thaw()
    assert await operator.terminate() == 0
    assert "Traceback" not in operator.log_text()


async def test_interleaved_http_clones_are_told_apart(
    operator_factory: OperatorFactory, kubeconfig: Path, namespace: str
) -> None:
    operator = operator_factory()
    await operator.start()
    shared = str(uuid.uuid4())
    async with GoAgent() as first, GoAgent() as second:
        await first.start(url=operator.http_url, instance_uid=shared, host_name="h-1", heartbeat=1)
        await online(kubeconfig, namespace, shared)
        await second.start(url=operator.http_url, instance_uid=shared, host_name="h-2", heartbeat=1)
        told = await second.wait_for_event("message", 15, where=lambda e: e.get("new_instance_uid"))
        assigned = str(uuid.UUID(hex=told.get("new_instance_uid")))
        await online(kubeconfig, namespace, shared, assigned)
        await asyncio.gather(
            replies(first, 3, "3 polls of the first"), replies(second, 3, "3 polls of the second")
        )  # they stay apart
        assert status_of(kubeconfig, namespace, shared)["agent"]["hostName"] == "h-1"
        assert status_of(kubeconfig, namespace, assigned)["agent"]["hostName"] == "h-2"
        assert [e for e in first.events_named("message") if e.get("new_instance_uid")] == []
        await event_with_reason(kubeconfig, namespace, shared, "DuplicateInstanceUid")
    assert await operator.terminate() == 0


async def test_custom_capabilities_in_cr_and_rest(
    operator_factory: OperatorFactory, kubeconfig: Path, namespace: str
) -> None:
    operator = operator_factory()
    await operator.start()
    agent_id = str(uuid.uuid4())
    names = ["io.opentelemetry.pause", "com.example.discovery"]
    async with GoAgent() as agent:
        args = [item for name in names for item in ("--custom-capability", name)]
        await agent.start(url=operator.ws_url, instance_uid=agent_id, heartbeat=1, extra_args=args)
        await eventually(
            "customCapabilities in the CR",
            lambda: status_of(kubeconfig, namespace, agent_id).get("customCapabilities"),
            within=30,
        )  # fmt: skip
        assert status_of(kubeconfig, namespace, agent_id)["customCapabilities"] == sorted(names)
        status = await operator.get_json(f"/api/v1/agents/{agent_id}/status")
        assert status["customCapabilities"] == sorted(names)
    assert await operator.terminate() == 0


async def test_instance_uid_header_is_checked_on_both_transports(
    operator_factory: OperatorFactory, kubeconfig: Path, namespace: str
) -> None:
    """Scripted clients from the spec: opamp-go always sends the header right."""
    operator = operator_factory()
    await operator.start()
    uid, other = uuid.uuid4(), uuid.uuid4()
    message = opamp_pb2.AgentToServer(instance_uid=uid.bytes, sequence_num=0, capabilities=1)
    body = message.SerializeToString()
    protobuf = {"Content-Type": "application/x-protobuf"}
    async with aiohttp.ClientSession() as session:
        async with session.post(
            operator.http_url, data=body, headers={**protobuf, "OpAMP-Instance-UID": str(uid)}
        ) as response:
            assert response.status == 200
        async with session.post(
            operator.http_url, data=body, headers={**protobuf, "OpAMP-Instance-UID": str(other)}
        ) as response:
            assert response.status == 400
            reply = opamp_pb2.ServerToAgent.FromString(await response.read())
            assert reply.error_response.type == opamp_pb2.ServerErrorResponseType_BadRequest
            assert str(other) in reply.error_response.error_message
        async with session.post(
            operator.http_url, data=body, headers={**protobuf, "OpAMP-Instance-UID": "nope"}
        ) as response:
            assert response.status == 400
    # WebSocket: a malformed header is refused before the upgrade; a message with another
    # uid than the header named closes the connection with 1008.
    with pytest.raises(InvalidStatus) as refused:
        async with connect(
            operator.ws_url, additional_headers={"OpAMP-Instance-UID": "not-a-uuid"}
        ):
            pass
    assert refused.value.response.status_code == 400
    async with connect(
        operator.ws_url, additional_headers={"OpAMP-Instance-UID": str(other)}
    ) as ws:
        await ws.send(encode_ws_frame(body))
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    text = await operator.metrics_text()
    mismatch = {"reason": "instance_uid_header_mismatch"}
    assert metric_value(text, "opamp_bad_input_total", {"transport": "http", **mismatch}) == 1
    assert metric_value(text, "opamp_bad_input_total", {"transport": "websocket", **mismatch}) == 1
    bad = {"reason": "bad_instance_uid_header"}
    assert metric_value(text, "opamp_bad_input_total", bad) == 2
    # The agent that sent a matching header is there; no CR for the refused uid.
    await online(kubeconfig, namespace, str(uid))
    assert get_agent_cr(kubeconfig, namespace, resource_name(str(other))) is None
    assert await operator.terminate() == 0
    log = operator.log_text()
    assert "Traceback" not in log
    assert f"{other} differs from the message's instance_uid {uid}" in log
