"""Remote config in the fleet: hashing, delivery over push and reply, progress."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import pytest

from opamp_operator.config import FleetSettings
from opamp_operator.fleet.clock import FakeClock
from opamp_operator.fleet.events import AgentChanged, EventBus, Subscription
from opamp_operator.fleet.model import Transport
from opamp_operator.fleet.registry import Fleet
from opamp_operator.fleet.remoteconfig import (
    EFFECTIVE_HASH_CHARS,
    ConfigFile,
    ConfigState,
    DesiredConfig,
)
from opamp_operator.fleet.reports import effective_config_hash
from opamp_operator.opamp.generated import anyvalue_pb2, opamp_pb2
from opamp_operator.opamp.messages import ServerToAgent

ACCEPTS = (
    opamp_pb2.AgentCapabilities_ReportsStatus
    | opamp_pb2.AgentCapabilities_AcceptsRemoteConfig
    | opamp_pb2.AgentCapabilities_ReportsRemoteConfig
    | opamp_pb2.AgentCapabilities_ReportsEffectiveConfig
)
STATUS_ONLY = opamp_pb2.AgentCapabilities_ReportsStatus


@dataclass(eq=False)
class PollChannel:
    """An HTTP-like channel: nothing can be pushed."""

    transport: Transport = Transport.HTTP
    remote_addr: str = "127.0.0.1:5555"

    def request_close(self, reason: str) -> None:
        pass


@dataclass(eq=False)
class PushingChannel:
    """A WebSocket-like channel that records what the fleet pushes."""

    transport: Transport = Transport.WEBSOCKET
    remote_addr: str = "127.0.0.1:6666"
    pushed: list[ServerToAgent] = field(default_factory=list)
    accept: bool = True

    def request_close(self, reason: str) -> None:
        pass

    def offer(self, message: ServerToAgent) -> bool:
        if self.accept:
            self.pushed.append(message)
        return self.accept


def desired(body: str = "receivers: {}\n", source: str = "test") -> DesiredConfig:
    return DesiredConfig.of({"collector.yaml": ConfigFile(body.encode(), "text/yaml")}, source)


class Agent:
    """Builds the messages of one agent, with consecutive sequence numbers."""

    def __init__(self, capabilities: int = ACCEPTS) -> None:
        self.uid = uuid.uuid4().bytes
        self.id = str(uuid.UUID(bytes=self.uid))
        self.capabilities = capabilities
        self.seq = 0

    def message(
        self,
        *,
        describe: bool = True,
        status: tuple[bytes, int, str] | None = None,
        effective: DesiredConfig | None = None,
    ) -> opamp_pb2.AgentToServer:
        msg = opamp_pb2.AgentToServer(
            instance_uid=self.uid, sequence_num=self.seq, capabilities=self.capabilities
        )
        self.seq += 1
        if describe:
            msg.agent_description.identifying_attributes.append(
                anyvalue_pb2.KeyValue(
                    key="service.name", value=anyvalue_pb2.AnyValue(string_value="svc")
                )
            )
        if status is not None:
            config_hash, state, error = status
            msg.remote_config_status.last_remote_config_hash = config_hash
            msg.remote_config_status.status = state  # type: ignore[assignment]
            msg.remote_config_status.error_message = error
        if effective is not None:
            for name, file in effective.files.items():
                entry = msg.effective_config.config_map.config_map[name]
                entry.body = file.body
                entry.content_type = file.content_type
        return msg


APPLIED = opamp_pb2.RemoteConfigStatuses_APPLIED
FAILED = opamp_pb2.RemoteConfigStatuses_FAILED


@pytest.fixture
def bus() -> EventBus:
    return EventBus()


@pytest.fixture
def events(bus: EventBus) -> Subscription:
    return bus.subscribe("test")


@pytest.fixture
def fleet(bus: EventBus) -> Fleet:
    return Fleet(FleetSettings(), FakeClock(), bus)


def changed_fields(subscription: Subscription) -> set[str]:
    fields: set[str] = set()
    while (event := subscription.get_nowait()) is not None:
        if isinstance(event, AgentChanged):
            fields |= event.fields
    return fields


# -- hashing ------------------------------------------------------------------------------


def test_hash_is_deterministic_and_covers_names_bodies_and_content_types() -> None:
    a = DesiredConfig.of({"a": ConfigFile(b"1", "text/yaml"), "b": ConfigFile(b"2")})
    b = DesiredConfig.of({"b": ConfigFile(b"2"), "a": ConfigFile(b"1", "text/yaml")}, "other")
    assert a.hash == b.hash and len(a.hash) == 32
    assert (
        DesiredConfig.of({"a": ConfigFile(b"1", "text/json"), "b": ConfigFile(b"2")}).hash != a.hash
    )
    assert (
        DesiredConfig.of({"a": ConfigFile(b"1", "text/yaml"), "b": ConfigFile(b"3")}).hash != a.hash
    )
    assert (
        DesiredConfig.of({"c": ConfigFile(b"1", "text/yaml"), "b": ConfigFile(b"2")}).hash != a.hash
    )


def test_effective_hash_of_the_same_files_matches_what_agents_report() -> None:
    config = desired("exporters: {}\n")
    reported = Agent().message(effective=config).effective_config
    assert effective_config_hash(reported) == config.hash_hex[:EFFECTIVE_HASH_CHARS]


def test_to_proto_carries_every_file_and_the_hash() -> None:
    config = DesiredConfig.of({"": ConfigFile(b"x", "text/plain"), "b": ConfigFile(b"y")})
    proto = config.to_proto()
    assert proto.config_hash == config.hash
    assert {k: (v.body, v.content_type) for k, v in proto.config.config_map.items()} == {
        "": (b"x", "text/plain"),
        "b": (b"y", ""),
    }


# -- delivery -----------------------------------------------------------------------------


def test_config_set_before_the_agent_connects_goes_in_its_first_reply(fleet: Fleet) -> None:
    agent, config = Agent(), desired()
    fleet.set_desired_config(agent.id, config)
    assert fleet.get(agent.id) is None
    reply = fleet.handle_message(PollChannel(), agent.message())
    assert reply is not None and reply.remote_config.config_hash == config.hash
    assert reply.remote_config.config.config_map["collector.yaml"].body == b"receivers: {}\n"
    snapshot = fleet.get(agent.id)
    assert snapshot is not None
    assert snapshot.remote_config_state is ConfigState.APPLYING
    assert snapshot.desired_config_hash == config.hash_hex
    assert snapshot.desired_config_source == "test"
    # Sent once per session: the next poll (still reporting nothing) does not repeat it.
    again = fleet.handle_message(PollChannel(), agent.message(describe=False))
    assert again is not None and not again.HasField("remote_config")


def test_applied_report_completes_and_failed_report_carries_the_message(
    fleet: Fleet, events: Subscription
) -> None:
    agent, config = Agent(), desired()
    fleet.set_desired_config(agent.id, config)
    fleet.handle_message(PollChannel(), agent.message())
    changed_fields(events)
    fleet.handle_message(
        PollChannel(), agent.message(status=(config.hash, APPLIED, ""), effective=config)
    )
    snapshot = fleet.get(agent.id)
    assert snapshot is not None and snapshot.remote_config_state is ConfigState.APPLIED
    assert "remote_config_status" in changed_fields(events)

    bad = desired("REJECT me")
    fleet.set_desired_config(agent.id, bad)
    assert "desired_config" in changed_fields(events)
    reply = fleet.handle_message(PollChannel(), agent.message(describe=False))
    assert reply is not None and reply.remote_config.config_hash == bad.hash
    fleet.handle_message(PollChannel(), agent.message(status=(bad.hash, FAILED, "no way")))
    snapshot = fleet.get(agent.id)
    assert snapshot is not None and snapshot.remote_config_state is ConfigState.FAILED
    assert snapshot.remote_config_message == "no way"


def test_websocket_agent_gets_a_new_config_pushed_once(fleet: Fleet) -> None:
    agent, channel = Agent(), PushingChannel()
    fleet.handle_message(channel, agent.message())
    config = desired()
    fleet.set_desired_config(agent.id, config)
    fleet.set_desired_config(agent.id, desired(source="elsewhere"))  # same files: no resend
    assert [m.remote_config.config_hash for m in channel.pushed] == [config.hash]
    assert channel.pushed[0].instance_uid == agent.uid
    reply = fleet.handle_message(channel, agent.message(describe=False))
    assert reply is not None and not reply.HasField("remote_config")
    snapshot = fleet.get(agent.id)
    assert snapshot is not None and snapshot.desired_config_source == "elsewhere"


def test_a_closing_websocket_that_refuses_the_push_gets_it_in_the_next_reply(
    fleet: Fleet,
) -> None:
    agent, channel = Agent(), PushingChannel(accept=False)
    fleet.handle_message(channel, agent.message())
    config = desired()
    fleet.set_desired_config(agent.id, config)
    assert channel.pushed == []
    reply = fleet.handle_message(channel, agent.message(describe=False))
    assert reply is not None and reply.remote_config.config_hash == config.hash


def test_agent_without_the_capability_is_never_sent_config(fleet: Fleet) -> None:
    agent, channel = Agent(STATUS_ONLY), PushingChannel()
    fleet.set_desired_config(agent.id, desired())
    reply = fleet.handle_message(channel, agent.message())
    assert reply is not None and not reply.HasField("remote_config")
    assert channel.pushed == []
    snapshot = fleet.get(agent.id)
    assert snapshot is not None and snapshot.remote_config_state is ConfigState.UNSUPPORTED


def test_reconnect_resends_only_when_the_reported_hash_differs(fleet: Fleet) -> None:
    agent, old, new = Agent(), desired("old"), desired("new")
    fleet.set_desired_config(agent.id, new)
    first = PushingChannel()
    reply = fleet.handle_message(first, agent.message(status=(old.hash, APPLIED, "")))
    assert reply is not None and reply.remote_config.config_hash == new.hash
    fleet.channel_closed(first)
    # A new session reporting the old hash again: sent again.
    second = PushingChannel()
    reply = fleet.handle_message(second, agent.message(status=(old.hash, APPLIED, "")))
    assert reply is not None and reply.remote_config.config_hash == new.hash
    fleet.channel_closed(second)
    # A new session reporting the desired hash: nothing to send.
    third = PushingChannel()
    reply = fleet.handle_message(third, agent.message(status=(new.hash, APPLIED, "")))
    assert reply is not None and not reply.HasField("remote_config")


def test_forgetting_the_config_sends_nothing_and_stops_tracking(
    fleet: Fleet, events: Subscription
) -> None:
    agent, channel = Agent(), PushingChannel()
    fleet.set_desired_config(agent.id, desired())
    fleet.handle_message(channel, agent.message())
    changed_fields(events)
    fleet.set_desired_config(agent.id, None)
    assert "desired_config" in changed_fields(events)
    assert channel.pushed == []
    snapshot = fleet.get(agent.id)
    assert snapshot is not None and snapshot.remote_config_state is ConfigState.NONE
    assert snapshot.desired_config_hash is None


def test_full_state_requested_waits_for_the_full_report_before_sending(bus: EventBus) -> None:
    config = desired()
    agent = Agent()
    agent.seq = 40  # an agent that was talking to a previous operator process
    fleet = Fleet(FleetSettings(), FakeClock(), bus)
    fleet.set_desired_config(agent.id, config)
    reply = fleet.handle_message(PollChannel(), agent.message(describe=False))
    assert reply is not None and reply.flags & opamp_pb2.ServerToAgentFlags_ReportFullState
    assert not reply.HasField("remote_config")
    # The full report says it runs this config already: nothing to send.
    full = agent.message(status=(config.hash, APPLIED, ""), effective=config)
    reply = fleet.handle_message(PollChannel(), full)
    assert reply is not None and not reply.HasField("remote_config")
    snapshot = fleet.get(agent.id)
    assert snapshot is not None and snapshot.remote_config_state is ConfigState.APPLIED


# -- effective config -----------------------------------------------------------------------


def test_applied_follows_the_remote_config_status_whatever_effective_config_is_reported(
    fleet: Fleet,
) -> None:
    """The Collector's Supervisor reports its merged config: never the pushed hash."""
    agent, config = Agent(), desired()
    fleet.set_desired_config(agent.id, config)
    fleet.handle_message(PollChannel(), agent.message())
    merged = desired("extensions: {opamp: {}}\n" + "exporters: {}\n")
    fleet.handle_message(
        PollChannel(), agent.message(status=(config.hash, APPLIED, ""), effective=merged)
    )
    snapshot = fleet.get(agent.id)
    assert snapshot is not None and snapshot.remote_config_state is ConfigState.APPLIED
    # A restart of the same kind: another merged config, the same status.
    again = desired("extensions: {opamp: {port: 4}}\n")
    fleet.handle_message(PollChannel(), agent.message(describe=False, effective=again))
    snapshot = fleet.get(agent.id)
    assert snapshot is not None and snapshot.remote_config_state is ConfigState.APPLIED


