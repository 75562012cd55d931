"""The liveness schedule leaves CRs alone while a session here holds their agent.

CRs are written on change only, so an Online CR's lastSeenAt is as old as its agent's
session: before this rule every CR held here fell due once the lastSeenAt looked stale and
was read back every few seconds for as long as the agent stayed connected (2,000 GETs a
second at 10,000 agents). Pure logic: a real Fleet on a fake clock, an API that only reads.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from opamp_operator.config import FleetSettings, KubeSettings
from opamp_operator.fleet.clock import FakeClock
from opamp_operator.fleet.events import EventBus
from opamp_operator.fleet.registry import Fleet
from opamp_operator.kube.liveness.judge import LivenessChecker
from opamp_operator.kube.liveness.schedule import LivenessWatch
from opamp_operator.kube.shapes.naming import resource_name
from tests.support.fake_agents import FakeChannel, hello


class ReadOnlyApi:
    """get_agent answers the CR as given; any write would fail the test (no gate given)."""

    namespace = "ns"

    def __init__(self) -> None:
        self.bodies: dict[str, dict[str, Any]] = {}
        self.reads = 0

    async def get_agent(self, name: str) -> dict[str, Any] | None:
        self.reads += 1
        return self.bodies.get(name)


def online_cr(agent_id: str, clock: FakeClock, replica: str) -> dict[str, Any]:
    seen = (clock.now() - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "metadata": {"name": resource_name(agent_id), "uid": "u1", "resourceVersion": "1",
                     "creationTimestamp": seen},
        "status": {"phase": "Online", "lastSeenAt": seen, "instanceUid": agent_id,
                   "connection": {"replica": replica}},
    }  # fmt: skip


def make_watch() -> tuple[LivenessWatch, Fleet, ReadOnlyApi, FakeClock]:
    clock = FakeClock()
    fleet = Fleet(FleetSettings(), clock, EventBus())
    api = ReadOnlyApi()
    settings = KubeSettings(replica_id="here")
    checker = LivenessChecker(fleet, settings, api, clock, gate=None)  # type: ignore[arg-type]
    return LivenessWatch(checker, interval_seconds=1.0, parallel=4), fleet, api, clock


async def test_a_cr_held_by_a_session_here_is_never_due_however_old_its_last_seen() -> None:
    watch, fleet, api, clock = make_watch()
    agent_id = str(uuid.uuid4())
    fleet.handle_message(FakeChannel(), hello(agent_id))
    body = online_cr(agent_id, clock, replica="here")  # lastSeenAt an hour ago
    api.bodies[body["metadata"]["name"]] = body
    watch.observe("MODIFIED", body)
    assert len(watch) == 0  # the fleet's deadline judges it, not a CR read
    clock.advance(3600)
    assert await watch.check_due() == 0
    assert api.reads == 0


async def test_a_cr_due_while_its_agent_reconnected_here_is_read_once_then_left() -> None:
    watch, fleet, api, clock = make_watch()
    agent_id = str(uuid.uuid4())
    body = online_cr(agent_id, clock, replica="here")  # a previous run of this replica
    api.bodies[body["metadata"]["name"]] = body
    watch.observe(None, body)
    assert len(watch) == 1  # nobody holds it: it is due
    fleet.handle_message(FakeChannel(), hello(agent_id))  # the agent comes back first
    assert await watch.check_due() == 1
    assert api.reads == 1
    for _ in range(10):
        clock.advance(30)
        assert await watch.check_due() == 0
    assert api.reads == 1 and len(watch) == 0


async def test_a_cr_nobody_here_holds_stays_scheduled() -> None:
    watch, _, _, clock = make_watch()
    body = online_cr(str(uuid.uuid4()), clock, replica="gone-replica-without-lease")
    watch.observe("MODIFIED", body)
    assert len(watch) == 1
