"""Pure logic of issue 16: forgetting, the cap, full reports, settings warnings, departures."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from opamp_operator.config import FleetSettings
from opamp_operator.fleet.deadlines import DeadlineScheduler
from opamp_operator.fleet.events import AgentForgotten
from opamp_operator.fleet.model import AgentPhase, Liveness, Transport, liveness_rule
from opamp_operator.fleet.record import is_full_report
from opamp_operator.kube.liveness.judge import Thresholds, due_at, judge
from opamp_operator.kube.shapes.transitionevent import event_type
from opamp_operator.metrics import FleetCollector
from tests.support.api_fleet import make_fleet, visit
from tests.support.fake_agents import FakeChannel, hello, new_agent_id

SETTINGS = dict(registrations_per_second=1e9, registration_burst=10**9)


def test_departed_agents_are_forgotten_after_the_retention() -> None:
    fleet, clock, bus = make_fleet(settings=FleetSettings(forget_after_seconds=100, **SETTINGS))
    events = bus.subscribe("test")
    agent = new_agent_id()
    visit(fleet, agent)
    clock.advance(99)
    fleet.check_deadlines()
    assert fleet.get(agent) is not None
    clock.advance(2)
    fleet.check_deadlines()
    assert fleet.get(agent) is None and len(fleet) == 0
    seen = []
    while (event := events.get_nowait()) is not None:
        seen.append(event)
    assert isinstance(seen[-1], AgentForgotten) and seen[-1].agent_id == agent


def test_the_cap_counts_online_agents_and_memory_stays_bounded() -> None:
    fleet, _, _ = make_fleet(settings=FleetSettings(max_agents=2, **SETTINGS))
    for _ in range(6):
        visit(fleet, new_agent_id())  # each says goodbye
    assert fleet.active() == 0 and len(fleet) <= 4  # 2x the cap, the oldest forgotten
    first, second, third = new_agent_id(), new_agent_id(), new_agent_id()
    fleet.handle_message(FakeChannel(), hello(first))
    fleet.handle_message(FakeChannel(), hello(second))
    reply = fleet.handle_message(FakeChannel(), hello(third))
    assert reply is not None and reply.HasField("error_response")  # two Online: full
    assert fleet.get(third) is None


def test_a_full_report_carries_what_the_capabilities_promise() -> None:
    agent = new_agent_id()
    assert is_full_report(hello(agent))
    assert not is_full_report(hello(agent, healthy=None))  # ReportsHealth without health
    message = hello(agent)
    message.ClearField("agent_description")
    assert not is_full_report(message)


def test_liveness_rule_by_transport_and_capability() -> None:
    assert liveness_rule(Transport.WEBSOCKET, False) is Liveness.CONNECTION
    assert liveness_rule(Transport.WEBSOCKET, True) is Liveness.HEARTBEAT
    assert liveness_rule(Transport.HTTP, False) is Liveness.HEARTBEAT


def test_settings_warn_when_the_timeout_is_short() -> None:
    assert FleetSettings().warnings() == []
    (short,) = FleetSettings(heartbeat_interval_seconds=30, heartbeat_timeout_seconds=45).warnings()
    assert "below 2x" in short
    assert len(FleetSettings(heartbeat_interval_seconds=5, heartbeat_timeout_seconds=15).warnings())


def test_departures_stay_offline_in_the_cr_judge_and_their_events_are_normal() -> None:
    now = datetime(2026, 12, 1, tzinfo=UTC)
    limits = Thresholds(timedelta(seconds=90), timedelta(seconds=300), None)
    since = (now - timedelta(hours=2)).isoformat().replace("+00:00", "Z")
    connected = {"type": "Connected", "status": "False", "lastTransitionTime": since}
    for reason, expected in (("agent_disconnect", None), ("connection_closed", AgentPhase.ERROR)):
        status = {"phase": "Offline", "disconnectReason": reason, "conditions": [connected]}
        verdict = judge(status, None, now, limits, known_here=False)
        assert (verdict and verdict.phase) == expected, reason
        assert (due_at(status, None, limits) is None) == (expected is None)
    assert event_type(AgentPhase.OFFLINE, "agent_disconnect") == "Normal"
    assert event_type(AgentPhase.OFFLINE, "pod_deleted") == "Normal"
    assert event_type(AgentPhase.OFFLINE, "heartbeat_timeout") == "Warning"


def test_pop_earliest_takes_the_soonest_deadline_due_or_not() -> None:
    scheduler = DeadlineScheduler()
    scheduler.set("b", 20)
    scheduler.set("a", 10)
    scheduler.set("a", 30)  # moved later
    assert scheduler.pop_earliest() == "b"
    assert scheduler.pop_earliest() == "a"
    assert scheduler.pop_earliest() is None


def test_departed_agents_are_counted_apart_from_lost_ones() -> None:
    fleet, _, _ = make_fleet(settings=FleetSettings(**SETTINGS))
    polite, lost = new_agent_id(), new_agent_id()
    visit(fleet, polite)  # hello, then AgentDisconnect
    dropped = FakeChannel()
    fleet.handle_message(dropped, hello(lost))
    fleet.channel_closed(dropped)  # the connection just dropped
    gauges = {
        f.name: f.samples[0].value
        for f in FleetCollector(fleet.counts, fleet.departed).collect()
        if f.name != "opamp_agents"
    }
    # offline_total - departed: the agents lost without a goodbye.
    assert gauges["opamp_agents_offline_total"] == 2
    assert gauges["opamp_agents_departed"] == 1
