"""Issue 16 against our listener and a real Fleet, with real OpAMP clients.

Liveness by transport and capability (the opamp-go agent without ReportsHeartbeat),
no ReportFullState for a client restarting with a full first message (a scripted
WebSocket client: opamp-go does not show the flags it receives), and the agent cap
counting only Online agents (opamp-go agents that say goodbye).
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from websockets.asyncio.client import ClientConnection, connect

from opamp_operator.fleet.model import AgentPhase, AgentSnapshot, Liveness
from opamp_operator.opamp.frames import decode_ws_frame, encode_ws_frame
from opamp_operator.opamp.generated import opamp_pb2
from opamp_operator.opamp.messages import AgentToServer, ServerToAgent, parse_server_to_agent
from tests.support.fake_agents import heartbeat, hello
from tests.support.goagent import GoAgent
from tests.support.opamp_clients import opamp_server

pytestmark = pytest.mark.integration

HEARTBEAT = 1.0
TIMEOUT = 2.0
PING = 0.5  # ping interval and pong timeout: a dead peer is dropped within 2 * PING
_FULL_STATE = int(opamp_pb2.ServerToAgentFlags_ReportFullState)


def online(snapshot: AgentSnapshot) -> bool:
    return snapshot.phase is AgentPhase.ONLINE


def offline(snapshot: AgentSnapshot) -> bool:
    return snapshot.phase is AgentPhase.OFFLINE


async def test_a_websocket_agent_without_reports_heartbeat_is_judged_by_its_connection() -> None:
    silent, beating = uuid.uuid4(), uuid.uuid4()
    async with (
        opamp_server(
            heartbeat=HEARTBEAT, heartbeat_timeout=TIMEOUT, ping_interval_seconds=PING,
            ping_timeout_seconds=PING, close_timeout_seconds=0.5,
        ) as server,
        GoAgent() as quiet,
        GoAgent() as chatty,
    ):  # fmt: skip
        # --heartbeat 0 without the capability: nothing after the first messages, but
        # opamp-go's WebSocket answers pings (like the Collector's opamp extension).
        await quiet.start(
            url=server.ws_url, instance_uid=silent, heartbeat=0,
            extra_args=["--no-reports-heartbeat"],
        )  # fmt: skip
        await chatty.start(url=server.ws_url, instance_uid=beating, heartbeat=HEARTBEAT / 2)
        first = await server.wait_for_agent(silent, online)
        assert "ReportsHeartbeat" not in first.capabilities
        assert first.liveness is Liveness.CONNECTION
        assert (await server.wait_for_agent(beating, online)).liveness is Liveness.HEARTBEAT
        await asyncio.sleep(3 * TIMEOUT)
        later = server.agent(silent)
        assert later is not None and later.phase is AgentPhase.ONLINE, later
        assert later.session == first.session  # the same session all along
        assert later.sequence_num == first.sequence_num  # it really sent nothing
        assert later.last_seen_at > first.last_seen_at  # refreshed while the socket lives

        quiet.freeze()  # SIGSTOP: no pongs any more
        frozen_at = time.monotonic()
        gone = await server.wait_for_agent(silent, offline, timeout=4 * PING + 3)
        assert time.monotonic() - frozen_at <= 2 * PING + 1.5
        assert gone.phase_reason == "connection_closed"
        assert gone.liveness is None
        quiet.thaw()


async def _exchange(ws: ClientConnection, message: AgentToServer) -> ServerToAgent:
    await ws.send(encode_ws_frame(message.SerializeToString()))
    reply = await ws.recv()
    assert isinstance(reply, bytes)
    return parse_server_to_agent(decode_ws_frame(reply))


async def test_a_restart_from_sequence_zero_with_a_full_report_is_not_asked_for_full_state() -> (
    None
):
    # A scripted client faithful to the spec's first message (description, capabilities,
    # health), restarting with a new connection and sequence 0 as a restarted agent does.
    uid = uuid.uuid4()
    agent_id = str(uid)
    async with opamp_server(heartbeat=HEARTBEAT, heartbeat_timeout=30) as server:
        async with connect(server.ws_url) as ws:
            assert not (await _exchange(ws, hello(agent_id, 0))).flags & _FULL_STATE
            for seq in (1, 2, 3):
                await _exchange(ws, heartbeat(agent_id, seq))
        await server.wait_for_agent(uid, offline)
        async with connect(server.ws_url) as ws:
            reply = await _exchange(ws, hello(agent_id, 0))
            assert not reply.flags & _FULL_STATE, "a full first message was asked again"
            # A real gap with a partial message still asks.
            reply = await _exchange(ws, heartbeat(agent_id, 7))
            assert reply.flags & _FULL_STATE
            # So does a full-looking message missing what a capability promises (health).
            reply = await _exchange(ws, hello(agent_id, 0, healthy=None))
            assert reply.flags & _FULL_STATE


async def test_agents_that_said_goodbye_do_not_count_against_the_agent_cap() -> None:
    # Reproduces issue 16 item 9: before, five departed agents made every new one refused.
    cap = 5
    async with opamp_server(
        heartbeat=HEARTBEAT, heartbeat_timeout=TIMEOUT, fleet_options={"max_agents": cap}
    ) as server:
        for _ in range(cap):
            uid = uuid.uuid4()
            async with GoAgent() as agent:
                await agent.start(url=server.ws_url, instance_uid=uid, heartbeat=HEARTBEAT)
                await server.wait_for_agent(uid, online)
                assert await agent.stop() == 0  # client.Stop: AgentDisconnect
            departed = await server.wait_for_agent(uid, offline)
            assert departed.phase_reason == "agent_disconnect"
        assert len(server.fleet) == cap and server.fleet.active() == 0
        newcomer = uuid.uuid4()
        async with GoAgent() as agent:
            await agent.start(url=server.ws_url, instance_uid=newcomer, heartbeat=HEARTBEAT)
            await server.wait_for_agent(newcomer, online)
            assert not agent.events_named("error"), agent.events_named("error")
