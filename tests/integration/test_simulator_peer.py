"""The simulator against the opamp-go reference server (bench/peer) on 127.0.0.1.

The peer is an independent OpAMP implementation: what it records (/agents)
shows the simulated agents speak the protocol as a server sees it. Needs the
go tool (the peer is built once and cached).
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from opamp_operator.simulator import SimulationConfig, SimulationReport, run_simulation
from opamp_operator.simulator.wire import CAPABILITIES
from tests.support.goagent import PeerServer, ensure_peer_server

pytestmark = pytest.mark.integration

#: The stop phase may take stop_grace plus one second; allow scheduling slack on a busy box.
STOP_SLACK_S = 2.0


@pytest.fixture(scope="module")
def peer_binary() -> Path:
    return ensure_peer_server()


@pytest.fixture
async def peer(peer_binary: Path) -> AsyncIterator[PeerServer]:
    async with PeerServer(peer_binary) as server:
        await server.start()
        yield server


def url_for(peer: PeerServer, transport: str) -> str:
    return peer.ws_url if transport == "ws" else peer.http_url


async def timed_run(config: SimulationConfig) -> SimulationReport:
    """Run and check the duration bound: never shorter than asked, never much longer."""
    began = time.monotonic()
    report = await run_simulation(config)
    took = time.monotonic() - began
    assert config.duration <= report.elapsed_s <= took
    assert took <= config.duration + config.stop_grace + STOP_SLACK_S
    return report


def parse_ts(text: str) -> float:
    # Go prints nanoseconds; Python 3.11 reads at most microseconds.
    head, _, rest = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{rest[:6].ljust(6, '0')}+00:00").timestamp()


def by_uid(agents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {str(uuid.UUID(a["instance_uid"])): a for a in agents}


@pytest.mark.parametrize("transport", ["ws", "http"])
async def test_agents_connect_report_heartbeat_and_say_goodbye(
    peer: PeerServer, transport: str
) -> None:
    agents = 40
    config = SimulationConfig(
        url=url_for(peer, transport), agents=agents, heartbeat=0.25, duration=2.0,
        ramp=200, groups=2, name_prefix="peer", stop_grace=3.0, seed=1,
    )  # fmt: skip
    report = await timed_run(config)

    assert report.transport == transport
    assert report.peak_connected == agents
    assert report.connected_at_end == agents
    assert report.errors == {}
    assert report.reconnects == 0
    # One full state, about seven heartbeats and a goodbye each.
    assert report.messages_sent >= agents * 6
    # Every message but a goodbye is answered (a goodbye's answer may race the close).
    assert report.messages_sent - agents <= report.replies_received <= report.messages_sent
    assert report.latency_p50_ms is not None and report.latency_p99_ms is not None
    assert 0 < report.latency_p50_ms <= report.latency_p99_ms <= (report.latency_max_ms or 0)

    seen = await peer.agents()
    assert len(seen) == agents
    sent = 0
    for agent in seen:
        assert agent["transport"] == transport
        assert agent["capabilities"] == CAPABILITIES
        assert agent["healthy"] is True
        assert agent["has_effective_config"] is True
        assert agent["agent_disconnect"] is True
        assert agent["full_state_requests"] == 0  # no sequence gap, description first
        assert agent["last_sequence_num"] == agent["messages"]
        ident = agent["identifying_attributes"]
        assert ident["service.name"] in {"peer-0", "peer-1"}
        assert ident["service.version"] == "1.0.0"
        assert uuid.UUID(ident["service.instance.id"]).hex == agent["instance_uid"]
        assert agent["non_identifying_attributes"]["os.type"] == "linux"
        assert agent["non_identifying_attributes"]["host.name"].startswith("peer-host-")
        sent += agent["messages"]
    assert sent == report.messages_sent  # nothing counted that the server did not get


async def test_remote_config_from_the_peer_is_applied(peer_binary: Path) -> None:
    body = "exporters:\n  debug: {}\n"
    async with PeerServer(peer_binary) as peer:
        await peer.start(remote_config=body)
        config = SimulationConfig(url=peer.ws_url, agents=10, heartbeat=0.3, duration=1.5)
        report = await timed_run(config)
        seen = await peer.agents()
    assert report.peak_connected == 10
    digest = hashlib.sha256(body.encode()).hexdigest()
    for agent in seen:
        assert agent["remote_config_status"] == "RemoteConfigStatuses_APPLIED"
        assert agent["remote_config_hash"] == digest


async def test_churn_says_goodbye_and_reconnects(peer: PeerServer) -> None:
    agents = 30
    config = SimulationConfig(
        url=peer.ws_url, agents=agents, heartbeat=0.3, duration=3.0, ramp=0,
        churn=8.0, churn_delay=0.2, seed=2,
    )  # fmt: skip
    report = await timed_run(config)
    assert report.churn_disconnects >= 8
    assert report.reconnects >= report.churn_disconnects - 3  # the last ones may still wait
    assert report.errors == {}
    assert report.peak_connected == agents
    goodbyes = peer.events_named("agent_disconnect")
    # Every churn and every agent at the end sent an AgentDisconnect the peer saw.
    assert len(goodbyes) == report.churn_disconnects + report.connected_at_end
    assert len(await peer.agents()) == agents  # a churned agent keeps its instance uid


async def test_silent_agents_stop_sending_but_keep_the_socket_open(peer: PeerServer) -> None:
    agents, silent = 20, 5
    config = SimulationConfig(
        url=peer.ws_url, agents=agents, heartbeat=0.2, duration=3.0, ramp=0,
        silent_count=silent, silent_after=1.0, seed=3,
    )  # fmt: skip
    run = asyncio.create_task(timed_run(config))
    await asyncio.sleep(2.5)  # a second and a half after they went quiet
    during = await peer.agents()
    report = await run

    assert len(report.silent) == silent
    silent_uids = {s.instance_uid for s in report.silent}
    assert all(agent["connected"] for agent in during), "a silent agent's socket was closed"
    now = time.time()
    for uid, agent in by_uid(during).items():
        last_seen = parse_ts(agent["last_seen"])
        if uid in silent_uids:
            assert now - last_seen > 1.0, f"silent agent {uid} still sending"
        else:
            assert now - last_seen < 1.0, f"agent {uid} stopped sending"
    after = by_uid(await peer.agents())
    for record in report.silent:
        assert record.last_message_wall is not None and record.last_message_monotonic is not None
        assert record.last_message_monotonic <= record.went_silent_monotonic
        assert abs(record.went_silent_monotonic - (report.started_monotonic + 1.0)) < 0.5
        assert record.went_silent_wall == pytest.approx(
            report.started_wall + (record.went_silent_monotonic - report.started_monotonic)
        )
        seen = after[record.instance_uid]
        assert seen["agent_disconnect"] is False  # a hung agent says no goodbye
        assert parse_ts(seen["last_seen"]) <= record.went_silent_wall + 0.05
        assert record.server_closed_monotonic is None  # the peer never closes idle agents


@pytest.mark.parametrize("transport", ["ws", "http"])
async def test_bearer_token(peer_binary: Path, transport: str) -> None:
    async with PeerServer(peer_binary) as peer:
        await peer.start(token="s3cret")
        url = url_for(peer, transport)
        wrong = await timed_run(
            SimulationConfig(url=url, agents=5, duration=1.5, token="nope", heartbeat=0.3)
        )
        right = await timed_run(
            SimulationConfig(url=url, agents=5, duration=1.0, token="s3cret", heartbeat=0.3)
        )
    kind = "ws_http_401" if transport == "ws" else "http_401"
    assert wrong.peak_connected == 0
    assert set(wrong.errors) == {kind}
    # Backoff: 0.5 s, then 1 s... so at most a handful of attempts per agent.
    assert 5 <= wrong.errors[kind] <= 5 * 4
    assert right.peak_connected == 5
    assert right.errors == {}


async def test_an_absent_server_is_retried_with_backoff_and_the_run_still_ends() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago, now closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = SimulationConfig(
        url=f"ws://127.0.0.1:{port}/v1/opamp", agents=10, duration=2.0, ramp=0,
        backoff_initial=0.2, backoff_max=1.0,
    )  # fmt: skip
    report = await timed_run(config)
    assert report.peak_connected == 0
    assert set(report.errors) == {"connect_refused"}
    # Jittered backoff 0.1-0.2, 0.2-0.4, 0.4-0.8, 0.5-1 s: 3 to 6 attempts per agent in 2 s.
    assert 10 * 3 <= report.errors["connect_refused"] <= 10 * 7
    assert report.reconnects == report.errors["connect_refused"] - 10  # all but first tries
