"""The status writer against the real kube-apiserver: what `kubectl` shows about agents.

A real `Fleet` on a fake clock is driven with real AgentToServer messages over a channel
double; the writer mirrors it into OpAMPAgent resources on the test bed's API server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from opamp_operator.config import FleetSettings, KubeSettings
from opamp_operator.fleet.clock import FakeClock
from opamp_operator.fleet.events import EventBus
from opamp_operator.fleet.registry import Fleet
from opamp_operator.kube.api.resources import KubeApi
from opamp_operator.kube.mirror.statuswriter import StatusWriter
from tests.support.kube_mirror import FakeAgent, condition, events_for, kubectl, table
from tests.support.polling import eventually, in_process_passes, rounds_pass

pytestmark = pytest.mark.integration

FLEET = FleetSettings(
    heartbeat_interval_seconds=10, heartbeat_timeout_seconds=30, error_after_offline_seconds=60
)


@dataclass
class Mirror:
    fleet: Fleet
    clock: FakeClock
    writer: StatusWriter
    api: KubeApi

    async def send(self, agent: FakeAgent, message: Any) -> None:
        assert self.fleet.handle_message(agent.channel, message) is not None
        assert await self.writer.flush(within_seconds=20), "writer did not catch up"

    async def cr(self, agent: FakeAgent) -> dict[str, Any]:
        found = await self.api.get_agent(agent.cr_name)
        assert found is not None, f"no OpAMPAgent {agent.cr_name}"
        return found

    async def tick(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.fleet.check_deadlines()
        assert await self.writer.flush(within_seconds=20), "writer did not catch up"


def kube_settings(namespace: str, **overrides: Any) -> KubeSettings:
    values: dict[str, Any] = {
        "namespace": namespace,
        "writes_per_second": 500,
        "sweep_interval_seconds": 0.1,
        "retry_max_seconds": 1,
        "replica_id": "test-replica",
        # The opt-in periodic lastSeenAt refresh (off by default), which some tests here
        # are about; the default (write on change only) is tested with no refresh at all.
        "last_seen_refresh_seconds": 60.0,
    }
    values.update(overrides)
    return KubeSettings(**values)


@pytest.fixture
async def mirror(mirror_api: KubeApi, namespace: str) -> AsyncIterator[Mirror]:
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    bus = EventBus()
    fleet = Fleet(FLEET, clock, bus)
    subscription = bus.subscribe("kube", 10_000)
    writer = StatusWriter(kube_settings(namespace), fleet, subscription, mirror_api, clock)
    await writer.start()
    try:
        yield Mirror(fleet, clock, writer, mirror_api)
    finally:
        await writer.stop()


async def test_connected_agent_appears_online_with_printer_columns(
    mirror: Mirror, kubeconfig: Path, namespace: str
) -> None:
    agent = FakeAgent(service_name="checkout", service_version="1.4.2", host_name="node-a")
    await mirror.send(agent, agent.first_message())

    cr = await mirror.cr(agent)
    status = cr["status"]
    assert status["phase"] == "Online"
    assert status["instanceUid"] == agent.agent_id
    assert status["agent"]["serviceName"] == "checkout"
    assert status["agent"]["nonIdentifyingAttributes"]["os.type"] == "linux"
    assert status["connection"] == {
        "transport": "websocket", "remoteAddr": "127.0.0.1:40001", "replica": "test-replica",
        "liveness": "heartbeat",  # the fake agent claims ReportsHeartbeat
    }  # fmt: skip
    assert "ReportsHealth" in status["capabilities"]
    assert condition(cr, "Connected")["status"] == "True"
    assert condition(cr, "Healthy")["status"] == "True"
    assert condition(cr, "Ready")["status"] == "True"
    assert cr["metadata"]["labels"]["opamp.dev/service-name"] == "checkout"

    (row,) = table(kubectl(kubeconfig, namespace, "get", "opampagents"))
    assert row["NAME"] == agent.cr_name
    assert (row["PHASE"], row["SERVICE"], row["VERSION"], row["HOST"]) == (
        "Online", "checkout", "1.4.2", "node-a",
    )  # fmt: skip
    assert row["SINCE"] and row["AGE"]  # the Connected condition's transition
    assert "TRANSPORT" not in row and "LAST SEEN" not in row

    (wide,) = table(kubectl(kubeconfig, namespace, "get", "oa", "-o", "wide"))
    assert (wide["TRANSPORT"], wide["HEALTHY"], wide["INSTANCE UID"]) == (
        "websocket", "true", agent.agent_id,
    )  # fmt: skip
    assert wide["LAST SEEN"]  # as of the CR's latest change: only in -o wide


async def test_label_selectors_find_agents_by_service(
    mirror: Mirror, kubeconfig: Path, namespace: str
) -> None:
    checkout = FakeAgent(service_name="checkout")
    odd = FakeAgent(service_name="payments api/v2", host_name="Node_B.example.com")
    for agent in (checkout, odd):
        await mirror.send(agent, agent.first_message())

    found = table(
        kubectl(
            kubeconfig, namespace, "get", "opampagents", "-l", "opamp.dev/service-name=checkout"
        )
    )
    assert [row["NAME"] for row in found] == [checkout.cr_name]
    # Label values are sanitised; the status keeps the real name.
    found = table(
        kubectl(
            kubeconfig, namespace, "get", "opampagents",
            "-l", "opamp.dev/service-name=payments_api_v2,opamp.dev/host-name=Node_B.example.com",
        )
    )  # fmt: skip
    assert [(row["NAME"], row["SERVICE"]) for row in found] == [(odd.cr_name, "payments api/v2")]
    by_uid = kubectl(
        kubeconfig,
        namespace,
        "get",
        "oa",
        "-l",
        f"opamp.dev/instance-uid={odd.agent_id}",
        "-o",
        "name",
    )
    assert by_uid.strip() == f"opampagent.opamp.dev/{odd.cr_name}"


async def test_heartbeat_timeout_offline_then_error_then_back_online(
    mirror: Mirror, kube_api: k8s.ApiClient, kubeconfig: Path, namespace: str
) -> None:
    agent = FakeAgent()
    await mirror.send(agent, agent.first_message())
    online = await mirror.cr(agent)
    connected_since = condition(online, "Connected")["lastTransitionTime"]

    # Within the timeout: still Online, and no condition moved.
    await mirror.tick(20)
    assert condition(await mirror.cr(agent), "Connected")["lastTransitionTime"] == connected_since

    await mirror.tick(11)  # 31s without a message: past the 30s heartbeat timeout
    cr = await mirror.cr(agent)
    assert cr["status"]["phase"] == "Offline"
    assert cr["status"]["disconnectReason"] == "heartbeat_timeout"
    assert "connection" not in cr["status"]
    connected = condition(cr, "Connected")
    assert (connected["status"], connected["reason"]) == ("False", "heartbeat_timeout")
    assert condition(cr, "Ready")["status"] == "False"
    assert condition(cr, "Healthy")["status"] == "Unknown"
    assert agent.channel.close_requests == ["heartbeat_timeout"]
    reasons = [e.reason for e in events_for(kube_api, namespace, agent.cr_name)]
    assert reasons == ["connected", "heartbeat_timeout"]
    offline_event = events_for(kube_api, namespace, agent.cr_name)[-1]
    assert offline_event.type == "Warning"
    assert offline_event.involved_object.uid == cr["metadata"]["uid"]

    await mirror.tick(61)  # Offline longer than error_after_offline_seconds
    cr = await mirror.cr(agent)
    assert cr["status"]["phase"] == "Error"
    ready = condition(cr, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "offline_too_long")
    # Connected stayed False: its transition time is still the moment the agent went away.
    assert condition(cr, "Connected")["lastTransitionTime"] == connected["lastTransitionTime"]

    await mirror.send(agent, agent.heartbeat())
    cr = await mirror.cr(agent)
    assert cr["status"]["phase"] == "Online"
    assert condition(cr, "Connected")["status"] == "True"
    assert condition(cr, "Ready")["status"] == "True"
    reasons = [e.reason for e in events_for(kube_api, namespace, agent.cr_name)]
    assert reasons == ["connected", "heartbeat_timeout", "offline_too_long", "connected"]

    described = kubectl(kubeconfig, namespace, "describe", "opampagent", agent.cr_name)
    for text in ("heartbeat_timeout", "offline_too_long", "Online -> Offline", "Offline -> Error"):
        assert text in described


async def test_agent_changes_are_written_and_unchanged_conditions_keep_their_time(
    mirror: Mirror, kubeconfig: Path, namespace: str
) -> None:
    agent = FakeAgent(service_version="1.0.0")
    await mirror.send(agent, agent.first_message(healthy=True))
    before = await mirror.cr(agent)

    mirror.clock.advance(5)
    unhealthy = agent.heartbeat()
    unhealthy.health.healthy = False
    unhealthy.health.last_error = "exporter queue full"
    await mirror.send(agent, unhealthy)
    after = await mirror.cr(agent)
    healthy = condition(after, "Healthy")
    assert (healthy["status"], healthy["message"]) == ("False", "exporter queue full")
    assert condition(after, "Ready")["reason"] == "unhealthy"
    assert healthy["lastTransitionTime"] != condition(before, "Healthy")["lastTransitionTime"]
    assert condition(after, "Connected") == condition(before, "Connected")

    upgraded = agent.first_message()
    upgraded.agent_description.identifying_attributes[1].value.string_value = "1.1.0"
    await mirror.send(agent, upgraded)
    cr = await mirror.cr(agent)
    assert cr["status"]["agent"]["serviceVersion"] == "1.1.0"
    assert cr["metadata"]["labels"]["opamp.dev/service-version"] == "1.1.0"
    (row,) = table(kubectl(kubeconfig, namespace, "get", "opampagents"))
    assert row["VERSION"] == "1.1.0"


async def test_steady_fleet_causes_no_writes_between_refreshes(mirror: Mirror) -> None:
    agents = [FakeAgent(service_name=f"svc-{i % 5}", host_name=f"node-{i}") for i in range(50)]
    for agent in agents:
        assert mirror.fleet.handle_message(agent.channel, agent.first_message()) is not None
    assert await mirror.writer.flush(within_seconds=30)
    assert mirror.writer.requests[("create", "ok")] == 50
    written = sum(mirror.writer.requests.values())

    async def versions() -> dict[str, str]:
        items = await mirror.api.list_agents()
        return {item["metadata"]["name"]: item["metadata"]["resourceVersion"] for item in items}

    before = await versions()
    assert len(before) == 50

    # Five heartbeat rounds, 10s apart: 50s of a steady fleet, refresh interval 60s.
    for _ in range(5):
        mirror.clock.advance(10)
        for agent in agents:
            assert mirror.fleet.handle_message(agent.channel, agent.heartbeat()) is not None
        assert mirror.fleet.check_deadlines() == 0
        await rounds_pass("cr_sweep", in_process_passes("cr_sweep"), 3)  # the writer looked
        assert await mirror.writer.flush(within_seconds=10)
        assert sum(mirror.writer.requests.values()) == written
    assert await versions() == before

    # Past the refresh interval: one lastSeenAt patch per agent, nothing else.
    mirror.clock.advance(10)
    for agent in agents:
        mirror.fleet.handle_message(agent.channel, agent.heartbeat())

    async def refreshed() -> bool | None:
        return True if mirror.writer.requests[("status", "ok")] >= 100 else None

    await eventually("50 lastSeenAt refreshes", refreshed, within=20)
    assert await mirror.writer.flush(within_seconds=10)
    assert sum(mirror.writer.requests.values()) == written + 50
    after = await versions()
    assert all(after[name] != before[name] for name in before)
    item = await mirror.api.get_agent(agents[0].cr_name)
    assert item is not None
    assert item["status"]["lastSeenAt"] == mirror.clock.now().strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_a_burst_of_changes_costs_one_write(mirror: Mirror) -> None:
    agent = FakeAgent()
    mirror.fleet.handle_message(agent.channel, agent.first_message())
    for round_ in range(10):  # no await in between: the writer sees them all at once
        message = agent.heartbeat()
        message.health.healthy = round_ % 2 == 0
        message.health.status = f"round {round_}"
        assert mirror.fleet.handle_message(agent.channel, message) is not None
    assert await mirror.writer.flush(within_seconds=20)
    assert mirror.writer.requests == {("create", "ok"): 1, ("status", "ok"): 1, ("event", "ok"): 1}
    cr = await mirror.cr(agent)
    assert cr["status"]["health"]["status"] == "round 9"  # the latest snapshot won


async def test_deleted_cr_of_a_connected_agent_returns_at_the_next_refresh(
    mirror: Mirror, kube_api: k8s.ApiClient, namespace: str
) -> None:
    """Without Kopf watching (or while it was down), the next lastSeenAt write recreates it."""
    agent = FakeAgent()
    await mirror.send(agent, agent.first_message())
    first = await mirror.cr(agent)
    await asyncio.to_thread(
        k8s.CustomObjectsApi(kube_api).delete_namespaced_custom_object,
        "opamp.dev", "v1alpha1", namespace, "opampagents", agent.cr_name,
    )  # fmt: skip
    mirror.clock.advance(25)
    await mirror.send(agent, agent.heartbeat())
    assert await mirror.api.get_agent(agent.cr_name) is None  # nothing shown changed: no write

    mirror.clock.advance(25)
    await mirror.send(agent, agent.heartbeat())
    mirror.clock.advance(15)  # past the 60s refresh: the sweep writes lastSeenAt, gets 404

    async def recreated() -> dict[str, Any] | None:
        # Created first, its status written by the next request: wait for both.
        cr = await mirror.api.get_agent(agent.cr_name)
        return cr if cr is not None and "status" in cr else None

    again = await eventually("the CR recreated with its status", recreated, within=20)
    assert again["metadata"]["uid"] != first["metadata"]["uid"]
    assert again["status"]["phase"] == "Online"
    assert mirror.writer.requests[("status", "not_found")] == 1
