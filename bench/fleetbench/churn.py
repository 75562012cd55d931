"""The churn phase (issue 19: "a 30-minute churn run at 10,000 agents shows RSS flat after
warm-up"): K more agents connect beside the main fleet and keep saying goodbye and coming
back (the simulator's --churn) for a window, sampled every 10 s.

Each sample: the operator's RSS, sessions opened (transitions to Online) and ended, the
collector policy's freezes and thaws (opamp_gc_policy_actions_total) and gcwatch's totals.
After a warm-up (a fifth of the window, at most 5 minutes) RSS should stay flat: the table
gives its least-squares slope in MiB per 10 minutes. The simulator's run is planned to end
with the window, so it says goodbye and reports on its own.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tests.support.operator_process import OperatorProcess

from . import gcwatch
from .procstat import sample
from .stack import (
    Metrics,
    SimPlan,
    Simulator,
    gc_totals,
    idle_queues,
    operator_pid,
    scrape,
    wait_metrics,
)

MAX_WINDOW_S = 3600.0
WARMUP_MAX_S = 300.0
CONNECT_MARGIN_S = 10.0  # beyond 1.5 x K / ramp, for the churn agents to connect
SEED = 3  # the main fleet's simulators use 1 + 100 i, the silent run 2
MIB = 1024 * 1024


@dataclass(frozen=True)
class ChurnPlan:
    window: float  # seconds of churn, sampled
    agents: int = 1000
    rate: float = 5.0  # disconnects per second across the K agents
    delay: float = 2.0  # mean pause before a churned agent comes back
    interval: float = 10.0  # between samples


def warmup_seconds(window: float) -> float:
    """The start of the window left out of the flatness figures."""
    return min(WARMUP_MAX_S, window / 5)


def slope_per_10min(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) points, per 600 s; None below two times."""
    if len({t for t, _ in points}) < 2:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    covariance = sum((t - mean_t) * (v - mean_v) for t, v in points)
    variance = sum((t - mean_t) ** 2 for t, _ in points)
    return 600.0 * covariance / variance


def away_allowance(plan: ChurnPlan) -> int:
    """Churn agents that may be away at any moment (each for up to 1.5 x the delay), with
    room for bursts: "connected" is every churn agent but these."""
    return math.ceil(3 * plan.rate * plan.delay) + 5


def churn_sim_plan(plan: ChurnPlan, ramp: float) -> SimPlan:
    """The churn simulator's run: connect, then churn until the window has passed."""
    # The window runs from "all connected" to the simulator's planned end (no idle tail),
    # so it is the asked-for window plus what connecting did not use of this.
    connect = 1.5 * plan.agents / ramp + CONNECT_MARGIN_S
    return SimPlan(
        agents=plan.agents, duration=connect + plan.window, ramp=ramp,
        churn=plan.rate, churn_delay=plan.delay, name_prefix="churn", seed=SEED,
    )  # fmt: skip


@dataclass(frozen=True)
class ChurnSample:
    seconds: float  # since the window began
    rss: int
    sessions_opened: float  # the operator's counters since it started
    sessions_ended: float
    freezes: float
    thaws: float
    gc_seconds: float | None  # gcwatch's total collector time since start (None: not run)
    long_pauses: int | None  # of 50 ms or more, since start


