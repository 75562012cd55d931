"""Messages per second at saturation: few agents with fast heartbeats, operator and peer.

The simulator offers more than either server needs (500 agents every 50 ms: 10,000/s), so
on this 2-core machine the servers and the simulator compete for the same cores. Besides
messages handled per second we report the server's CPU, and messages per CPU-second: the
ratio that does not depend on who got the cores.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from tests.support.goagent import PeerServer

from . import profiling
from .peer_runs import message_count, wait_held
from .procstat import cpu_percent, machine_busy_percent, machine_sample, sample
from .stack import (
    Metrics,
    OperatorOptions,
    SimPlan,
    Simulator,
    TestBed,
    agents_held,
    opamp_url,
    operator_pid,
    operator_process,
    scrape,
    wait_metrics,
)


@dataclass(frozen=True)
class SaturationPlan:
    agents: int = 500
    heartbeat: float = 0.05
    settle_seconds: float = 60.0  # at most: connect and write every CR before the window
    window_seconds: float = 20.0
    profile: bool = False
    transport: str = "ws"  # or "http": every heartbeat a POST (the simulator polls)


@dataclass
class SaturationResult:
    plan: SaturationPlan
    seconds: float
    messages: float
    server_cpu_pct: float
    server_rss: int
    sim_cpu_pct: float
    machine_busy_pct: float
    settled: bool  # connected and every CR written before the window started
    profile: Path | None = None

    @property
    def per_second(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0

    @property
    def per_cpu_second(self) -> float:
        cpu = self.server_cpu_pct / 100 * self.seconds
        return self.messages / cpu if cpu else 0.0


def saturation_sim(plan: SaturationPlan) -> SimPlan:
    return SimPlan(
        agents=plan.agents, heartbeat=plan.heartbeat, ramp=0,
        duration=plan.settle_seconds + plan.window_seconds + 5, name_prefix="sat", seed=3,
    )  # fmt: skip


async def operator_saturation(
    bed: TestBed, plan: SaturationPlan, workdir: Path, options: OperatorOptions
) -> SaturationResult:
    namespace, database = bed.new_target("sat")
    op = operator_process(bed, namespace, database, options, workdir / "operator-sat.log")
    sim: Simulator | None = None
    try:
        await op.start(within=120)
        url = opamp_url(op, plan.transport)
        sim = Simulator(saturation_sim(plan), url, workdir, f"sim-sat-operator-{plan.transport}")
        await sim.start()
        pid = operator_pid(op)

        def settled_check(m: Metrics) -> bool:
            return bool(
                agents_held(m, plan.transport) >= plan.agents
                and m.value("opamp_kube_write_queue_depth") == 0
                and m.value("opamp_kube_writes_total", kind="event") >= plan.agents
            )

        settled = await wait_metrics(op.api_url, settled_check, plan.settle_seconds - 1)
        profile = None
        if plan.profile:
            out = workdir / f"profile-saturation-{plan.transport}.txt"
            profile = asyncio.create_task(profiling.record(pid, plan.window_seconds - 1, out))
        m0, s0, q0, c0 = await scrape(op.api_url), sample(pid), sample(sim.pid), machine_sample()
        await asyncio.sleep(plan.window_seconds)
        m1, s1, q1, c1 = await scrape(op.api_url), sample(pid), sample(sim.pid), machine_sample()
        path = await profile if profile is not None else None
        await sim.kill()  # the window is what counts; no need to wait for the planned end
    finally:
        if sim is not None:
            await sim.kill()
        await op.cleanup()
    name = "opamp_messages_received_total"
    return SaturationResult(
        plan, s1.at - s0.at, m1.value(name) - m0.value(name), cpu_percent(s0, s1),
        s1.rss_bytes, cpu_percent(q0, q1), machine_busy_percent(c0, c1),
        settled is not None, path,
    )  # fmt: skip


async def peer_saturation(plan: SaturationPlan, workdir: Path) -> SaturationResult:
    async with PeerServer() as peer:
        await peer.start()
        url = opamp_url(peer, plan.transport)
        sim = Simulator(saturation_sim(plan), url, workdir, f"sim-sat-peer-{plan.transport}")
        await sim.start()
        try:
            settled = await wait_held(peer, plan.agents, plan.settle_seconds - 1, plan.transport)
            a0, s0, q0 = await peer.agents(), sample(peer.pid), sample(sim.pid)
            c0 = machine_sample()
            await asyncio.sleep(plan.window_seconds)
            a1, s1, q1 = await peer.agents(), sample(peer.pid), sample(sim.pid)
            c1 = machine_sample()
        finally:
            await sim.kill()
            await peer.stop()
    return SaturationResult(
        plan, s1.at - s0.at, message_count(a1) - message_count(a0), cpu_percent(s0, s1),
        s1.rss_bytes, cpu_percent(q0, q1), machine_busy_percent(c0, c1),
        settled is not None,
    )  # fmt: skip