def test_pending_while_offline(fleet: Fleet) -> None:
    agent, channel = Agent(), PushingChannel()
    fleet.handle_message(channel, agent.message())
    fleet.channel_closed(channel)
    fleet.set_desired_config(agent.id, desired())
    snapshot = fleet.get(agent.id)
    assert snapshot is not None and snapshot.remote_config_state is ConfigState.PENDING
    assert channel.pushed == []


# -- self-rollback (issue 18) ---------------------------------------------------------------


APPLYING = opamp_pb2.RemoteConfigStatuses_APPLYING


def test_an_agent_that_rolled_itself_back_is_not_offered_the_config_again(
    fleet: Fleet, events: Subscription
) -> None:
    """APPLIED(A) -> APPLYING(B) -> FAILED(B) -> APPLIED(A), as the Collector's Supervisor."""
    agent, old, new = Agent(), desired("a: 1\n"), desired("b: 2\n")
    fleet.set_desired_config(agent.id, new)
    reply = fleet.handle_message(PollChannel(), agent.message(status=(old.hash, APPLIED, "")))
    assert reply is not None and reply.remote_config.config_hash == new.hash
    fleet.handle_message(PollChannel(), agent.message(status=(new.hash, APPLYING, "")))
    fleet.handle_message(PollChannel(), agent.message(status=(new.hash, FAILED, "bad port")))
    changed_fields(events)
    fleet.handle_message(PollChannel(), agent.message(status=(old.hash, APPLIED, "")))
    snapshot = fleet.get(agent.id)
    assert snapshot is not None and snapshot.remote_config_state is ConfigState.ROLLED_BACK
    assert snapshot.remote_config_message.endswith("bad port")
    assert "remote_config" in changed_fields(events)
    # A new session (reconnect) reports A again: the server does not offer B again.
    fleet.channel_closed(PollChannel())
    again = fleet.handle_message(PushingChannel(), agent.message(status=(old.hash, APPLIED, "")))
    assert again is not None and not again.HasField("remote_config")
    assert fleet.rolled_back(agent.id) == (new.hash, "bad port")
    # Another config (a new generation) may be offered again.
    newer = desired("c: 3\n")
    fleet.set_desired_config(agent.id, newer)
    assert fleet.rolled_back(agent.id) is None
    reply = fleet.handle_message(PollChannel(), agent.message(status=(old.hash, APPLIED, "")))
    assert reply is not None and reply.remote_config.config_hash == newer.hash


def test_failed_then_still_failed_is_no_rollback(fleet: Fleet) -> None:
    agent, new = Agent(), desired("b: 2\n")
    fleet.set_desired_config(agent.id, new)
    fleet.handle_message(PollChannel(), agent.message())
    fleet.handle_message(PollChannel(), agent.message(status=(new.hash, FAILED, "bad")))
    snapshot = fleet.get(agent.id)
    assert snapshot is not None and snapshot.remote_config_state is ConfigState.FAILED


def test_a_rollback_noted_from_the_cr_survives_a_restart(fleet: Fleet) -> None:
    agent, old, new = Agent(), desired("a: 1\n"), desired("b: 2\n")
    fleet.note_rolled_back(agent.id, new.hash, "bad port")
    fleet.set_desired_config(agent.id, new)
    reply = fleet.handle_message(PollChannel(), agent.message(status=(old.hash, APPLIED, "")))
    assert reply is not None and not reply.HasField("remote_config")
    snapshot = fleet.get(agent.id)
    assert snapshot is not None and snapshot.remote_config_state is ConfigState.ROLLED_BACK