@dataclass
class ChurnResult:
    plan: ChurnPlan
    main_agents: int
    connected_seconds: float | None = None  # start to all churn agents connected
    window_seconds: float = 0.0
    samples: list[ChurnSample] = field(default_factory=list)
    gc: gcwatch.GcWindow | None = None  # the whole window
    disconnects: int = 0  # the simulator's churn goodbyes

    @property
    def warmup(self) -> float:
        return warmup_seconds(self.window_seconds)

    @property
    def settled(self) -> list[ChurnSample]:
        """The samples after the warm-up."""
        return [s for s in self.samples if s.seconds >= self.warmup]

    @property
    def rss_slope_mib(self) -> float | None:
        return slope_per_10min([(s.seconds, s.rss / MIB) for s in self.settled])

    def summary(self) -> dict[str, float | None]:
        """The table's figures, for the JSON beside the series (RSS in MiB)."""
        rss = [s.rss / MIB for s in self.settled]
        gc = self.gc
        return {
            "window_seconds": self.window_seconds,
            "warmup_seconds": self.warmup,
            "rss_start_mib": rss[0] if rss else None,
            "rss_end_mib": rss[-1] if rss else None,
            "rss_min_mib": min(rss, default=None),
            "rss_max_mib": max(rss, default=None),
            "rss_slope_mib_per_10min": self.rss_slope_mib,
            "sessions_opened": self.delta("sessions_opened"),
            "sessions_ended": self.delta("sessions_ended"),
            "freezes": self.delta("freezes"),
            "thaws": self.delta("thaws"),
            "longest_pause_seconds": None if gc is None else gc.longest,
            "pauses_50ms": None if gc is None else gc.long,
            "gc_seconds": None if gc is None else gc.seconds,
        }

    def delta(self, name: str) -> float:
        """Growth of a counter over the whole window."""
        if len(self.samples) < 2:
            return 0.0
        first, last = self.samples[0], self.samples[-1]
        return float(getattr(last, name) - getattr(first, name))


class ChurnRun:
    """`await ChurnRun(...).run()` with the main fleet connected and settled."""

    def __init__(
        self,
        op: OperatorProcess,
        plan: ChurnPlan,
        sim: Simulator,
        held: Callable[[Metrics], float],
        *,
        main_agents: int,
        idle_timeout: float,
    ) -> None:
        self.op, self.plan, self.sim, self.held = op, plan, sim, held
        self.idle_timeout = idle_timeout
        self.result = ChurnResult(plan, main_agents)

    async def run(self) -> ChurnResult:
        try:
            return await self._run()
        finally:
            await self.sim.kill()  # only if it overran or the phase failed

    async def _run(self) -> ChurnResult:
        base = self.held(await scrape(self.op.api_url))
        wanted = base + self.plan.agents - away_allowance(self.plan)
        started = time.monotonic()
        await self.sim.start()
        end = started + self.sim.plan.duration - 1  # the goodbyes begin at the planned end
        connected = await wait_metrics(
            self.op.api_url, lambda m: self.held(m) >= wanted, end - time.monotonic()
        )
        r = self.result
        r.connected_seconds = None if connected is None else connected - started
        await self._sample_until(end)
        report = await self.sim.wait()
        r.disconnects = int(report.get("churn_disconnects", 0))
        await wait_metrics(self.op.api_url, idle_queues, self.idle_timeout)
        return r

    async def _sample_until(self, end: float) -> None:
        gc0, t0 = gc_totals(self.op), time.monotonic()
        while True:
            self.result.samples.append(await self._sample(time.monotonic() - t0))
            left = end - time.monotonic()
            if left <= 0:
                break
            await asyncio.sleep(min(self.plan.interval, left))
        self.result.window_seconds = time.monotonic() - t0
        await asyncio.sleep(1.1)  # the gc stats file is rewritten every second
        self.result.gc = gcwatch.between(gc0, gc_totals(self.op))

    async def _sample(self, seconds: float) -> ChurnSample:
        m = await scrape(self.op.api_url)
        gc = gc_totals(self.op)
        return ChurnSample(
            seconds=seconds,
            rss=sample(operator_pid(self.op)).rss_bytes,
            sessions_opened=m.value("opamp_agent_phase_transitions_total", phase="Online"),
            sessions_ended=m.value("opamp_agent_connection_duration_seconds_count"),
            freezes=m.value("opamp_gc_policy_actions_total", action="freeze"),
            thaws=m.value("opamp_gc_policy_actions_total", action="thaw"),
            gc_seconds=None if gc is None else sum(gc["seconds"]),
            long_pauses=None if gc is None else int(gc.get("long", 0)),
        )
