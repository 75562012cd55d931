"""Fleet.mark_offline: the session ends now for a reason the caller knows (a pod gone)."""

from __future__ import annotations

import uuid

from opamp_operator.config import FleetSettings
from opamp_operator.fleet.clock import FakeClock
from opamp_operator.fleet.events import EventBus, SessionOpened
from opamp_operator.fleet.model import AgentPhase, Reason, Transport
from opamp_operator.fleet.registry import Fleet
from tests.unit.test_fleet import FakeChannel, drain, message

UID = uuid.uuid4().bytes
AGENT_ID = str(uuid.UUID(bytes=UID))


def make_fleet() -> tuple[Fleet, FakeClock, EventBus]:
    clock, bus = FakeClock(), EventBus()
    settings = FleetSettings(
        heartbeat_interval_seconds=10, heartbeat_timeout_seconds=30, error_after_offline_seconds=100
    )
    return Fleet(settings, clock, bus), clock, bus


def test_online_websocket_agent_goes_offline_and_its_connection_is_closed() -> None:
    fleet, _, bus = make_fleet()
    events = bus.subscribe("test")
    channel = FakeChannel()
    fleet.handle_message(channel, message(UID, 0, service="x"))
    drain(events)

    assert fleet.mark_offline(AGENT_ID, Reason.POD_DELETED) is True

    snapshot = fleet.get(AGENT_ID)
    assert snapshot is not None
    assert (snapshot.phase, snapshot.phase_reason) == (AgentPhase.OFFLINE, "pod_deleted")
    assert snapshot.session is None and snapshot.disconnect_reason == "pod_deleted"
    assert channel.close_requests == ["pod_deleted"]
    kinds = [(type(e).__name__, getattr(e, "reason", None)) for e in drain(events)]
    assert kinds == [("SessionClosed", "pod_deleted"), ("PhaseChanged", "pod_deleted")]


def test_a_deleted_pod_ends_offline_and_is_never_escalated_to_error() -> None:
    # Issue 16 item 4: a deleted Pod is a deliberate departure (a scale-down), not a
    # failure: it stays Offline (this test asserted Error after the threshold before).
    fleet, clock, bus = make_fleet()
    events = bus.subscribe("test")
    fleet.handle_message(FakeChannel(), message(UID, 0))
    fleet.mark_offline(AGENT_ID, Reason.POD_DELETED)
    drain(events)
    clock.advance(31)
    assert fleet.check_deadlines() == 0  # no heartbeat_timeout on top of pod_deleted
    clock.advance(70)
    assert fleet.check_deadlines() == 0
    assert drain(events) == []
    snapshot = fleet.get(AGENT_ID)
    assert snapshot is not None and snapshot.phase is AgentPhase.OFFLINE


def test_unknown_or_already_offline_agents_are_left_alone() -> None:
    fleet, _, bus = make_fleet()
    events = bus.subscribe("test")
    assert fleet.mark_offline(AGENT_ID, Reason.POD_DELETED) is False
    fleet.handle_message(FakeChannel(), message(UID, 0, disconnect=True))
    drain(events)
    assert fleet.mark_offline(AGENT_ID, Reason.POD_DELETED) is False
    assert drain(events) == []
    snapshot = fleet.get(AGENT_ID)
    assert snapshot is not None and snapshot.phase_reason == Reason.AGENT_DISCONNECT


def test_http_agent_gets_a_new_session_at_its_next_poll() -> None:
    fleet, _, bus = make_fleet()
    events = bus.subscribe("test")
    fleet.handle_message(FakeChannel(Transport.HTTP), message(UID, 0))
    assert fleet.mark_offline(AGENT_ID, Reason.POD_DELETED)
    drain(events)
    fleet.handle_message(FakeChannel(Transport.HTTP), message(UID, 1))
    snapshot = fleet.get(AGENT_ID)
    assert snapshot is not None and snapshot.phase is AgentPhase.ONLINE
    opened = [e for e in drain(events) if isinstance(e, SessionOpened)]
    assert len(opened) == 1 and snapshot.phase_reason == Reason.CONNECTED
