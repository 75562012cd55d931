"""The transport-neutral agent rules: what to send next and what a reply changes."""

from __future__ import annotations

import random
import sys

import pytest

from opamp_operator.opamp.generated import opamp_pb2
from opamp_operator.opamp.generated.opamp_pb2 import (
    AgentConfigFile,
    AgentConfigMap,
    AgentRemoteConfig,
    AgentToServer,
    ConnectionSettingsOffers,
    OpAMPConnectionSettings,
    ServerToAgent,
)
from opamp_operator.opamp.messages import error_response, parse_agent_to_server
from opamp_operator.simulator import SimulationConfig
from opamp_operator.simulator.agent import AgentLogic, AgentState, Mode
from opamp_operator.simulator.stats import Stats

FULL_STATE = int(opamp_pb2.ServerToAgentFlags_ReportFullState)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make_logic(**overrides: object) -> tuple[AgentLogic, Clock]:
    clock = Clock()
    config = SimulationConfig(**{"url": "ws://127.0.0.1:1/v1/opamp", "agents": 4, **overrides})  # type: ignore[arg-type]
    logic = AgentLogic(config, Stats(config.agents), random.Random(1), clock, lambda: 1.76e9)
    return logic, clock


def compose(logic: AgentLogic, agent: AgentState, **kwargs: bool) -> AgentToServer:
    return parse_agent_to_server(logic.compose(agent, **kwargs))


def reply(logic: AgentLogic, agent: AgentState, message: ServerToAgent) -> None:
    logic.received(agent, message.SerializeToString())


def test_first_message_is_full_state_then_heartbeats_with_growing_sequence() -> None:
    logic, _ = make_logic()
    agent = logic.new_agent(2)
    first = compose(logic, agent)
    assert first.HasField("agent_description")
    assert first.sequence_num == 1
    assert first.instance_uid == agent.uid
    for seq in (2, 3):
        beat = compose(logic, agent)
        assert beat.sequence_num == seq
        assert not beat.HasField("agent_description")


def test_report_full_state_is_honoured_and_counted() -> None:
    logic, _ = make_logic()
    agent = logic.new_agent(0)
    compose(logic, agent)
    reply(logic, agent, ServerToAgent(flags=FULL_STATE))
    assert logic.stats.full_state_requests == 1
    assert logic.wants_follow_up(agent)
    again = compose(logic, agent, follow_up=True)
    assert again.HasField("agent_description")
    # A server that asks on every reply does not get an endless ping-pong.
    reply(logic, agent, ServerToAgent(flags=FULL_STATE))
    assert not logic.wants_follow_up(agent)
    assert compose(logic, agent).HasField("agent_description")  # at the next heartbeat


def test_reply_latency_connection_and_counts() -> None:
    logic, clock = make_logic()
    agent = logic.new_agent(0)
    logic.compose(agent)
    logic.sent(agent, clock.t)
    clock.t += 0.004
    reply(logic, agent, ServerToAgent())
    stats = logic.stats
    assert (stats.messages_sent, stats.replies_received, stats.connected) == (1, 1, 1)
    assert stats.latency.max == pytest.approx(0.004)
    assert agent.connected and agent.sent_at == 0.0
    logic.lost(agent)
    assert stats.connected == 0 and not agent.connected
    assert agent.need_full_state


def test_the_servers_heartbeat_offer_is_used_unless_overridden() -> None:
    offer = ServerToAgent(
        connection_settings=ConnectionSettingsOffers(
            opamp=OpAMPConnectionSettings(heartbeat_interval_seconds=7)
        )
    )
    logic, clock = make_logic()
    agent = logic.new_agent(0)
    assert agent.heartbeat == 30.0
    agent.last_sent = clock.t
    reply(logic, agent, offer)
    assert agent.heartbeat == 7.0
    assert logic.heartbeat_due(agent) == clock.t + 7.0  # rescheduled on the new interval

    fixed, _ = make_logic(heartbeat=0.5)
    pinned = fixed.new_agent(0)
    reply(fixed, pinned, offer)
    assert pinned.heartbeat == 0.5


def test_heartbeats_off_over_websocket_but_http_still_polls() -> None:
    logic, _ = make_logic()
    agent = logic.new_agent(0)
    reply(
        logic,
        agent,
        ServerToAgent(
            connection_settings=ConnectionSettingsOffers(opamp=OpAMPConnectionSettings())
        ),
    )
    assert logic.heartbeat_due(agent) is None
    assert logic.interval(agent) == 30.0


def test_unavailable_holds_the_agent_back_for_the_retry_time() -> None:
    logic, clock = make_logic()
    agent = logic.new_agent(0)
    message = error_response(
        agent.uid, opamp_pb2.ServerErrorResponseType_Unavailable, "busy", retry_after_ns=3 * 10**9
    )
    logic.received(agent, message.SerializeToString())
    assert agent.not_before == clock.t + 3.0
    assert logic.stats.errors == {"server_unavailable": 1}
    assert not agent.connected  # an Unavailable reply does not count as connected


