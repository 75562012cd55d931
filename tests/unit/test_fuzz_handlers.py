"""Fuzzing (hypothesis): decoding and handling whatever an agent may send.

Messages are built from the AgentToServer descriptor itself, every field at random (nested
messages, maps, repeated fields, unknown enum values, bytes where text is expected), so new
fields of the protocol are fuzzed without touching this file. Each sequence goes through the
fleet over several channels, with closed connections and passing time; then every view of
the fleet (the CR status, the database rows, the REST views) must be buildable and valid
JSON. Raw bytes go through the WebSocket and HTTP decode paths.

Bounded here (FUZZ_EXAMPLES, default 150 per test); bench/fuzz_soak.py runs the same
properties for as long as asked.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opamp_operator.api.views import agent_status, agent_summary
from opamp_operator.config import FleetSettings
from opamp_operator.fleet.clock import FakeClock
from opamp_operator.fleet.events import EventBus, PhaseChanged, SessionClosed, SessionOpened
from opamp_operator.fleet.model import AgentPhase, Transport
from opamp_operator.fleet.registry import Fleet
from opamp_operator.kube.shapes.agentstatus import build_status
from opamp_operator.kube.shapes.naming import agent_labels, label_value
from opamp_operator.opamp.errors import FrameError, MalformedMessage
from opamp_operator.opamp.frames import decode_ws_frame, encode_ws_frame
from opamp_operator.opamp.generated import opamp_pb2
from opamp_operator.opamp.messages import (
    AgentToServer,
    ServerToAgent,
    parse_agent_to_server,
    parse_server_to_agent,
)
from opamp_operator.store.batch import plan_agent_states
from opamp_operator.store.rows import description_row, snapshot_row
from opamp_operator.transport.body import BadGzip, BodyTooLarge, gunzip_capped
from opamp_operator.transport.body import salvage_instance_uid as salvage

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FLEET = FleetSettings(
    heartbeat_interval_seconds=1, heartbeat_timeout_seconds=3, error_after_offline_seconds=6,
    max_agents=8, registrations_per_second=5, registration_burst=4,
)  # fmt: skip

# -- messages from the descriptor ---------------------------------------------------------------

_INTS = {
    FieldDescriptor.TYPE_INT32: st.integers(-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: st.integers(-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: st.integers(-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: st.integers(0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: st.integers(0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: st.integers(-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: st.integers(-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: st.integers(-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: st.integers(0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: st.integers(0, 2**64 - 1),
}
_TEXT = st.text(max_size=24) | st.sampled_from(["service.name", "host.name", "", "a" * 300])


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind in _INTS:
        return _INTS[kind]
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        values = st.floats(allow_nan=True, allow_infinity=True)
        return values if kind == FieldDescriptor.TYPE_DOUBLE else values.map(_as_float32)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_STRING:
        return _TEXT
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=24)
    if kind == FieldDescriptor.TYPE_ENUM:  # open enums: unknown numbers are legal on the wire
        assert field.enum_type is not None
        known = [value.number for value in field.enum_type.values]
        return st.sampled_from(known) | st.integers(-5, 2**31 - 1)
    raise AssertionError(f"unhandled field type {kind} of {field.full_name}")


def _as_float32(value: float) -> float:
    try:
        return float(struct.unpack("f", struct.pack("f", value))[0])
    except OverflowError:
        return float("inf") if value > 0 else float("-inf")


def messages(descriptor: Descriptor, depth: int = 4) -> st.SearchStrategy[Message]:
    """A strategy for any message of `descriptor`'s type, nested at most `depth` deep."""
    cls = _message_class(descriptor)

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        message = cls()
        for field in descriptor.fields:
            if not draw(st.booleans()):
                continue
            _fill(draw, message, field, depth)
        return message

    return build()


