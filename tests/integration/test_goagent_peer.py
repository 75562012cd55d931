"""The opamp-go test agent against the opamp-go reference peer, over WebSocket and HTTP.

Proves the test tooling itself (tests/support/goagent.py, tests/agents/goagent,
bench/peer) before other suites rely on it. Needs the go tool.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.goagent import GoAgent, PeerServer, ensure_goagent, ensure_peer_server

pytestmark = pytest.mark.integration

HEARTBEAT_S = 0.2


@pytest.fixture(scope="module")
def agent_binary() -> Path:
    return ensure_goagent()


@pytest.fixture(scope="module")
def peer_binary() -> Path:
    return ensure_peer_server()


@pytest.fixture
async def peer(peer_binary: Path) -> AsyncIterator[PeerServer]:
    async with PeerServer(peer_binary) as server:
        await server.start()
        yield server


async def peer_agent(peer: PeerServer, instance_uid: str) -> dict[str, Any]:
    for agent in await peer.agents():
        if agent["instance_uid"] == instance_uid:
            return agent
    raise AssertionError(f"peer does not know {instance_uid}")


async def wait_messages(agent: GoAgent, count: int, start: int) -> None:
    """Wait for `count` server replies after event index `start`."""
    for _ in range(count):
        event = await agent.wait_for_event("message", 5, start=start)
        start = event.index + 1


@pytest.mark.parametrize("transport", ["ws", "http"])
async def test_agent_connects_heartbeats_and_stops_cleanly(
    agent_binary: Path, peer: PeerServer, transport: str
) -> None:
    uid = uuid.uuid4().hex
    url = peer.ws_url if transport == "ws" else peer.http_url
    async with GoAgent(agent_binary) as agent:
        await agent.start(
            url=url,
            instance_uid=uid,
            heartbeat=HEARTBEAT_S,
            id_attrs={"k8s.pod.uid": "pod-uid-1"},
            attrs={"k8s.namespace.name": "default"},
            # opamp-go's HTTP client.Stop sends nothing; ask the agent to POST one.
            http_disconnect=transport == "http",
        )
        started = await agent.wait_for_event("started", 15)
        assert started.get("transport") == transport
        assert agent.instance_uid == uid
        connected = await agent.wait_for_event("connected", 15)
        await wait_messages(agent, 4, connected.index)

        seen = await peer_agent(peer, uid)
        assert seen["transport"] == transport
        assert seen["messages"] >= 4
        assert seen["identifying_attributes"]["k8s.pod.uid"] == "pod-uid-1"
        assert seen["non_identifying_attributes"]["k8s.namespace.name"] == "default"
        assert seen["agent_disconnect"] is False

        assert await agent.stop() == 0
        stopped = await agent.wait_for_event("stopped", 1)
        assert stopped.get("graceful") is True
        assert stopped.get("error") is None

    seen = await peer_agent(peer, uid)
    assert seen["agent_disconnect"] is True
    assert seen["full_state_requests"] == 0
    assert seen["connected"] is False


async def test_http_stop_without_manual_disconnect_sends_nothing(
    agent_binary: Path, peer: PeerServer
) -> None:
    uid = uuid.uuid4().hex
    async with GoAgent(agent_binary) as agent:
        await agent.start(url=peer.http_url, instance_uid=uid, heartbeat=HEARTBEAT_S)
        await agent.wait_for_event("connected", 15)
        assert await agent.stop() == 0
        assert (await agent.wait_for_event("stopped", 1)).get("disconnect") == "none"
    assert (await peer_agent(peer, uid))["agent_disconnect"] is False


async def test_freeze_keeps_the_socket_open_but_silent(
    agent_binary: Path, peer: PeerServer
) -> None:
    uid = uuid.uuid4().hex
    async with GoAgent(agent_binary) as agent:
        await agent.start(url=peer.ws_url, instance_uid=uid, heartbeat=HEARTBEAT_S)
        connected = await agent.wait_for_event("connected", 15)
        await wait_messages(agent, 2, connected.index)

        agent.freeze()
        await asyncio.sleep(HEARTBEAT_S)  # let an in-flight heartbeat land
        before = await peer_agent(peer, uid)
        await asyncio.sleep(5 * HEARTBEAT_S)
        during = await peer_agent(peer, uid)
        assert during["messages"] == before["messages"], "a frozen agent sent heartbeats"
        assert during["connected"] is True, "freezing closed the WebSocket"

        agent.thaw()
        await wait_messages(agent, 2, len(agent.events))
        assert (await peer_agent(peer, uid))["messages"] > during["messages"]
        assert await agent.kill() == -9
    assert agent.returncode == -9


async def test_silent_after_freezes_the_agent_itself(agent_binary: Path, peer: PeerServer) -> None:
    uid = uuid.uuid4().hex
    async with GoAgent(agent_binary) as agent:
        await agent.start(
            url=peer.ws_url, instance_uid=uid, heartbeat=HEARTBEAT_S, silent_after=1.0
        )
        await agent.wait_for_event("silent", 15)
        await asyncio.sleep(HEARTBEAT_S)
        before = await peer_agent(peer, uid)
        await asyncio.sleep(5 * HEARTBEAT_S)
        during = await peer_agent(peer, uid)
        assert during["messages"] == before["messages"]
        assert during["connected"] is True
        # stop() continues the process first, so the stop is still graceful.
        assert await agent.stop() == 0
        assert [e.name for e in agent.events].count("resumed") == 1
    assert (await peer_agent(peer, uid))["agent_disconnect"] is True


async def test_rejected_connection_is_reported(agent_binary: Path, peer_binary: Path) -> None:
    async with PeerServer(peer_binary) as peer:
        await peer.start(token="s3cret")
        for url in (peer.ws_url, peer.http_url):
            async with GoAgent(agent_binary) as agent:
                await agent.start(url=url, heartbeat=HEARTBEAT_S, token="wrong")
                failed = await agent.wait_for_event("connect_failed", 15)
                assert "401" in str(failed.get("error")) or "bad handshake" in str(
                    failed.get("error")
                )
                assert agent.events_named("connected") == []
