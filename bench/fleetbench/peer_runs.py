"""The reference peer (opamp-go's server package, bench/peer) under the same simulator load.

N agents with 30 s heartbeats (WebSocket, or polling over plain HTTP): memory per agent and
CPU (saturation: saturation.py).
The peer keeps agents in a map and answers each message; it writes nothing anywhere, so it
is the floor of what serving OpAMP costs.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.goagent import PeerServer

from .procstat import cpu_percent, sample, sample_sum
from .simfleet import DEFAULT_PER_SIMULATOR, SimulatorGroup
from .stack import SimPlan, fleet_label, opamp_url


@dataclass
class PeerFleetResult:
    agents: int
    transport: str
    connected: int  # WebSockets open; over HTTP agents heard from
    connected_seconds: float | None
    baseline_rss: int
    rss: int
    cpu_pct: float
    sim_cpu_pct: float
    window_seconds: float
    messages: float

    @property
    def per_agent_bytes(self) -> float:
        return (self.rss - self.baseline_rss) / self.connected if self.connected else 0.0


def connected_count(agents: list[dict[str, Any]]) -> int:
    return sum(1 for agent in agents if agent.get("connected"))


def held_count(agents: list[dict[str, Any]], transport: str) -> int:
    """Agents the peer holds: open WebSockets, or over plain HTTP (never "connected") every
    agent heard from."""
    return len(agents) if transport == "http" else connected_count(agents)


def message_count(agents: list[dict[str, Any]]) -> float:
    return float(sum(int(agent.get("messages", 0)) for agent in agents))


async def wait_held(peer: PeerServer, n: int, within: float, transport: str) -> float | None:
    """Until the peer holds `n` agents (`held_count`); the monotonic time, or None."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if held_count(await peer.agents(), transport) >= n:
            return time.monotonic()
        await asyncio.sleep(1)
    return None


async def peer_fleet(
    agents: int,
    ramp: float,
    window: float,
    workdir: Path,
    transport: str = "ws",
    *,
    per_simulator: int = DEFAULT_PER_SIMULATOR,
) -> PeerFleetResult:
    plan = SimPlan(agents=agents, duration=agents / ramp + 45 + window, ramp=ramp)
    label = fleet_label(agents, transport)
    async with PeerServer() as peer:
        await peer.start()
        await asyncio.sleep(1)
        baseline = sample(peer.pid).rss_bytes
        url = opamp_url(peer, transport)
        sim = SimulatorGroup(plan, url, workdir, f"sim-{label}-peer", per_simulator)
        started = time.monotonic()
        await sim.start()
        try:
            connected_at = await wait_held(peer, agents, agents / ramp + 40, transport)
            a0, s0, q0 = await peer.agents(), sample(peer.pid), sample_sum(sim.pids)
            await asyncio.sleep(window)
            a1, s1, q1 = await peer.agents(), sample(peer.pid), sample_sum(sim.pids)
            await sim.wait()
        finally:
            await sim.kill()
            await peer.stop()
    return PeerFleetResult(
        agents=agents,
        transport=transport,
        connected=held_count(a1, transport),
        connected_seconds=None if connected_at is None else connected_at - started,
        baseline_rss=baseline,
        rss=s1.rss_bytes,
        cpu_pct=cpu_percent(s0, s1),
        sim_cpu_pct=cpu_percent(q0, q1),
        window_seconds=s1.at - s0.at,
        messages=message_count(a1) - message_count(a0),
    )
