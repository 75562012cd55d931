"""Remote config status with an agent that reports a merged effective config (issue 16 item 3).

The client here is a faithful script of the OpenTelemetry Collector's OpAMP Supervisor, as far
as remote config goes (its effective config, its RemoteConfigStatus, its restarts); it is not
the Supervisor itself (that needs a Collector binary). What it does, as the Supervisor does:
- it reports, as its effective config, the whole merged collector config: its own opamp
  extension settings with a random local port, its own telemetry, plus the pushed files;
  so the hash of that config never equals the pushed config's hash;
- it reports APPLYING, then APPLIED with `last_remote_config_hash` set to the pushed hash;
- on a restart (goodbye, new connection, sequence 0) it reports the persisted status,
  APPLIED with the same hash, and a new effective config (another random port).
The operator must show it Applied all along, and the OpAMPAgentConfig not Stalled.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from websockets.asyncio.client import ClientConnection, connect

from opamp_operator.kube.shapes.naming import resource_name
from opamp_operator.opamp.frames import decode_ws_frame, encode_ws_frame
from opamp_operator.opamp.generated import opamp_pb2
from opamp_operator.opamp.messages import AgentToServer, ServerToAgent, parse_server_to_agent
from tests.e2e.conftest import OperatorFactory
from tests.e2e.helpers import condition, eventually
from tests.support.gitops import (
    config_hash,
    config_manifest,
    get_object,
    install_crd,
    kubectl_apply,
    yaml_file,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

SERVICE = "supervised-collector"
CAPABILITIES = (
    opamp_pb2.AgentCapabilities_ReportsStatus
    | opamp_pb2.AgentCapabilities_AcceptsRemoteConfig
    | opamp_pb2.AgentCapabilities_ReportsEffectiveConfig
    | opamp_pb2.AgentCapabilities_ReportsRemoteConfig
    | opamp_pb2.AgentCapabilities_ReportsHealth
    | opamp_pb2.AgentCapabilities_AcceptsRestartCommand
)


class ScriptedSupervisor:
    """One run of the Supervisor: a WebSocket session with its own sequence numbers."""

    def __init__(self, ws: ClientConnection, uid: uuid.UUID) -> None:
        self.ws = ws
        self.uid = uid
        self.sequence = 0
        self.port = random.randint(20000, 60000)  # the Supervisor picks one at every start

    def merged_config(self, pushed: opamp_pb2.AgentConfigMap | None) -> bytes:
        """The collector config the Supervisor composes and reports as its effective config."""
        own = (
            "extensions:\n  opamp:\n    server:\n      ws:\n"
            f"        endpoint: ws://localhost:{self.port}/v1/opamp\n"
            "    instance_uid: " + str(self.uid) + "\n"
            "service:\n  extensions: [opamp]\n  telemetry:\n    logs: {level: info}\n"
        )
        files = [] if pushed is None else sorted(pushed.config_map.items())
        return (own + "".join(f"# {name}\n" + f.body.decode() for name, f in files)).encode()

    async def send(
        self,
        *,
        status: opamp_pb2.RemoteConfigStatus | None = None,
        pushed: opamp_pb2.AgentConfigMap | None = None,
        goodbye: bool = False,
    ) -> None:
        message = AgentToServer(
            instance_uid=self.uid.bytes, sequence_num=self.sequence, capabilities=CAPABILITIES
        )
        self.sequence += 1
        if goodbye:
            message.agent_disconnect.SetInParent()
        else:
            for key, value in (("service.name", SERVICE), ("service.version", "0.120.0")):
                attribute = message.agent_description.identifying_attributes.add(key=key)
                attribute.value.string_value = value
            message.health.healthy = True
            effective = message.effective_config.config_map.config_map[""]
            effective.body, effective.content_type = self.merged_config(pushed), "text/yaml"
            if status is not None:
                message.remote_config_status.CopyFrom(status)
        await self.ws.send(encode_ws_frame(message.SerializeToString()))

    async def receive_remote_config(self, within: float = 30) -> opamp_pb2.AgentRemoteConfig:
        async with asyncio.timeout(within):
            while True:
                reply: ServerToAgent = parse_server_to_agent(
                    decode_ws_frame(await self.ws.recv(decode=False))
                )
                if reply.HasField("remote_config"):
                    return reply.remote_config


def remote_status(hash_: bytes, status: int) -> opamp_pb2.RemoteConfigStatus:
    return opamp_pb2.RemoteConfigStatus(last_remote_config_hash=hash_, status=status)  # type: ignore[arg-type]


@asynccontextmanager
async def supervisor_run(url: str, uid: uuid.UUID) -> AsyncIterator[ScriptedSupervisor]:
    async with connect(url) as ws:
        yield ScriptedSupervisor(ws, uid)


def applied_state(kubeconfig: Path, namespace: str, uid: uuid.UUID) -> dict[str, Any]:
    cr = get_object(kubeconfig, namespace, "opampagents", resource_name(str(uid))) or {}
    status = cr.get("status", {})
    return {
        "phase": status.get("phase"),
        "applied": (condition(cr, "RemoteConfigApplied").get("status"),
                    condition(cr, "RemoteConfigApplied").get("reason")),
        "stalled": condition(cr, "Stalled").get("status"),
        "effective": status.get("effectiveConfigHash"),
    }  # fmt: skip


def fleet_config_state(kubeconfig: Path, namespace: str, name: str) -> dict[str, Any]:
    cr = get_object(kubeconfig, namespace, "opampagentconfigs", name) or {}
    status = cr.get("status", {})
    return {
        "applied": status.get("appliedAgents"),
        "failed": status.get("failedAgents"),
        "stalled": condition(cr, "Stalled").get("status"),
        "ready": condition(cr, "Ready").get("status"),
        "problems": status.get("problems"),
    }


async def test_merged_effective_config_and_restarts_stay_applied(
    operator_factory: OperatorFactory, kubeconfig: Path, namespace: str, kube_api: k8s.ApiClient
) -> None:
    install_crd(kube_api)
    # No heartbeats in this script: a timeout longer than the test.
    operator = operator_factory(heartbeat_timeout=120.0, error_after_offline=240.0)
    await operator.start()
    files = yaml_file("exporters:\n  debug: {}\n")
    selector = {"matchLabels": {"opamp.dev/service-name": SERVICE}}
    kubectl_apply(kubeconfig, namespace, config_manifest("collectors", selector, files))
    uid = uuid.uuid4()
    applied = {"phase": "Online", "applied": ("True", "Applied"), "stalled": "False"}

    async def agent_shows(expected: dict[str, Any]) -> dict[str, Any]:
        async def probe() -> dict[str, Any] | None:
            state = applied_state(kubeconfig, namespace, uid)
            return state if all(state[k] == v for k, v in expected.items()) else None

        return await eventually(f"agent {uid}: {expected}", probe, 30)

    async def config_shows_applied() -> None:
        expected = {"applied": 1, "failed": 0, "stalled": "False", "ready": "True"}

        async def probe() -> dict[str, Any] | None:
            state = fleet_config_state(kubeconfig, namespace, "collectors")
            return state if all(state[k] == v for k, v in expected.items()) else None

        await eventually(f"OpAMPAgentConfig collectors: {expected}", probe, 30)

    async with supervisor_run(operator.ws_url, uid) as first:
        await first.send()
        pushed = await first.receive_remote_config()
        assert pushed.config_hash.hex() == config_hash(files)
        await first.send(
            status=remote_status(pushed.config_hash, opamp_pb2.RemoteConfigStatuses_APPLYING)
        )
        await first.send(
            status=remote_status(pushed.config_hash, opamp_pb2.RemoteConfigStatuses_APPLIED),
            pushed=pushed.config,
        )
        before = await agent_shows(applied)
        await config_shows_applied()
        assert before["effective"] != config_hash(files)[:16]  # merged: never the pushed hash
        await first.send(goodbye=True)

    async with supervisor_run(operator.ws_url, uid) as second:
        # The restarted Supervisor: sequence 0, the persisted status, a new merged config.
        await second.send(
            status=remote_status(pushed.config_hash, opamp_pb2.RemoteConfigStatuses_APPLIED),
            pushed=pushed.config,
        )
        await eventually(
            "the new merged effective config shown, still Applied",
            lambda: _changed(kubeconfig, namespace, uid, before["effective"]),
            30,
        )
        await agent_shows(applied)
        await config_shows_applied()
    assert await operator.terminate() == 0
    assert "Traceback" not in operator.log_text()


async def _changed(kubeconfig: Path, namespace: str, uid: uuid.UUID, old: str) -> bool:
    state = applied_state(kubeconfig, namespace, uid)
    return state["effective"] not in (None, old) and state["applied"] == ("True", "Applied")
