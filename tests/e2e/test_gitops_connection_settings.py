"""Connection settings offers (issue 17): own telemetry destination and headers from Secrets.

The agents are scripted from the OpAMP specification (WebSocket: the header varint 0 and an
AgentToServer per binary frame), not opamp-go: opamp-go 0.23 hands own-telemetry offers to
its OnMessage callback but has no public way to report a ConnectionSettingsStatus of
APPLIED or FAILED for them (only for the `opamp` part, through OnOpampConnectionSettings),
and the test needs the agent to say both. The scripted agent sends what the specification
says: ReportsOwnMetrics and ReportsConnectionSettingsStatus in its capabilities, then a
ConnectionSettingsStatus with the hash of the offers it received.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from websockets.asyncio.client import ClientConnection, connect

from opamp_operator.kube.shapes.naming import resource_name
from opamp_operator.opamp.frames import decode_ws_frame, encode_ws_frame
from opamp_operator.opamp.generated import opamp_pb2
from opamp_operator.opamp.messages import AgentToServer
from tests.e2e.conftest import OperatorFactory
from tests.e2e.helpers import condition
from tests.support.fake_agents import hello
from tests.support.gitops import get_object, install_crd, kubectl_apply, yaml_file
from tests.support.manifests import (
    apply_base,
    cluster_scoped,
    kubectl,
    one,
    token_for,
    token_kubeconfig,
)
from tests.support.operator_process import OperatorProcess, metric_value
from tests.support.polling import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

SERVICE = "opamp.dev/service-name"
ENDPOINT = "https://otlp.example.test:4318/v1/metrics"
SECRET = "own-telemetry-token"
FIRST_TOKEN = "Bearer first-s3cret-value"
SECOND_TOKEN = "Bearer second-s3cret-value"
OWN_METRICS = int(opamp_pb2.AgentCapabilities_ReportsOwnMetrics) | int(
    opamp_pb2.AgentCapabilities_ReportsConnectionSettingsStatus
)
APPLIED = opamp_pb2.ConnectionSettingsStatuses_APPLIED
FAILED = opamp_pb2.ConnectionSettingsStatuses_FAILED


class ScriptedAgent:
    """One WebSocket agent: heartbeats every second, keeps every ServerToAgent received."""

    def __init__(self, socket: ClientConnection, agent_id: str) -> None:
        self.socket = socket
        self.agent_id = agent_id
        self.sequence = 0
        self.received: list[opamp_pb2.ServerToAgent] = []

    async def send(self, message: AgentToServer) -> None:
        message.instance_uid = uuid.UUID(self.agent_id).bytes
        message.sequence_num = self.sequence
        self.sequence += 1
        await self.socket.send(encode_ws_frame(message.SerializeToString()))

    async def run(self) -> None:
        async def beat() -> None:
            while True:
                await asyncio.sleep(1)
                await self.send(AgentToServer())

        beating = asyncio.create_task(beat())
        try:
            async for frame in self.socket:
                assert isinstance(frame, bytes)
                self.received.append(opamp_pb2.ServerToAgent.FromString(decode_ws_frame(frame)))
        finally:
            beating.cancel()

    def offers(self) -> list[opamp_pb2.ConnectionSettingsOffers]:
        return [m.connection_settings for m in self.received if m.HasField("connection_settings")]

    async def offer(
        self, where: Callable[[opamp_pb2.ConnectionSettingsOffers], bool]
    ) -> opamp_pb2.ConnectionSettingsOffers:
        def probe() -> opamp_pb2.ConnectionSettingsOffers | None:
            return next((o for o in self.offers() if where(o)), None)

        return await eventually("connection settings offers", probe, within=30)

    async def report(self, offer_hash: bytes, status: int, error: str = "") -> None:
        message = AgentToServer()
        message.connection_settings_status.last_connection_settings_hash = offer_hash
        message.connection_settings_status.status = status  # type: ignore[assignment]
        message.connection_settings_status.error_message = error
        await self.send(message)


@asynccontextmanager
async def scripted_agent(
    operator: OperatorProcess, service: str, capabilities: int = 0
) -> AsyncIterator[ScriptedAgent]:
    agent_id = str(uuid.uuid4())
    async with connect(operator.ws_url, open_timeout=10) as socket:
        agent = ScriptedAgent(socket, agent_id)
        first = hello(agent_id, service=service)
        first.capabilities |= capabilities
        await agent.send(first)
        task = asyncio.create_task(agent.run())
        try:
            yield agent
        finally:
            task.cancel()


def put_secret(kube_api: k8s.ApiClient, namespace: str, token: str) -> None:
    core = k8s.CoreV1Api(kube_api)
    body = k8s.V1Secret(
        metadata=k8s.V1ObjectMeta(name=SECRET),
        data={"token": base64.b64encode(token.encode()).decode()},
    )
    try:
        core.create_namespaced_secret(namespace, body)
    except k8s.ApiException as error:
        if error.status != 409:
            raise
        core.replace_namespaced_secret(SECRET, namespace, body)


def settings_config(service: str) -> dict[str, Any]:
    header = {"name": "Authorization", "secretKeyRef": {"name": SECRET, "key": "token"}}
    return {
        "apiVersion": "opamp.dev/v1alpha1",
        "kind": "OpAMPAgentConfig",
        "metadata": {"name": "own-telemetry"},
        "spec": {
            "selector": {"matchLabels": {SERVICE: service}},
            "remoteConfig": yaml_file("receivers: {}\n"),
            "connectionSettings": {"ownMetrics": {"endpoint": ENDPOINT, "headers": [header]}},
        },
    }


def headers(offer: opamp_pb2.ConnectionSettingsOffers) -> dict[str, str]:
    return {h.key: h.value for h in offer.own_metrics.headers.headers}


async def wait_applied(
    kubeconfig: Path, namespace: str, agent_id: str, status: str
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        cr = get_object(kubeconfig, namespace, "opampagents", resource_name(agent_id)) or {}
        found = condition(cr, "ConnectionSettingsApplied")
        return cr if found.get("status") == status else None

    cr: dict[str, Any] = await eventually(
        f"ConnectionSettingsApplied {status}", probe, within=30, every=0.5
    )
    return cr


@pytest.fixture
def config_crd(kube_api: k8s.ApiClient, opampagent_crd: str) -> str:
    return install_crd(kube_api)


async def test_own_metrics_offers_carry_the_secret_and_follow_it_and_the_agents_status(
    operator_factory: OperatorFactory,
    kube_api: k8s.ApiClient,
    kubeconfig: Path,
    namespace: str,
    config_crd: str,
) -> None:
    service = f"svc-{uuid.uuid4().hex[:6]}"
    put_secret(kube_api, namespace, FIRST_TOKEN)
    kubectl_apply(kubeconfig, namespace, settings_config(service))
    operator = operator_factory()
    await operator.start()
    async with (
        scripted_agent(operator, service, OWN_METRICS) as capable,
        scripted_agent(operator, service) as plain,
    ):
        first = await capable.offer(lambda o: o.HasField("own_metrics"))
        assert first.own_metrics.destination_endpoint == ENDPOINT
        assert headers(first) == {"Authorization": FIRST_TOKEN}
        assert first.hash

        await capable.report(first.hash, APPLIED)
        cr = await wait_applied(kubeconfig, namespace, capable.agent_id, "True")
        assert cr["status"]["connectionSettings"]["hash"] == first.hash.hex()
        assert cr["status"]["connectionSettings"]["source"] == "OpAMPAgentConfig/own-telemetry"
        assert "s3cret" not in json.dumps(cr)

        # Without ReportsOwnMetrics: no own_metrics offer, and the condition says why.
        cr = await wait_applied(kubeconfig, namespace, plain.agent_id, "False")
        assert condition(cr, "ConnectionSettingsApplied")["reason"] == "NotSupported"
        assert not any(o.HasField("own_metrics") for o in plain.offers())

        # A rotated token is offered again, with a new hash.
        put_secret(kube_api, namespace, SECOND_TOKEN)
        second = await capable.offer(lambda o: headers(o).get("Authorization") == SECOND_TOKEN)
        assert second.hash != first.hash
        await capable.report(second.hash, FAILED, "exporter refused the endpoint")
        cr = await wait_applied(kubeconfig, namespace, capable.agent_id, "False")
        failed = condition(cr, "ConnectionSettingsApplied")
        assert failed["message"] == "exporter refused the endpoint"
        assert cr["status"]["connectionSettings"]["reported"]["status"] == "FAILED"

        # A new endpoint in the spec: a new offer and hash.
        changed = settings_config(service)
        changed["spec"]["connectionSettings"]["ownMetrics"]["endpoint"] = ENDPOINT + "/v2"
        kubectl_apply(kubeconfig, namespace, changed)
        third = await capable.offer(lambda o: o.own_metrics.destination_endpoint.endswith("/v2"))
        assert third.hash not in {first.hash, second.hash}
        # One refresh gives every agent its offers at once: an own_metrics offer to the
        # plain agent would have been queued on its socket before the replies to its next
        # heartbeats (two: the first may have been on its way already).
        received = len(plain.received)
        await eventually("two more replies to the plain agent",
                         lambda: len(plain.received) >= received + 2, within=10)  # fmt: skip
        assert not any(o.HasField("own_metrics") for o in plain.offers())
    assert await operator.terminate() == 0
    log = operator.log_text()
    assert "s3cret" not in log
    assert "Traceback" not in log


async def test_a_missing_secret_refuses_the_offer_visibly_until_it_exists(
    operator_factory: OperatorFactory,
    kube_api: k8s.ApiClient,
    kubeconfig: Path,
    namespace: str,
    config_crd: str,
) -> None:
    service = f"svc-{uuid.uuid4().hex[:6]}"
    kubectl_apply(kubeconfig, namespace, settings_config(service))
    operator = operator_factory()
    await operator.start()
    async with scripted_agent(operator, service, OWN_METRICS) as capable:
        cr = await wait_applied(kubeconfig, namespace, capable.agent_id, "False")
        refused = condition(cr, "ConnectionSettingsApplied")
        assert refused["reason"] == "InvalidSpec"
        assert f"Secret {SECRET} not found" in refused["message"]
        assert not any(o.HasField("own_metrics") for o in capable.offers())
        refusals = "opamp_connection_settings_refusals_total"
        text = await operator.metrics_text()
        assert metric_value(text, refusals, {"reason": "secret_not_found"}) >= 1

        put_secret(kube_api, namespace, FIRST_TOKEN)  # read at the next refresh
        offer = await capable.offer(lambda o: o.HasField("own_metrics"))
        assert headers(offer) == {"Authorization": FIRST_TOKEN}
        await wait_applied(kubeconfig, namespace, capable.agent_id, "Unknown")
    assert await operator.terminate() == 0
    assert "s3cret" not in operator.log_text()


async def test_the_manifests_rbac_is_enough_to_read_the_secret(
    operator_factory: OperatorFactory,
    kube_api: k8s.ApiClient,
    kubeconfig: Path,
    namespace: str,
    tmp_path: Path,
) -> None:
    objects = apply_base(kubeconfig, namespace)
    try:
        account = one(objects, "ServiceAccount")["metadata"]["name"]
        token = token_for(kube_api, namespace, account)
        service = f"svc-{uuid.uuid4().hex[:6]}"
        put_secret(kube_api, namespace, FIRST_TOKEN)
        kubectl_apply(kubeconfig, namespace, settings_config(service))
        operator = operator_factory()
        operator.config.kubeconfig = token_kubeconfig(kube_api, token, tmp_path / "op.kubeconfig")
        await operator.start()
        async with scripted_agent(operator, service, OWN_METRICS) as capable:
            offer = await capable.offer(lambda o: o.HasField("own_metrics"))
            assert headers(offer) == {"Authorization": FIRST_TOKEN}
        assert await operator.terminate() == 0
        log = operator.log_text()
        assert " 403" not in log and "Forbidden" not in log, "the operator was refused something"
    finally:
        for obj in objects:
            if cluster_scoped(obj):
                kubectl(kubeconfig, "delete", obj["kind"], obj["metadata"]["name"], check=False)