def test_unavailable_without_retry_info_backs_off_exponentially() -> None:
    logic, clock = make_logic(backoff_initial=1.0, backoff_max=60.0)
    agent = logic.new_agent(0)
    busy = error_response(agent.uid, opamp_pb2.ServerErrorResponseType_Unavailable, "busy")
    delays = []
    for _ in range(4):
        agent.not_before = 0.0
        logic.received(agent, busy.SerializeToString())
        delays.append(agent.not_before - clock.t)
    ceilings = [1, 2, 4, 8]
    assert all(c / 2 <= d <= c for c, d in zip(ceilings, delays, strict=True))
    assert logic.stats.errors == {"server_unavailable": 4}


def test_undecodable_reply_is_counted_not_fatal() -> None:
    logic, _ = make_logic()
    agent = logic.new_agent(0)
    assert logic.received(agent, b"\xff\xff\xff") is None
    assert logic.stats.errors == {"malformed_message": 1}
    assert agent.not_before == 0.0  # no backoff for one bad message


def test_remote_config_is_applied_reported_and_shared() -> None:
    logic, _ = make_logic()
    config = AgentConfigMap(config_map={"": AgentConfigFile(body=b"exporters: {}")})
    offer = ServerToAgent(remote_config=AgentRemoteConfig(config=config, config_hash=b"h1"))
    agents = [logic.new_agent(i) for i in range(3)]
    for agent in agents:
        compose(logic, agent)
        reply(logic, agent, offer)
        assert logic.wants_follow_up(agent)
        status = compose(logic, agent, follow_up=True)
        assert status.remote_config_status.status == opamp_pb2.RemoteConfigStatuses_APPLIED
        assert status.remote_config_status.last_remote_config_hash == b"h1"
        assert status.effective_config.config_map == config
        assert not status.HasField("agent_description")
    assert agents[0].config is agents[1].config is agents[2].config  # one copy for the fleet


def test_new_instance_uid_is_adopted_with_a_full_report() -> None:
    logic, _ = make_logic()
    agent = logic.new_agent(0)
    compose(logic, agent)
    message = ServerToAgent()
    message.agent_identification.new_instance_uid = b"\x07" * 16
    reply(logic, agent, message)
    follow = compose(logic, agent, follow_up=True)
    assert follow.instance_uid == b"\x07" * 16
    assert follow.HasField("agent_description")


def test_churn_and_silence_change_mode_and_times() -> None:
    logic, clock = make_logic(churn_delay=2.0)
    agent = logic.new_agent(0)
    logic.churn(agent)
    assert agent.mode is Mode.CHURNING
    assert clock.t + 1.0 <= agent.not_before <= clock.t + 3.0
    assert logic.stats.churn_disconnects == 1
    other = logic.new_agent(1)
    clock.t += 5
    logic.silence(other)
    assert other.mode is Mode.SILENT
    assert other.silent_at == clock.t


def test_disconnect_consumes_a_sequence_number_and_expects_no_reply() -> None:
    logic, clock = make_logic()
    agent = logic.new_agent(0)
    logic.compose(agent)
    goodbye = parse_agent_to_server(logic.compose_disconnect(agent))
    logic.sent(agent, clock.t, expect_reply=False)
    assert goodbye.HasField("agent_disconnect")
    assert goodbye.sequence_num == 2
    assert agent.sent_at == 0.0


def test_a_heartbeat_a_quarter_interval_late_counts_as_late() -> None:
    logic, clock = make_logic(heartbeat=1.0)
    agent = logic.new_agent(0)
    logic.heartbeat_fired(agent, clock.t - 0.2)
    assert logic.stats.heartbeats_late == 0
    logic.heartbeat_fired(agent, clock.t - 0.3)
    assert logic.stats.heartbeats_late == 1


def test_heartbeats_keep_their_phase_after_a_stall() -> None:
    logic, clock = make_logic(heartbeat=1.0)
    agent = logic.new_agent(0)
    agent.last_sent = clock.t
    logic.start_beating(agent)
    due = logic.heartbeat_due(agent)
    assert due == clock.t + 1.0
    clock.t = due + 0.4  # the loop woke up late
    logic.heartbeat_fired(agent, due)
    assert logic.heartbeat_due(agent) == due + 1.0  # not now + 1: no drift, no bunching
    late = due + 1.0
    clock.t = late + 2.5  # more than an interval behind: start afresh from now
    logic.heartbeat_fired(agent, late)
    assert logic.heartbeat_due(agent) == clock.t + 1.0


def test_per_agent_state_is_small() -> None:
    logic, _ = make_logic()
    agent = logic.new_agent(0)
    assert not hasattr(agent, "__dict__")  # slots: no per-instance dict
    assert sys.getsizeof(agent) < 250
