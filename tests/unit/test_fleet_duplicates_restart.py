"""Duplicate instance uids, the Restart command and custom capabilities in the fleet (pure)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import pytest

from opamp_operator.config import FleetSettings
from opamp_operator.fleet.clock import FakeClock
from opamp_operator.fleet.commands import RestartResult
from opamp_operator.fleet.events import EventBus
from opamp_operator.fleet.identity import DuplicateUid, identity_of, is_duplicate, new_instance_uid
from opamp_operator.fleet.model import AgentPhase, Reason, Transport
from opamp_operator.fleet.registry import Fleet
from opamp_operator.opamp.generated import anyvalue_pb2, opamp_pb2
from opamp_operator.opamp.messages import AgentDescriptionView, ServerToAgent

ACCEPTS_RESTART = int(opamp_pb2.AgentCapabilities_AcceptsRestartCommand)
UID = uuid.uuid4().bytes
AGENT_ID = str(uuid.UUID(bytes=UID))


@dataclass(eq=False)
class Socket:
    """A WebSocket as the fleet sees it: can be closed and can take pushed messages."""

    transport: Transport = Transport.WEBSOCKET
    remote_addr: str = "127.0.0.1:5555"
    close_requests: list[str] = field(default_factory=list)
    pushed: list[ServerToAgent] = field(default_factory=list)

    def request_close(self, reason: str) -> None:
        self.close_requests.append(reason)

    def offer(self, message: ServerToAgent) -> bool:
        self.pushed.append(message)
        return True


@dataclass(eq=False)
class Poll:
    transport: Transport = Transport.HTTP
    remote_addr: str = "127.0.0.1:6666"

    def request_close(self, reason: str) -> None:
        pass


def message(
    uid: bytes, seq: int, *, host: str | None = None, version: str = "1", caps: int = 0
) -> opamp_pb2.AgentToServer:
    msg = opamp_pb2.AgentToServer(instance_uid=uid, sequence_num=seq, capabilities=1 | caps)
    if host is not None:
        attrs = {"service.name": "otelcol", "service.version": version}
        for key, value in attrs.items():
            msg.agent_description.identifying_attributes.append(
                anyvalue_pb2.KeyValue(key=key, value=anyvalue_pb2.AnyValue(string_value=value))
            )
        msg.agent_description.non_identifying_attributes.append(
            anyvalue_pb2.KeyValue(key="host.name", value=anyvalue_pb2.AnyValue(string_value=host))
        )
    return msg


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def found() -> list[DuplicateUid]:
    return []


@pytest.fixture
def fleet(clock: FakeClock, found: list[DuplicateUid]) -> Fleet:
    settings = FleetSettings(heartbeat_interval_seconds=10, heartbeat_timeout_seconds=30)
    return Fleet(settings, clock, EventBus(), on_duplicate=found.append)


def test_new_instance_uid_is_a_uuid7() -> None:
    uids = {new_instance_uid() for _ in range(100)}
    assert len(uids) == 100
    assert all(uuid.UUID(bytes=u).version == 7 for u in uids)


def test_identity_rule_compares_only_shared_where_and_who_attributes() -> None:
    def ident(**attrs: str) -> tuple[tuple[str, str], ...] | None:
        return identity_of(AgentDescriptionView(non_identifying=attrs))

    assert is_duplicate(ident(**{"host.name": "a"}), ident(**{"host.name": "b"}))
    assert not is_duplicate(ident(**{"host.name": "a"}), ident(**{"host.name": "a"}))
    assert not is_duplicate(ident(**{"host.name": "a"}), ident(**{"k8s.pod.name": "p"}))
    assert not is_duplicate(ident(**{"host.name": "a"}), None)
    assert not is_duplicate(ident(**{"os.type": "x"}), ident(**{"os.type": "y"}))


def test_second_live_websocket_from_another_host_gets_a_new_uid(
    fleet: Fleet, found: list[DuplicateUid]
) -> None:
    first, second = Socket(), Socket(remote_addr="10.0.0.2:1")
    fleet.handle_message(first, message(UID, 0, host="vm-a"))
    reply = fleet.handle_message(second, message(UID, 0, host="vm-b"))
    assert reply is not None and reply.instance_uid == UID
    new_uid = bytes(reply.agent_identification.new_instance_uid)
    assert len(new_uid) == 16 and new_uid != UID and uuid.UUID(bytes=new_uid).version == 7
    assert first.close_requests == []  # the agent holding the uid keeps its session
    original, clone = fleet.get(AGENT_ID), fleet.get(str(uuid.UUID(bytes=new_uid)))
    assert original is not None and original.connected and original.host_name == "vm-a"
    assert clone is not None and clone.connected and clone.host_name == "vm-b"
    assert [(d.original, d.assigned) for d in found] == [(AGENT_ID, clone.agent_id)]
    # Messages still in flight with the old uid on the clone's socket stay the clone's.
    again = fleet.handle_message(second, message(UID, 1))
    assert again is not None and bytes(again.agent_identification.new_instance_uid) == new_uid
    assert fleet.handle_message(second, message(new_uid, 2)) is not None
    fleet.handle_message(first, message(UID, 1))
    assert len(found) == 1 and len(fleet) == 2
    assert fleet.get(AGENT_ID).host_name == "vm-a"  # type: ignore[union-attr]


def test_reconnect_while_old_socket_looks_live_is_no_duplicate(
    fleet: Fleet, found: list[DuplicateUid]
) -> None:
    old, new = Socket(), Socket()
    fleet.handle_message(old, message(UID, 0, host="vm-a", version="1"))
    # Same host and service, upgraded version, old socket not closed yet: a reconnect.
    reply = fleet.handle_message(new, message(UID, 0, host="vm-a", version="2"))
    assert reply is not None and not reply.HasField("agent_identification")
    assert old.close_requests == [Reason.SUPERSEDED]
    assert found == [] and len(fleet) == 1
    # Without a description nothing tells it apart: a reconnect too.
    third = Socket()
    reply = fleet.handle_message(third, message(UID, 1))
    assert reply is not None and not reply.HasField("agent_identification") and found == []


def test_interleaved_http_agents_are_split_once_per_clone(
    fleet: Fleet, found: list[DuplicateUid]
) -> None:
    fleet.handle_message(Poll(), message(UID, 0, host="vm-a"))
    told = fleet.handle_message(Poll(remote_addr="10.0.0.2:1"), message(UID, 0, host="vm-b"))
    assert told is not None and told.HasField("agent_identification")
    # The clone lost the reply and polls again with the old uid: the same new uid again.
    again = fleet.handle_message(Poll(remote_addr="10.0.0.2:2"), message(UID, 1, host="vm-b"))
    assert again is not None
    assert again.agent_identification.new_instance_uid == told.agent_identification.new_instance_uid
    assert len(found) == 1 and len(fleet) == 2


def test_restart_refused_without_capability_and_sent_alone_with_it(fleet: Fleet) -> None:
    socket = Socket()
    assert fleet.request_restart(AGENT_ID) is RestartResult.UNKNOWN_AGENT
    fleet.handle_message(socket, message(UID, 0, host="a"))
    assert fleet.request_restart(AGENT_ID) is RestartResult.NOT_SUPPORTED
    fleet.handle_message(socket, message(UID, 1, caps=ACCEPTS_RESTART))
    assert fleet.request_restart(AGENT_ID) is RestartResult.SENT
    (command,) = socket.pushed
    assert command.command.type == opamp_pb2.CommandType_Restart
    assert command.instance_uid == UID and not command.HasField("remote_config")
    # The agent restarts: goodbye, connection closed; the session ends as the restart.
    bye = message(UID, 2, caps=ACCEPTS_RESTART)
    bye.agent_disconnect.SetInParent()
    fleet.handle_message(socket, bye)
    snapshot = fleet.get(AGENT_ID)
    assert snapshot is not None and snapshot.phase is AgentPhase.OFFLINE
    assert snapshot.phase_reason == Reason.RESTART_REQUESTED
    assert fleet.request_restart(AGENT_ID) is RestartResult.NOT_CONNECTED


def test_restart_of_http_agent_is_the_whole_next_reply(fleet: Fleet) -> None:
    fleet.handle_message(Poll(), message(UID, 0, host="a", caps=ACCEPTS_RESTART))
    assert fleet.request_restart(AGENT_ID) is RestartResult.QUEUED
    reply = fleet.handle_message(Poll(), message(UID, 1, caps=ACCEPTS_RESTART))
    assert reply is not None and reply.HasField("command")
    assert not reply.HasField("connection_settings") and not reply.flags
    snapshot = fleet.get(AGENT_ID)
    assert snapshot is not None and snapshot.disconnect_reason == Reason.RESTART_REQUESTED
    reply = fleet.handle_message(Poll(), message(UID, 0, host="a", caps=ACCEPTS_RESTART))
    assert reply is not None and not reply.HasField("command")
    assert fleet.get(AGENT_ID).phase is AgentPhase.ONLINE  # type: ignore[union-attr]


def test_late_session_end_after_restart_keeps_its_own_reason(
    fleet: Fleet, clock: FakeClock
) -> None:
    socket = Socket()
    fleet.handle_message(socket, message(UID, 0, host="a", caps=ACCEPTS_RESTART))
    assert fleet.request_restart(AGENT_ID) is RestartResult.SENT
    clock.advance(31)  # longer than the heartbeat timeout: not the restart any more
    fleet.channel_closed(socket)
    snapshot = fleet.get(AGENT_ID)
    assert snapshot is not None and snapshot.phase_reason == Reason.CONNECTION_CLOSED


def test_custom_capabilities_are_kept_sorted_and_bounded(fleet: Fleet) -> None:
    msg = message(UID, 0, host="a")
    msg.custom_capabilities.capabilities.extend(
        ["io.example.pause", "com.acme.discovery", "io.example.pause", "x" * 400]
        + [f"io.example.c{i:03d}" for i in range(100)]
    )
    fleet.handle_message(Socket(), msg)
    snapshot = fleet.get(AGENT_ID)
    assert snapshot is not None
    names = snapshot.custom_capabilities
    assert len(names) == 32 and names == sorted(names) and names[0] == "com.acme.discovery"
    assert all(len(name) <= 253 for name in names)


def test_clone_that_never_switches_outlives_a_forgotten_original(
    clock: FakeClock, found: list[DuplicateUid]
) -> None:
    settings = FleetSettings(
        heartbeat_interval_seconds=10, heartbeat_timeout_seconds=30, forget_after_seconds=60
    )
    fleet = Fleet(settings, clock, EventBus(), on_duplicate=found.append)
    first, second = Socket(), Socket()
    fleet.handle_message(first, message(UID, 0, host="vm-a"))
    fleet.handle_message(second, message(UID, 0, host="vm-b"))
    fleet.channel_closed(first)
    clock.advance(400)  # Error, then forgotten
    fleet.check_deadlines()
    assert fleet.get(AGENT_ID) is None
    reply = fleet.handle_message(second, message(UID, 1))  # still the old uid
    assert reply is not None and not reply.HasField("error_response")
    assert fleet.get(AGENT_ID) is not None  # the uid is free again: it is this agent's now
