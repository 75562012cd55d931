"""The OpAMPAgent watch and liveness, run in-process against the real kube-apiserver.

CRs left behind by a process that died (no live session anywhere) turn Offline, then
Error, with Events; CRs of agents connected here are left alone; a deleted CR of a
connected agent comes back; with a GC TTL, long-offline CRs are deleted.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from opamp_operator.config import FleetSettings, KubeSettings
from opamp_operator.fleet.clock import FakeClock, SystemClock
from opamp_operator.fleet.events import EventBus
from opamp_operator.fleet.registry import Fleet
from opamp_operator.kube.api.resources import KubeApi
from opamp_operator.kube.mirror.statuswriter import StatusWriter
from opamp_operator.kube.shapes.agentstatus import build_status, format_time
from opamp_operator.kube.shapes.naming import agent_labels
from opamp_operator.kube.wiring.agentwatch import AgentWatch
from tests.support.kube_mirror import FakeAgent, condition, events_for, kubectl
from tests.support.polling import eventually, in_process_passes, rounds_pass

pytestmark = pytest.mark.integration

FLEET = FleetSettings(
    heartbeat_interval_seconds=1, heartbeat_timeout_seconds=2, error_after_offline_seconds=3
)


@dataclass
class Operator:
    """A writer and the OpAMPAgent watch's subscribers, on a fleet whose clock is an hour behind."""

    fleet: Fleet
    clock: FakeClock
    writer: StatusWriter
    api: KubeApi

    async def phase(self, name: str) -> str | None:
        cr = await self.api.get_agent(name)
        return None if cr is None else cr.get("status", {}).get("phase")

    def waiter(self, name: str, phase: str) -> Callable[[], Any]:
        async def probe() -> dict[str, Any] | None:
            cr = await self.api.get_agent(name)
            return cr if cr is not None and cr.get("status", {}).get("phase") == phase else None

        return probe


@asynccontextmanager
async def running(
    api: KubeApi, kubeconfig: Path, namespace: str, **overrides: Any
) -> AsyncIterator[Operator]:
    values: dict[str, Any] = {
        "namespace": namespace, "kubeconfig": kubeconfig,
        "writes_per_second": 200, "sweep_interval_seconds": 0.1,
        "liveness_check_interval_seconds": 0.5, "last_seen_refresh_seconds": 2,
        "retry_max_seconds": 1, "replica_id": "live-replica",
    }  # fmt: skip
    values.update(overrides)
    settings = KubeSettings(**values)
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1))
    bus = EventBus()
    fleet = Fleet(FLEET, clock, bus)
    writer = StatusWriter(settings, fleet, bus.subscribe("kube", 1000), api, clock)
    await writer.start()
    watch = AgentWatch(fleet, settings, api, writer=writer, clock=SystemClock())
    await watch.start()
    try:
        await asyncio.wait_for(watch.informer.synced.wait(), 30)
        yield Operator(fleet, clock, writer, api)
    finally:
        await watch.stop()
        await writer.stop()


async def orphan(api: KubeApi, *, online_at: datetime, phase_after: str | None = None) -> str:
    """A CR as a process that has since died left it: Online, lastSeenAt at `online_at`."""
    clock = FakeClock(online_at)
    fleet = Fleet(FLEET, clock, EventBus())
    agent = FakeAgent(service_name="orphan")
    fleet.handle_message(agent.channel, agent.first_message())
    if phase_after is not None:
        clock.advance(FLEET.heartbeat_timeout_seconds + 1)
        fleet.check_deadlines()
        clock.advance(FLEET.error_after_offline_seconds + 1)
        fleet.check_deadlines()
    snapshot = fleet.get(agent.agent_id)
    assert snapshot is not None
    assert phase_after is None or snapshot.phase.value == phase_after
    created = await api.create_agent(agent.cr_name, agent_labels(snapshot))
    status = build_status(snapshot, None, generation=1, replica="dead-replica", now=clock.now())
    status = {key: value for key, value in status.items() if value is not None}
    await api.patch_agent_status(agent.cr_name, status, created["metadata"]["resourceVersion"])
    return agent.cr_name