def _fill(draw: st.DrawFn, message: Message, field: FieldDescriptor, depth: int) -> None:
    nested = field.message_type
    is_message = field.type == FieldDescriptor.TYPE_MESSAGE
    if is_message and (depth <= 0 or nested is None):
        return
    container = getattr(message, field.name)
    if nested is not None and nested.GetOptions().map_entry:
        entry = nested.fields_by_name
        key_field, value_field = entry["key"], entry["value"]
        for _ in range(draw(st.integers(0, 3))):
            key = draw(_scalar(key_field))
            if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                value_type = value_field.message_type
                assert value_type is not None
                container[key].CopyFrom(draw(messages(value_type, depth - 1)))
            else:
                container[key] = draw(_scalar(value_field))
        return
    if field.is_repeated:
        for _ in range(draw(st.integers(0, 3))):
            if nested is not None:
                container.add().CopyFrom(draw(messages(nested, depth - 1)))
            else:
                container.append(draw(_scalar(field)))
        return
    if nested is not None:
        getattr(message, field.name).CopyFrom(draw(messages(nested, depth - 1)))
    else:
        setattr(message, field.name, draw(_scalar(field)))


def _message_class(descriptor: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)


_UIDS = [uuid.UUID(int=n).bytes for n in range(1, 11)]  # a small pool: sessions recur


@st.composite
def agent_messages(draw: st.DrawFn) -> AgentToServer:
    """Any AgentToServer, usually from one of a few agents (a valid 16-byte uid)."""
    message = draw(messages(AgentToServer.DESCRIPTOR))  # type: ignore[arg-type]
    assert isinstance(message, AgentToServer)
    uid = draw(st.sampled_from(_UIDS) | st.binary(max_size=20))
    message.instance_uid = uid
    return message


# -- the fleet, as the transports drive it ------------------------------------------------------


class FuzzChannel:
    def __init__(self, transport: Transport, number: int) -> None:
        self.transport = transport
        self.remote_addr = f"127.0.0.1:{40000 + number}"
        self.closes: list[str] = []

    def request_close(self, reason: str) -> None:
        self.closes.append(reason)


Step = tuple[str, int, AgentToServer | None, float]
steps = st.lists(
    st.tuples(
        st.sampled_from(["message", "message", "message", "close", "tick"]),
        st.integers(0, 5),  # which channel: 0-3 WebSockets, 4-5 HTTP requests
        agent_messages(),
        st.floats(0, 8),  # seconds passing for a tick
    ),
    min_size=1,
    max_size=12,
)


def check_reply(message: AgentToServer, reply: ServerToAgent | None, fleet: Fleet) -> None:
    """A reply the agent can use: its own uid, and it survives both encodings."""
    uid = bytes(message.instance_uid)
    if reply is None:  # only after an AgentDisconnect from a known agent
        assert message.HasField("agent_disconnect")
        assert len(uid) == 16 and fleet.get(str(uuid.UUID(bytes=uid))) is not None
        return
    assert bytes(reply.instance_uid) == uid
    if len(uid) != 16:
        assert reply.error_response.type == opamp_pb2.ServerErrorResponseType_BadRequest
    data = reply.SerializeToString()
    assert parse_server_to_agent(data) == reply
    assert decode_ws_frame(encode_ws_frame(data)) == data


def check_views(fleet: Fleet, now: datetime) -> None:
    """Every view of every agent can be built, and is JSON Kubernetes/PostgreSQL accept."""
    snapshots = fleet.snapshots()
    assert len(snapshots) <= FLEET.max_agents
    assert sum(fleet.counts().values()) == len(snapshots)
    for snapshot in snapshots:
        assert snapshot.phase in set(AgentPhase)
        status = build_status(snapshot, None, generation=1, replica="fuzz", now=now)
        json.dumps(status, allow_nan=False)  # the API server refuses NaN
        for key, value in agent_labels(snapshot).items():
            assert label_value(value) == value and len(key) <= 63 + 254
        description_row(snapshot)
        snapshot_row(snapshot)
        json.dumps(agent_summary(snapshot), allow_nan=False)
        json.dumps(agent_status(snapshot), allow_nan=False)


