"""The status writer when the API server says no, or is not there, and when it stops."""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime

import pytest
from kubernetes import client as k8s

from opamp_operator.config import FleetSettings, KubeSettings
from opamp_operator.fleet.clock import FakeClock
from opamp_operator.fleet.events import EventBus
from opamp_operator.fleet.registry import Fleet
from opamp_operator.kube.api import Credentials
from opamp_operator.kube.api.resources import KubeApi
from opamp_operator.kube.mirror.statuswriter import StatusWriter
from tests.support.kube_mirror import FakeAgent, events_for, eventually

pytestmark = pytest.mark.integration

FLEET = FleetSettings(heartbeat_interval_seconds=10, heartbeat_timeout_seconds=30)


def settings(namespace: str, **overrides: object) -> KubeSettings:
    values: dict[str, object] = {
        "namespace": namespace, "writes_per_second": 500, "sweep_interval_seconds": 0.1,
        "retry_max_seconds": 0.5, "stop_timeout_seconds": 10, "request_timeout_seconds": 5,
    }  # fmt: skip
    values.update(overrides)
    return KubeSettings(**values)  # type: ignore[arg-type]


def service_account_config(api: k8s.ApiClient, namespace: str, name: str) -> k8s.Configuration:
    """Credentials of a fresh ServiceAccount: authenticated, allowed nothing yet."""
    core = k8s.CoreV1Api(api)
    core.create_namespaced_service_account(
        namespace, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name=name))
    )
    token = core.create_namespaced_service_account_token(
        name, namespace, k8s.AuthenticationV1TokenRequest(spec=k8s.V1TokenRequestSpec(audiences=[]))
    ).status.token
    configuration = k8s.Configuration()
    configuration.host = api.configuration.host
    configuration.ssl_ca_cert = api.configuration.ssl_ca_cert
    configuration.api_key = {"authorization": f"Bearer {token}"}
    return configuration


def grant_mirror_rights(api: k8s.ApiClient, namespace: str, account: str) -> None:
    """The namespaced rules the writer needs (the same as manifests/rbac.yaml grants)."""
    rbac = k8s.RbacAuthorizationV1Api(api)
    rules = [
        k8s.V1PolicyRule(
            api_groups=["opamp.dev"], resources=["opampagents"], verbs=["get", "create", "patch"]
        ),
        k8s.V1PolicyRule(
            api_groups=["opamp.dev"], resources=["opampagents/status"], verbs=["patch"]
        ),
        k8s.V1PolicyRule(api_groups=[""], resources=["events"], verbs=["create"]),
    ]
    rbac.create_namespaced_role(
        namespace, k8s.V1Role(metadata=k8s.V1ObjectMeta(name="mirror"), rules=rules)
    )
    rbac.create_namespaced_role_binding(
        namespace,
        k8s.V1RoleBinding(
            metadata=k8s.V1ObjectMeta(name="mirror"),
            role_ref=k8s.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="Role", name="mirror"
            ),
            subjects=[k8s.RbacV1Subject(kind="ServiceAccount", name=account, namespace=namespace)],
        ),
    )


def mirror_of(api: KubeApi, namespace: str, **overrides: object) -> tuple[Fleet, StatusWriter]:
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    bus = EventBus()
    fleet = Fleet(FLEET, clock, bus)
    writer = StatusWriter(
        settings(namespace, **overrides), fleet, bus.subscribe("kube", 1000), api, clock
    )
    return fleet, writer


async def test_forbidden_writes_are_retried_with_backoff_until_allowed(
    kube_api: k8s.ApiClient, mirror_api: KubeApi, namespace: str
) -> None:
    configuration = service_account_config(kube_api, namespace, "mirror")
    api = KubeApi.from_credentials(Credentials.from_configuration(configuration), namespace)
    fleet, writer = mirror_of(api, namespace)
    await writer.start()
    try:
        agent = FakeAgent()
        fleet.handle_message(agent.channel, agent.first_message())

        async def refused_twice() -> bool | None:
            return True if writer.requests[("create", "error")] >= 2 else None

        await eventually(refused_twice, within=10, what="403s counted")
        assert not writer.ready
        assert await mirror_api.get_agent(agent.cr_name) is None
        assert writer.pending.busy  # still wanted, waiting for its next try

        grant_mirror_rights(kube_api, namespace, "mirror")
        assert await writer.flush(within_seconds=20)
        cr = await mirror_api.get_agent(agent.cr_name)
        assert cr is not None
        assert cr["status"]["phase"] == "Online"
        assert [e.reason for e in events_for(kube_api, namespace, agent.cr_name)] == ["connected"]
        assert writer.requests[("create", "ok")] == 1
        assert writer.ready
    finally:
        await writer.stop()
        await api.close()


async def test_stop_flushes_pending_transitions(mirror_api: KubeApi, namespace: str) -> None:
    fleet, writer = mirror_of(mirror_api, namespace, writes_per_second=100)
    await writer.start()
    agents = [FakeAgent(service_name=f"svc-{i}") for i in range(20)]
    for agent in agents:
        fleet.handle_message(agent.channel, agent.first_message())
    for channel in fleet.shutdown():
        assert channel in [agent.channel for agent in agents]
    await writer.stop()  # nothing has been written yet: 20 agents at 100 writes/s

    phases = {
        item["metadata"]["name"]: item.get("status", {}).get("phase")
        for item in await mirror_api.list_agents()
    }
    assert phases == {agent.cr_name: "Offline" for agent in agents}
    found = await mirror_api.get_agent(agents[0].cr_name)
    assert found is not None
    assert found["status"]["disconnectReason"] == "operator_shutdown"


async def test_stop_is_bounded_when_the_api_server_is_unreachable(namespace: str) -> None:
    with socket.socket() as placeholder:  # a port nobody listens on
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
    configuration = k8s.Configuration()
    configuration.host = f"https://127.0.0.1:{port}"
    configuration.retries = 0
    api = KubeApi.from_credentials(Credentials.from_configuration(configuration), namespace)
    fleet, writer = mirror_of(api, namespace, stop_timeout_seconds=1)
    await writer.start()
    try:
        agent = FakeAgent()
        fleet.handle_message(agent.channel, agent.first_message())

        async def failing() -> bool | None:
            return True if writer.requests[("create", "unreachable")] >= 1 else None

        await eventually(failing, within=10, what="a failed create")
        loop = asyncio.get_running_loop()
        started = loop.time()
        await writer.stop()
        assert loop.time() - started < 3
        assert len(writer.pending) == 1  # given up on at stop, not lost silently: logged
    finally:
        await api.close()
