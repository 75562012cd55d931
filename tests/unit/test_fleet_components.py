"""AvailableComponents in the fleet (pure): the hash first, the full map on request, bounds."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import pytest

from opamp_operator.config import FleetSettings
from opamp_operator.fleet import components
from opamp_operator.fleet.clock import FakeClock
from opamp_operator.fleet.events import AgentChanged, EventBus
from opamp_operator.fleet.model import Transport
from opamp_operator.fleet.registry import Fleet
from opamp_operator.opamp.generated import anyvalue_pb2, opamp_pb2
from opamp_operator.opamp.messages import ServerToAgent

REPORTS = components.REPORTS_AVAILABLE_COMPONENTS
ASK = components.REPORT_AVAILABLE_COMPONENTS
UID = uuid.uuid4().bytes
AGENT_ID = str(uuid.UUID(bytes=UID))
COLLECTOR = {"receivers": ["otlp", "prometheus"], "processors": ["batch"], "exporters": ["debug"]}


@dataclass(eq=False)
class Socket:
    transport: Transport = Transport.WEBSOCKET
    remote_addr: str = "127.0.0.1:5555"
    closed: list[str] = field(default_factory=list)

    def request_close(self, reason: str) -> None:
        self.closed.append(reason)


@dataclass
class Hooks:
    bad: list[tuple[str, str]] = field(default_factory=list)
    asked: int = 0

    def on_bad(self, transport: str, reason: str) -> None:
        self.bad.append((transport, reason))

    def on_asked(self) -> None:
        self.asked += 1


@pytest.fixture
def hooks() -> Hooks:
    return Hooks()


@pytest.fixture
def bus() -> EventBus:
    return EventBus()


@pytest.fixture
def fleet(hooks: Hooks, bus: EventBus) -> Fleet:
    settings = FleetSettings(heartbeat_interval_seconds=10, heartbeat_timeout_seconds=30)
    bad, asked = hooks.on_bad, hooks.on_asked
    return Fleet(settings, FakeClock(), bus, on_bad_input=bad, on_components_requested=asked)


def message(
    seq: int,
    digest: bytes | None = b"h1",
    kinds: dict[str, list[str]] | None = None,
    *,
    caps: int = REPORTS,
) -> opamp_pb2.AgentToServer:
    msg = opamp_pb2.AgentToServer(instance_uid=UID, sequence_num=seq, capabilities=1 | caps)
    if seq == 0:
        name = anyvalue_pb2.AnyValue(string_value="otelcol")
        msg.agent_description.identifying_attributes.append(
            anyvalue_pb2.KeyValue(key="service.name", value=name)
        )
    if digest is not None:
        msg.available_components.hash = digest
    for kind, names in (kinds or {}).items():
        details = msg.available_components.components[kind]
        for item in names:
            sub = details.sub_component_map[item]
            version = anyvalue_pb2.AnyValue(string_value="0.120.0")
            sub.metadata.append(anyvalue_pb2.KeyValue(key="version", value=version))
    return msg


def send(fleet: Fleet, socket: Socket, msg: opamp_pb2.AgentToServer) -> ServerToAgent:
    reply = fleet.handle_message(socket, msg)
    assert reply is not None
    return reply


def held(fleet: Fleet) -> components.AvailableComponents | None:
    snapshot = fleet.get(AGENT_ID)
    assert snapshot is not None
    return snapshot.available_components


def test_hash_only_is_asked_for_once_then_kept_in_full(fleet: Fleet, hooks: Hooks) -> None:
    socket = Socket()
    assert send(fleet, socket, message(0)).flags & ASK
    first = held(fleet)
    assert first is not None and first.hash_hex == b"h1".hex() and not first.complete
    assert not send(fleet, socket, message(1, digest=None)).flags & ASK  # asked already
    assert not send(fleet, socket, message(2)).flags & ASK  # same hash: once per hash
    assert not send(fleet, socket, message(3, kinds=COLLECTOR)).flags & ASK
    full = held(fleet)
    assert full is not None and full.complete
    assert full.summary() == {
        "hash": b"h1".hex(),
        "complete": True,
        "counts": {"exporters": 1, "processors": 1, "receivers": 2},
        "total": 4,
    }
    receivers = full.components_json()["receivers"]["subComponents"]
    assert receivers["otlp"] == {"metadata": {"version": "0.120.0"}, "subComponents": {}}
    assert hooks.asked == 1 and hooks.bad == []


def test_same_hash_in_a_new_session_is_not_asked_for_again(fleet: Fleet, bus: EventBus) -> None:
    events = bus.subscribe("test")
    first = Socket()
    send(fleet, first, message(0))
    send(fleet, first, message(1, kinds=COLLECTOR))
    fleet.channel_closed(first)
    while events.get_nowait() is not None:
        pass
    second = Socket()
    assert not send(fleet, second, message(0)).flags & ASK  # the full set is held
    changed = []
    while (event := events.get_nowait()) is not None:
        if isinstance(event, AgentChanged):
            changed.append(event.fields)
    assert all("available_components" not in fields for fields in changed)
    assert (held(fleet) or components.AvailableComponents(b"")).complete


def test_new_hash_drops_the_stale_map_and_is_asked_for(fleet: Fleet, hooks: Hooks) -> None:
    socket = Socket()
    send(fleet, socket, message(0, kinds=COLLECTOR))  # full at once: nothing to ask
    assert hooks.asked == 0
    assert send(fleet, socket, message(1, digest=b"h2")).flags & ASK
    now = held(fleet)
    assert now is not None and now.hash == b"h2" and not now.complete and now.total == 0


def test_not_asked_without_the_capability(fleet: Fleet, hooks: Hooks) -> None:
    assert not send(fleet, Socket(), message(0, caps=0)).flags & ASK
    assert hooks.asked == 0


def test_too_large_a_map_is_refused_counted_and_not_asked_again(fleet: Fleet, hooks: Hooks) -> None:
    socket = Socket()
    send(fleet, socket, message(0))
    many = {"receivers": [f"r{i:05d}" for i in range(components.MAX_COMPONENTS + 1)]}
    reply = send(fleet, socket, message(1, kinds=many))
    assert not reply.flags & ASK and not reply.HasField("error_response")
    assert hooks.bad == [("websocket", components.TOO_LARGE)]
    kept = held(fleet)
    assert kept is not None and kept.hash == b"h1" and not kept.complete


def test_a_refused_map_under_a_new_hash_is_published_as_a_change(
    fleet: Fleet, bus: EventBus
) -> None:
    """The hash of a map too large to keep replaces the held one: the CR must show it."""
    events = bus.subscribe("test")
    socket = Socket()
    send(fleet, socket, message(0, kinds=COLLECTOR))
    while events.get_nowait() is not None:
        pass
    many = {"receivers": [f"r{i:05d}" for i in range(components.MAX_COMPONENTS + 1)]}
    send(fleet, socket, message(1, digest=b"h2", kinds=many))
    changed = []
    while (event := events.get_nowait()) is not None:
        if isinstance(event, AgentChanged):
            changed.append(event.fields)
    assert any("available_components" in fields for fields in changed)
    kept = held(fleet)
    assert kept is not None and kept.hash == b"h2" and not kept.complete


def test_invalid_hash_is_refused_and_the_rest_of_the_message_applied(
    fleet: Fleet, hooks: Hooks
) -> None:
    send(fleet, Socket(), message(0, digest=b"", kinds=COLLECTOR))
    assert hooks.bad == [("websocket", components.INVALID)]
    snapshot = fleet.get(AGENT_ID)
    assert snapshot is not None and snapshot.service_name == "otelcol"
    assert snapshot.available_components is None


def test_summary_is_bounded_in_kinds_and_names() -> None:
    kinds = {f"{i:02d}{'k' * 100}": ["a"] for i in range(40)}
    report = message(0, kinds=kinds).available_components
    read = components.read_report(report)
    assert isinstance(read, components.AvailableComponents)
    summary = read.summary()
    assert len(summary["counts"]) == components.MAX_KINDS
    assert all(len(kind) <= components.MAX_KIND_CHARS for kind in summary["counts"])
    assert summary["total"] == 40  # the total still counts every kind
