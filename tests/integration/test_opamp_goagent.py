"""The opamp-go test agent against our listener, over WebSocket and plain HTTP."""

from __future__ import annotations

import asyncio
import time
import uuid

import aiohttp
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from opamp_operator.fleet.model import AgentPhase, AgentSnapshot, Transport
from opamp_operator.opamp.generated import opamp_pb2
from opamp_operator.opamp.messages import ServerToAgent
from tests.support.goagent import GoAgent
from tests.support.opamp_clients import OpAMPServer, metric, opamp_server
from tests.support.polling import eventually

pytestmark = pytest.mark.integration

HEARTBEAT = 1.0
TIMEOUT = 2.0
TRANSPORTS = pytest.mark.parametrize("transport", [Transport.WEBSOCKET, Transport.HTTP])


def online(snapshot: AgentSnapshot) -> bool:
    return snapshot.phase is AgentPhase.ONLINE


def offline(snapshot: AgentSnapshot) -> bool:
    return snapshot.phase is AgentPhase.OFFLINE


def url(server: OpAMPServer, transport: Transport) -> str:
    return server.ws_url if transport is Transport.WEBSOCKET else server.http_url


@TRANSPORTS
async def test_connects_reports_and_heartbeats(transport: Transport) -> None:
    uid = uuid.uuid4()
    async with (
        opamp_server(heartbeat=HEARTBEAT, heartbeat_timeout=TIMEOUT) as server,
        GoAgent() as agent,
    ):
        await agent.start(
            url=url(server, transport),
            instance_uid=uid,
            service_name=f"go-{transport}",
            heartbeat=HEARTBEAT / 2,
        )
        await agent.wait_for_event("connected")
        first = await server.wait_for_agent(uid, online)
        assert first.service_name == f"go-{transport}"
        assert first.session is not None
        assert first.session.transport is transport
        assert "ReportsHeartbeat" in first.capabilities
        later = await server.wait_for_agent(
            uid, lambda s: (s.last_seen_at - first.last_seen_at).total_seconds() > TIMEOUT
        )
        assert later.phase is AgentPhase.ONLINE
        assert later.phase_since == first.phase_since
        assert later.sequence_num > first.sequence_num


@TRANSPORTS
async def test_frozen_agent_goes_offline_within_the_timeout(transport: Transport) -> None:
    uid = uuid.uuid4()
    async with (
        opamp_server(
            heartbeat=HEARTBEAT, heartbeat_timeout=TIMEOUT, close_timeout_seconds=0.5
        ) as server,
        GoAgent() as agent,
    ):
        await agent.start(url=url(server, transport), instance_uid=uid, heartbeat=HEARTBEAT)
        await server.wait_for_agent(uid, online)
        agent.freeze()
        frozen_at = time.monotonic()
        snapshot = await server.wait_for_agent(uid, offline, timeout=TIMEOUT + 3)
        assert time.monotonic() - frozen_at <= TIMEOUT + 1
        assert snapshot.phase_reason == "heartbeat_timeout"
        assert snapshot.session is None
        if transport is Transport.WEBSOCKET:
            # The fleet asked for the socket to be closed; the frozen peer never answers the
            # Close, so it is dropped after close_timeout.
            await eventually(
                "the frozen peer's socket dropped",
                lambda: not server.listener.websocket_channels,
                within=2,
                every=0.05,
            )
        agent.thaw()
        back = await server.wait_for_agent(uid, online, timeout=10)
        assert back.session is not None
        assert back.session.transport is transport


async def test_closed_websocket_is_offline_at_once() -> None:
    uid = uuid.uuid4()
    async with (
        opamp_server(heartbeat=HEARTBEAT, heartbeat_timeout=10.0) as server,
        GoAgent() as agent,
    ):
        # --no-disconnect: on SIGTERM the process exits at once, no AgentDisconnect and
        # no Close frame; the kernel closes the socket.
        await agent.start(url=server.ws_url, instance_uid=uid, no_disconnect=True)
        await server.wait_for_agent(uid, online)
        await agent.stop()
        closed_at = time.monotonic()
        snapshot = await server.wait_for_agent(uid, offline, timeout=2)
        assert time.monotonic() - closed_at < 1.0
        assert snapshot.phase_reason == "connection_closed"
        assert not server.listener.websocket_channels


@pytest.mark.parametrize(
    ("transport", "http_disconnect"),
    [(Transport.WEBSOCKET, False), (Transport.HTTP, True)],
    ids=["websocket", "http-manual-disconnect"],
)
async def test_graceful_stop_is_agent_disconnect(
    transport: Transport, http_disconnect: bool
) -> None:
    uid = uuid.uuid4()
    disconnects = metric("opamp_messages_received_total", transport=transport, kind="disconnect")
    async with (
        opamp_server(heartbeat=HEARTBEAT, heartbeat_timeout=10.0) as server,
        GoAgent() as agent,
    ):
        await agent.start(
            url=url(server, transport), instance_uid=uid, http_disconnect=http_disconnect
        )
        await server.wait_for_agent(uid, online)
        assert await agent.stop() == 0
        stopped = agent.events_named("stopped")[0]
        assert stopped.get("disconnect") in ("ws_library", "http_manual")
        snapshot = await server.wait_for_agent(uid, offline, timeout=2)
        assert snapshot.phase_reason == "agent_disconnect"
    after = metric("opamp_messages_received_total", transport=transport, kind="disconnect")
    assert after == disconnects + 1