@FUZZ
@given(steps)
def test_any_sequence_of_messages_is_handled_and_every_view_is_valid(program: list[Step]) -> None:
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    bus = EventBus()
    store_events = bus.subscribe("store", 10_000)
    fleet = Fleet(FLEET, clock, bus)
    channels = [FuzzChannel(Transport.WEBSOCKET, n) for n in range(4)]
    for kind, number, message, seconds in program:
        if kind == "tick":
            clock.advance(seconds)
            fleet.check_deadlines()
        elif kind == "close" and number < len(channels):
            fleet.channel_closed(channels[number])
            channels[number] = FuzzChannel(Transport.WEBSOCKET, number + 10)
        elif message is not None:
            channel = channels[number] if number < 4 else FuzzChannel(Transport.HTTP, number)
            check_reply(message, fleet.handle_message(channel, message), fleet)
    check_views(fleet, clock.now())
    events = []
    while (event := store_events.get_nowait()) is not None:
        events.append(event)
    history = [e for e in events if isinstance(e, SessionOpened | SessionClosed | PhaseChanged)]
    if history:
        plan_agent_states(history, lambda _: None)
    fleet.shutdown()
    assert all(not s.connected for s in fleet.snapshots())


# -- the decode paths ---------------------------------------------------------------------------


def decodes_or_refuses(decode: Callable[[bytes], object], data: bytes) -> None:
    # The refusals the transports turn into a close code or an HTTP status; anything else
    # raised here would be a crash of the connection handler.
    with contextlib.suppress(FrameError, MalformedMessage, BadGzip, BodyTooLarge):
        decode(data)


@FUZZ
@given(st.binary(max_size=512))
def test_websocket_frames_decode_or_are_refused(frame: bytes) -> None:
    decodes_or_refuses(lambda data: parse_agent_to_server(decode_ws_frame(data)), frame)
    decodes_or_refuses(lambda data: parse_agent_to_server(decode_ws_frame(data)), b"\x00" + frame)


@FUZZ
@given(st.binary(max_size=512))
def test_http_bodies_decode_or_are_refused(body: bytes) -> None:
    decodes_or_refuses(lambda data: parse_agent_to_server(gunzip_capped(data, 4096)), body)
    decodes_or_refuses(parse_agent_to_server, body)
    uid = salvage(body)
    assert uid is None or isinstance(uid, bytes)


@FUZZ
@given(agent_messages(), st.integers(0, 64), st.binary(max_size=8))
def test_real_messages_cut_or_spliced_decode_or_are_refused(
    message: AgentToServer, cut: int, junk: bytes
) -> None:
    data = message.SerializeToString()
    assert parse_agent_to_server(decode_ws_frame(encode_ws_frame(data))) == message
    for mangled in (data[: len(data) - cut], data + junk, junk + data):
        decodes_or_refuses(parse_agent_to_server, mangled)
        decodes_or_refuses(lambda d: parse_agent_to_server(decode_ws_frame(d)), b"\x00" + mangled)


def test_the_rejection_hook_counts_each_refused_registration() -> None:
    refused: list[str] = []
    settings_ = FleetSettings(max_agents=2, registrations_per_second=1, registration_burst=1)
    fleet = Fleet(settings_, FakeClock(), EventBus(), on_rejected=refused.append)
    channel = FuzzChannel(Transport.HTTP, 0)
    for n in range(3):
        fleet.handle_message(channel, AgentToServer(instance_uid=_UIDS[n]))
    assert refused == ["rate_limit", "rate_limit"]
    assert fleet.rejected_registrations == 2


def test_an_unknown_remote_config_status_is_shown_not_fatal() -> None:
    """Found by the fuzzer: an enum value we do not know used to fail the whole message."""
    fleet = Fleet(FLEET, FakeClock(), EventBus())
    message = AgentToServer(instance_uid=_UIDS[0])
    message.remote_config_status.status = 99  # type: ignore[assignment]
    reply = fleet.handle_message(FuzzChannel(Transport.WEBSOCKET, 0), message)
    assert reply is not None and not reply.HasField("error_response")
    snapshot = fleet.get(str(uuid.UUID(bytes=_UIDS[0])))
    assert snapshot is not None and snapshot.remote_config_status is not None
    assert snapshot.remote_config_status["status"] == "UNKNOWN_99"
