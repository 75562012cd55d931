"""The fleet's state machine and deadlines, driven by real messages and a fake clock."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import pytest

from opamp_operator.config import FleetSettings
from opamp_operator.fleet.clock import FakeClock
from opamp_operator.fleet.events import (
    AgentChanged,
    EventBus,
    FleetEvent,
    PhaseChanged,
    SessionClosed,
    SessionOpened,
    Subscription,
)
from opamp_operator.fleet.model import AgentPhase, Reason, Transport
from opamp_operator.fleet.registry import Fleet
from opamp_operator.opamp.generated import anyvalue_pb2, opamp_pb2


@dataclass(eq=False)
class FakeChannel:
    transport: Transport = Transport.WEBSOCKET
    remote_addr: str = "127.0.0.1:5555"
    close_requests: list[str] = field(default_factory=list)

    def request_close(self, reason: str) -> None:
        self.close_requests.append(reason)


def message(
    uid: bytes,
    seq: int,
    *,
    service: str | None = None,
    disconnect: bool = False,
    heartbeats: bool = True,
) -> opamp_pb2.AgentToServer:
    """`heartbeats`: claim ReportsHeartbeat (then the heartbeat timeout judges it)."""
    claims = int(opamp_pb2.AgentCapabilities_ReportsHeartbeat) if heartbeats else 0
    msg = opamp_pb2.AgentToServer(instance_uid=uid, sequence_num=seq, capabilities=claims)
    if service is not None:
        msg.agent_description.identifying_attributes.append(
            anyvalue_pb2.KeyValue(
                key="service.name", value=anyvalue_pb2.AnyValue(string_value=service)
            )
        )
    if disconnect:
        msg.agent_disconnect.SetInParent()
    return msg


def drain(subscription: Subscription) -> list[FleetEvent]:
    events = []
    while (event := subscription.get_nowait()) is not None:
        events.append(event)
    return events


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def bus() -> EventBus:
    return EventBus()


@pytest.fixture
def fleet(clock: FakeClock, bus: EventBus) -> Fleet:
    settings = FleetSettings(
        heartbeat_interval_seconds=10, heartbeat_timeout_seconds=30, error_after_offline_seconds=100
    )
    return Fleet(settings, clock, bus)


UID = uuid.uuid4().bytes
AGENT_ID = str(uuid.UUID(bytes=UID))


def test_first_message_registers_agent_online_and_offers_heartbeat(
    fleet: Fleet, bus: EventBus
) -> None:
    events = bus.subscribe("test")
    reply = fleet.handle_message(FakeChannel(), message(UID, 1, service="collector"))
    assert reply is not None
    assert reply.instance_uid == UID
    assert reply.connection_settings.opamp.heartbeat_interval_seconds == 10
    assert reply.capabilities & opamp_pb2.ServerCapabilities_AcceptsStatus
    snapshot = fleet.get(AGENT_ID)
    assert snapshot is not None and snapshot.phase is AgentPhase.ONLINE
    assert snapshot.service_name == "collector"
    kinds = [type(e) for e in drain(events)]
    assert kinds == [SessionOpened, AgentChanged, PhaseChanged]


def test_heartbeat_timeout_goes_offline_then_error(
    fleet: Fleet, clock: FakeClock, bus: EventBus
) -> None:
    channel = FakeChannel()
    fleet.handle_message(channel, message(UID, 1, service="a"))
    events = bus.subscribe("test")
    clock.advance(29)
    fleet.handle_message(channel, message(UID, 2))  # heartbeat moves the deadline
    clock.advance(29)
    assert fleet.check_deadlines() == 0
    clock.advance(1.5)
    assert fleet.check_deadlines() == 1
    snapshot = fleet.get(AGENT_ID)
    assert snapshot is not None
    assert (snapshot.phase, snapshot.phase_reason) == (AgentPhase.OFFLINE, Reason.HEARTBEAT_TIMEOUT)
    assert channel.close_requests == [Reason.HEARTBEAT_TIMEOUT]
    closed, changed = drain(events)
    assert isinstance(closed, SessionClosed) and closed.reason == Reason.HEARTBEAT_TIMEOUT
    assert closed.duration_seconds == pytest.approx(59.5)
    assert isinstance(changed, PhaseChanged) and changed.previous is AgentPhase.ONLINE
    clock.advance(99)
    assert fleet.check_deadlines() == 0
    clock.advance(1)
    assert fleet.check_deadlines() == 1
    snapshot = fleet.get(AGENT_ID)
    assert snapshot is not None and snapshot.phase is AgentPhase.ERROR
    assert snapshot.phase_reason == Reason.OFFLINE_TOO_LONG


def test_closed_connection_is_offline_at_once_and_reconnect_is_online(
    fleet: Fleet, clock: FakeClock, bus: EventBus
) -> None:
    first = FakeChannel()
    fleet.handle_message(first, message(UID, 1, service="a"))
    events = bus.subscribe("test")
    clock.advance(5)
    fleet.channel_closed(first)
    snapshot = fleet.get(AGENT_ID)
    assert snapshot is not None and snapshot.phase_reason == Reason.CONNECTION_CLOSED
    assert snapshot.phase is AgentPhase.OFFLINE and snapshot.session is None
    second = FakeChannel()
    fleet.handle_message(second, message(UID, 2))
    snapshot = fleet.get(AGENT_ID)
    assert snapshot is not None and snapshot.phase is AgentPhase.ONLINE
    assert [type(e) for e in drain(events)] == [
        SessionClosed,
        PhaseChanged,
        SessionOpened,
        PhaseChanged,
    ]
    clock.advance(200)  # the Error deadline of the first offline period must not fire
    fleet.check_deadlines()
    snapshot = fleet.get(AGENT_ID)
    assert snapshot is not None and snapshot.phase is AgentPhase.OFFLINE  # heartbeat timeout


def test_agent_disconnect_gives_reason_and_no_reply(fleet: Fleet) -> None:
    fleet.handle_message(FakeChannel(), message(UID, 1, service="a"))
    assert fleet.handle_message(FakeChannel(), message(UID, 2, disconnect=True)) is None
    snapshot = fleet.get(AGENT_ID)
    assert snapshot is not None and snapshot.phase_reason == Reason.AGENT_DISCONNECT


def test_sessions_opened_and_ended_are_counted(fleet: Fleet) -> None:
    channel = FakeChannel()  # one connection: a hello, a heartbeat, a goodbye
    for sequence, goodbye in ((1, False), (2, False), (3, True)):
        fleet.handle_message(channel, message(UID, sequence, service="a", disconnect=goodbye))
    assert (fleet.sessions_opened, fleet.sessions_closed) == (1, 1)  # the collector's churn


def test_sequence_gap_asks_for_full_state(fleet: Fleet) -> None:
    channel = FakeChannel()
    fleet.handle_message(channel, message(UID, 1, service="a"))
    ok = fleet.handle_message(channel, message(UID, 2))
    gap = fleet.handle_message(channel, message(UID, 5))
    assert ok is not None and not ok.flags & opamp_pb2.ServerToAgentFlags_ReportFullState
    assert gap is not None and gap.flags & opamp_pb2.ServerToAgentFlags_ReportFullState


def test_unknown_agent_without_description_is_asked_for_full_state(fleet: Fleet) -> None:
    reply = fleet.handle_message(FakeChannel(), message(UID, 7))
    assert reply is not None and reply.flags & opamp_pb2.ServerToAgentFlags_ReportFullState


def test_bad_instance_uid_gets_bad_request(fleet: Fleet) -> None:
    reply = fleet.handle_message(FakeChannel(), message(b"short", 1))
    assert reply is not None
    assert reply.error_response.type == opamp_pb2.ServerErrorResponseType_BadRequest
    assert len(fleet) == 0


def test_each_message_reaches_the_agent_its_uid_names_whatever_the_channel(
    fleet: Fleet,
) -> None:
    # The fleet reuses a WebSocket session's agent id instead of formatting the uid of every
    # message: a message naming another uid on that channel (or a bad one) must not be
    # taken for the session's agent.
    channel, other = FakeChannel(), uuid.uuid4().bytes
    fleet.handle_message(channel, message(UID, 1, service="a"))
    fleet.handle_message(channel, message(UID, 2))
    fleet.handle_message(channel, message(other, 7, service="b"))
    fleet.handle_message(channel, message(UID, 3))
    mine, theirs = fleet.get(AGENT_ID), fleet.get(str(uuid.UUID(bytes=other)))
    assert mine is not None and mine.sequence_num == 3 and mine.service_name == "a"
    assert theirs is not None and theirs.sequence_num == 7 and theirs.service_name == "b"
    reply = fleet.handle_message(channel, message(b"short", 4))
    assert reply is not None
    assert reply.error_response.type == opamp_pb2.ServerErrorResponseType_BadRequest


def test_registration_rate_and_cap_reject_with_retry_hint(clock: FakeClock, bus: EventBus) -> None:
    settings = FleetSettings(max_agents=3, registrations_per_second=1, registration_burst=2)
    fleet = Fleet(settings, clock, bus)
    replies = [
        fleet.handle_message(FakeChannel(), message(uuid.uuid4().bytes, 1)) for _ in range(3)
    ]
    assert [r is not None and r.HasField("error_response") for r in replies] == [False, False, True]
    rejected = replies[2]
    assert rejected is not None
    assert rejected.error_response.type == opamp_pb2.ServerErrorResponseType_Unavailable
    assert rejected.error_response.retry_info.retry_after_nanoseconds > 0
    clock.advance(1)
    fleet.handle_message(FakeChannel(), message(uuid.uuid4().bytes, 1))
    clock.advance(10)
    capped = fleet.handle_message(FakeChannel(), message(uuid.uuid4().bytes, 1))
    assert capped is not None and capped.error_response.error_message == "agent limit reached"
    assert len(fleet) == 3


def test_http_polls_share_one_session_and_reconnect_ends_it(fleet: Fleet) -> None:
    def poll() -> FakeChannel:  # one request each
        return FakeChannel(transport=Transport.HTTP)

    fleet.handle_message(poll(), message(UID, 1, service="a"))
    first = fleet.get(AGENT_ID)
    fleet.handle_message(poll(), message(UID, 2))
    assert first is not None and first.session is not None
    second = fleet.get(AGENT_ID)
    assert second is not None and second.session == first.session
    assert fleet.request_reconnect(AGENT_ID)
    fleet.handle_message(poll(), message(UID, 3))
    after = fleet.get(AGENT_ID)
    assert after is not None and after.disconnect_reason == Reason.RECONNECT_REQUESTED
    fleet.handle_message(poll(), message(UID, 4))
    again = fleet.get(AGENT_ID)
    assert again is not None and again.session is not None
    assert again.session.session_id != first.session.session_id


def test_new_websocket_supersedes_old_one(fleet: Fleet) -> None:
    old, new = FakeChannel(), FakeChannel()
    fleet.handle_message(old, message(UID, 1, service="a"))
    fleet.handle_message(new, message(UID, 2))
    assert old.close_requests == [Reason.SUPERSEDED]
    fleet.channel_closed(old)  # the late close of the old socket must not end the new session
    snapshot = fleet.get(AGENT_ID)
    assert snapshot is not None and snapshot.phase is AgentPhase.ONLINE and snapshot.connected


def test_shutdown_closes_every_session(fleet: Fleet) -> None:
    channels = [FakeChannel() for _ in range(3)]
    for channel in channels:
        fleet.handle_message(channel, message(uuid.uuid4().bytes, 1))
    assert set(map(id, fleet.shutdown())) == set(map(id, channels))
    assert all(s.phase_reason == Reason.OPERATOR_SHUTDOWN for s in fleet.snapshots())


def test_no_heartbeat_times_out_while_the_sessions_are_being_ended(
    fleet: Fleet, clock: FakeClock
) -> None:
    """SIGTERM: the listener closes the WebSockets (a frozen peer takes seconds) while HTTP
    agents can no longer poll; their sessions must still end operator_shutdown."""
    fleet.handle_message(FakeChannel(transport=Transport.HTTP), message(UID, 1))
    fleet.begin_shutdown()
    clock.advance(31)
    assert fleet.check_deadlines() == 0
    fleet.shutdown()
    snapshot = fleet.get(AGENT_ID)
    assert snapshot is not None and snapshot.phase_reason == Reason.OPERATOR_SHUTDOWN


def test_full_subscriber_queue_drops_and_flags_resync(fleet: Fleet, bus: EventBus) -> None:
    small = bus.subscribe("small", maxsize=2)
    fleet.handle_message(FakeChannel(), message(UID, 1, service="a"))
    assert small.dropped == 1 and small.needs_resync