async def test_graceful_http_stop_sends_nothing_so_the_heartbeat_times_out() -> None:
    uid = uuid.uuid4()
    async with opamp_server(heartbeat=HEARTBEAT, heartbeat_timeout=TIMEOUT) as server:
        async with GoAgent() as agent:
            await agent.start(url=server.http_url, instance_uid=uid, heartbeat=HEARTBEAT)
            await server.wait_for_agent(uid, online)
            assert await agent.stop() == 0
            assert agent.events_named("stopped")[0].get("disconnect") == "none"
        snapshot = await server.wait_for_agent(uid, offline, timeout=TIMEOUT + 2)
        assert snapshot.phase_reason == "heartbeat_timeout"


@TRANSPORTS
@pytest.mark.parametrize("token", [None, "wrong"], ids=["missing", "wrong"])
async def test_bad_token_is_refused_before_anything(
    transport: Transport, token: str | None
) -> None:
    failures = metric("opamp_auth_failures_total", transport=transport)
    async with opamp_server(agent_tokens=frozenset({"s3cret"})) as server:
        async with GoAgent() as refused:
            await refused.start(url=url(server, transport), token=token, heartbeat=HEARTBEAT)
            failed = await refused.wait_for_event("connect_failed")
            if transport is Transport.HTTP:  # opamp-go does not show the status on WebSocket
                assert "401" in str(failed.data)
            assert len(server.fleet) == 0
        assert await status_for(server, transport, token) == 401
        async with GoAgent() as agent:  # and the right token still works
            uid = uuid.uuid4()
            await agent.start(url=url(server, transport), instance_uid=uid, token="s3cret")
            await server.wait_for_agent(uid, online)
    assert metric("opamp_auth_failures_total", transport=transport) >= failures + 2


async def status_for(server: OpAMPServer, transport: Transport, token: str | None) -> int:
    """The HTTP status a request with `token` gets (a WebSocket upgrade, or a POST)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if transport is Transport.WEBSOCKET:
        try:
            async with connect(server.ws_url, additional_headers=headers):
                return 101
        except InvalidStatus as refused:
            assert refused.response.headers["WWW-Authenticate"] == "Bearer"
            return refused.response.status_code
    headers["Content-Type"] = "application/x-protobuf"
    async with (
        aiohttp.ClientSession() as session,
        session.post(server.http_url, data=b"", headers=headers) as response,
    ):
        assert response.headers["WWW-Authenticate"] == "Bearer"
        return response.status


async def test_server_initiated_send_reaches_the_agent() -> None:
    uid = uuid.uuid4()
    async with opamp_server() as server, GoAgent() as agent:
        await agent.start(url=server.ws_url, instance_uid=uid)
        await server.wait_for_agent(uid, online)
        before = len(agent.events_named("message"))
        (channel,) = server.listener.websocket_channels
        push = ServerToAgent(instance_uid=uid.bytes)
        push.flags = opamp_pb2.ServerToAgentFlags_ReportFullState
        await channel.send(push)
        await agent.wait_for_event("message", start=agent.events_named("message")[-1].index + 1)
        assert len(agent.events_named("message")) > before


async def test_reconnect_request_closes_and_the_agent_comes_back() -> None:
    uid = uuid.uuid4()
    async with opamp_server() as server, GoAgent() as agent:
        await agent.start(url=server.ws_url, instance_uid=uid)
        first = await server.wait_for_agent(uid, online)
        assert first.session is not None
        assert server.fleet.request_reconnect(str(uid))
        again = await server.wait_for_agent(
            uid,
            lambda s: s.session is not None and s.session != first.session,
            timeout=15,
        )
        assert again.phase is AgentPhase.ONLINE
        assert again.disconnect_reason == "reconnect_requested"
        assert len(agent.events_named("connected")) >= 2


async def test_listener_stop_closes_websockets_with_the_reason() -> None:
    uid = uuid.uuid4()
    async with opamp_server() as server, GoAgent() as agent:
        await agent.start(url=server.ws_url, instance_uid=uid)
        await server.wait_for_agent(uid, online)
        started = time.monotonic()
        await server.listener.stop()
        assert time.monotonic() - started < 5
        assert not server.listener.ready
        snapshot = server.agent(uid)
        assert snapshot is not None
        assert snapshot.phase is AgentPhase.OFFLINE
        assert snapshot.phase_reason == "operator_shutdown"
        await asyncio.sleep(0.5)  # the agent retries: nothing answers any more
        assert server.agent(uid).phase is AgentPhase.OFFLINE  # type: ignore[union-attr]