async def test_orphaned_cr_goes_offline_then_error_with_events(
    mirror_api: KubeApi, kube_api: k8s.ApiClient, kubeconfig: Path, namespace: str
) -> None:
    an_hour_ago = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    name = await orphan(mirror_api, online_at=an_hour_ago)
    async with running(mirror_api, kubeconfig, namespace) as operator:
        # An agent connected here, whose CR says it was last seen an hour ago (this fleet's
        # clock is an hour behind): the timer must leave it alone, it is held here.
        held = FakeAgent(service_name="held")
        operator.fleet.handle_message(held.channel, held.first_message())
        assert await operator.writer.flush(within_seconds=20)

        offline = await eventually("Offline", operator.waiter(name, "Offline"))
        assert offline["status"]["disconnectReason"] == "heartbeat_timeout"
        connected = condition(offline, "Connected")
        assert (connected["status"], connected["reason"]) == ("False", "heartbeat_timeout")
        assert "connection" not in offline["status"]
        assert offline["status"]["lastSeenAt"] == format_time(an_hour_ago)  # not invented

        error = await eventually("Error", operator.waiter(name, "Error"))
        ready = condition(error, "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "offline_too_long")
        assert (
            condition(error, "Connected")["lastTransitionTime"] == connected["lastTransitionTime"]
        )
        events = events_for(kube_api, namespace, name)
        assert [(e.reason, e.type) for e in events] == [
            ("heartbeat_timeout", "Warning"), ("offline_too_long", "Warning"),
        ]  # fmt: skip
        assert all(e.involved_object.uid == error["metadata"]["uid"] for e in events)
        described = kubectl(kubeconfig, namespace, "describe", "opampagent", name)
        assert "Online -> Offline: heartbeat_timeout" in described
        assert "Offline -> Error: offline_too_long" in described

        assert await operator.phase(held.cr_name) == "Online"
        assert [e.reason for e in events_for(kube_api, namespace, held.cr_name)] == ["connected"]
        # No finalizers: CRs stay deletable while the operator is down.
        for cr in await mirror_api.list_agents():
            assert not cr["metadata"].get("finalizers"), cr["metadata"]


async def test_deleted_cr_comes_back_only_for_a_connected_agent(
    mirror_api: KubeApi, kube_api: k8s.ApiClient, kubeconfig: Path, namespace: str
) -> None:
    async with running(mirror_api, kubeconfig, namespace) as operator:
        # Kopf's ready flag comes before its watch is up: a deletion before that is seen by
        # nobody (the writer then recreates at the next refresh, see test_kube_mirror).
        # An orphan turning Offline proves the watch is live.
        sentinel = await orphan(mirror_api, online_at=datetime.now(UTC) - timedelta(hours=1))
        await eventually("the watch to be live", operator.waiter(sentinel, "Offline"))
        connected, gone = FakeAgent(service_name="connected"), FakeAgent(service_name="gone")
        for agent in (connected, gone):
            operator.fleet.handle_message(agent.channel, agent.first_message())
        operator.fleet.channel_closed(gone.channel)
        assert await operator.writer.flush(within_seconds=20)
        first = await mirror_api.get_agent(connected.cr_name)
        assert first is not None
        assert await operator.phase(gone.cr_name) == "Offline"

        objects = k8s.CustomObjectsApi(kube_api)
        for agent in (connected, gone):
            await asyncio.to_thread(
                objects.delete_namespaced_custom_object,
                "opamp.dev", "v1alpha1", namespace, "opampagents", agent.cr_name,
            )  # fmt: skip

        async def recreated() -> dict[str, Any] | None:
            cr = await mirror_api.get_agent(connected.cr_name)
            if cr is None or cr["metadata"]["uid"] == first["metadata"]["uid"]:
                return None
            return cr if cr.get("status", {}).get("phase") == "Online" else None

        again = await eventually("the connected agent's CR recreated", recreated)
        assert condition(again, "Connected")["status"] == "True"

        async def deleted() -> bool | None:
            return True if await mirror_api.get_agent(gone.cr_name) is None else None

        await eventually("the offline agent's CR gone", deleted)
        await rounds_pass("liveness", in_process_passes("liveness"), 3)  # it stays deleted
        assert await mirror_api.get_agent(gone.cr_name) is None

        # ...until the agent comes back.
        operator.fleet.handle_message(gone.channel, gone.heartbeat())
        assert await operator.writer.flush(within_seconds=20)
        assert await operator.phase(gone.cr_name) == "Online"


async def test_gc_deletes_crs_offline_longer_than_the_ttl(
    mirror_api: KubeApi, kubeconfig: Path, namespace: str
) -> None:
    long_ago = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    old = await orphan(mirror_api, online_at=long_ago, phase_after="Error")
    recent = await orphan(mirror_api, online_at=datetime.now(UTC) - timedelta(minutes=1))
    async with running(mirror_api, kubeconfig, namespace, gc_ttl_seconds=3600) as operator:

        async def collected() -> bool | None:
            return True if await mirror_api.get_agent(old) is None else None

        await eventually("the long-offline CR deleted", collected)
        # Offline only since the timer noticed it (just now): kept, not collected.
        await eventually("recent orphan Offline", operator.waiter(recent, "Offline"))
        assert await mirror_api.get_agent(recent) is not None
