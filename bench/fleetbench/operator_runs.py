"""The operator under simulated load: the fleet scenario (saturation: see saturation.py).

Above `agents_per_simulator` the main fleet runs in several simulator processes (simfleet.py).
Timeouts grow with the fleet: at 50,000 agents the CRs alone take ~15 minutes to write.

Fleet scenario (one operator process, its own namespace and database), over WebSocket or
plain HTTP (every agent polls at its heartbeat interval; "connected" means Online there):
  ramp     N - S agents connect (30 s heartbeats, the server's offer); wait until every CR
           is Online and the write queues are empty
  steady   a window with nothing but heartbeats: CPU, RSS, Kubernetes writes, statements
  rest     sequential GET /api/v1/agents/{id}/status on loopback
  churn    (opt-in) K agents beside the main fleet keep leaving and coming back for a
           window: the operator's RSS every 10 s should stay flat (churn.py); the main
           fleet is K smaller, so the fleet is still N agents
  offline  S more agents connect, then go silent (a WebSocket left open; an HTTP agent stops
           polling); the CR watch times Offline
  storm    SIGTERM the operator and start it again: every agent reconnects at once (over
           HTTP: with its next poll); time until every CR is Online with a new session,
           then check the history rows
  adoption a second replica starts, the first is SIGKILLed: time until the survivor moved
           every CR the first held to Offline replica_lost (adoption.py)
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import api_latency

from . import gcwatch, profiling
from .adoption import AdoptionResult, AdoptionRun
from .churn import ChurnPlan, ChurnResult, ChurnRun, churn_sim_plan
from .crwatch import CrWatch
from .pgstats import HistoryCheck, history_check
from .procstat import PeakRss, machine_busy_percent, machine_sample, sample
from .simfleet import DEFAULT_PER_SIMULATOR, SimulatorGroup
from .stack import (
    LeaseFigures,
    Metrics,
    OperatorOptions,
    SimPlan,
    Simulator,
    TestBed,
    agents_held,
    fleet_label,
    gc_totals,
    idle_queues,
    lease_figures,
    opamp_url,
    operator_pid,
    operator_process,
    scrape,
    wait_metrics,
    writes_by_kind,
)
from .window import Window, measure_window

FLEET_TIMEOUT_S = 420.0  # settle, storm, adoption: this plus a second per 50 agents
IDLE_TIMEOUT_S = 120.0  # queues empty: this plus a second per 100 agents
RUN_MARGIN_S = 600.0  # the main fleet is killed when the scenario ends, long before its end
SILENT_RAMP_S = 30.0  # silent agents connect over this long, so their deadlines spread out
SILENT_AFTER_S = 35.0
SILENT_MARGIN_S = 25.0  # after the last deadline, before the silent run ends


@dataclass(frozen=True)
class FleetPlan:
    agents: int
    silent: int
    ramp: float = 200.0
    steady_seconds: float = 60.0
    rest_requests: int = 2000
    profile: bool = False
    storm: bool = True
    adoption: bool = True
    transport: str = "ws"  # or "http": every agent polls (a POST per heartbeat)
    churn: ChurnPlan | None = None
    agents_per_simulator: int = DEFAULT_PER_SIMULATOR

    @property
    def label(self) -> str:
        return fleet_label(self.agents, self.transport)

    @property
    def main_agents(self) -> int:
        """The fleet less the silent and the churning agents (those come and go later)."""
        return self.agents - self.silent - (self.churn.agents if self.churn else 0)

    @property
    def fleet_timeout(self) -> float:
        """Every CR Online (after the ramp, after the storm), every CR adopted."""
        return FLEET_TIMEOUT_S + self.agents / 50

    @property
    def idle_timeout(self) -> float:
        return IDLE_TIMEOUT_S + self.agents / 100

    @property
    def main_run_limit(self) -> float:
        """How long the main fleet's simulators may run: every phase at its bound."""
        ramp = self.main_agents / self.ramp + 120
        churn = 0.0
        if self.churn is not None:
            churn = churn_sim_plan(self.churn, self.ramp).duration + self.idle_timeout
        phases = 3 * (self.fleet_timeout + self.idle_timeout) + self.steady_seconds + churn
        return ramp + phases + RUN_MARGIN_S


@dataclass
class StormResult:
    agents: int
    stop_seconds: float  # SIGTERM to exit
    restart_seconds: float  # spawn to /readyz
    connected_seconds: float | None  # SIGTERM to every agent connected again
    online_seconds: float | None  # SIGTERM to every CR Online with a new session
    kube_writes: dict[str, float]  # by the new process until every CR was Online
    peak_rss: int
    history: HistoryCheck | None
    rejected_registrations: float


@dataclass
class FleetResult:
    plan: FleetPlan
    baseline_rss: int = 0
    connected_seconds: float | None = None
    cr_online_seconds: float | None = None
    ramp_kube_writes: dict[str, float] = field(default_factory=dict)
    peak_connections: float = 0.0
    ramp_peak_rss: int = 0
    ramp_lease: LeaseFigures | None = None
    lease: LeaseFigures | None = None  # from the start to the end of the offline phase
    steady: Window | None = None
    rest: Any = None  # api_latency.Result
    rest_machine_busy_pct: float = 0.0
    rest_gc: gcwatch.GcWindow | None = None
    churn: ChurnResult | None = None
    simulators: int = 1  # processes of the main fleet
    offline_delays: list[float] = field(default_factory=list)
    offline_missed: int = 0
    storm: StormResult | None = None
    adoption: AdoptionResult | None = None
    profiles: dict[str, Path] = field(default_factory=dict)


class FleetScenario:
    def __init__(
        self, bed: TestBed, plan: FleetPlan, workdir: Path, options: OperatorOptions
    ) -> None:
        self.bed = bed
        self.plan = plan
        self.workdir = workdir
        self.options = options
        self.result = FleetResult(plan)
        self.namespace, self.database = bed.new_target(plan.label)
        self.op = operator_process(
            bed, self.namespace, self.database, options, workdir / f"operator-{plan.label}.log"
        )
        assert bed.endpoints is not None
        self.watch = CrWatch(bed.endpoints, self.namespace)
        self.main: SimulatorGroup | None = None
        self._all_connected = 0.0  # monotonic

    def say(self, text: str) -> None:
        print(f"[fleet {self.plan.label}] {text}", flush=True)

    async def run(self) -> FleetResult:
        try:
            await self.op.start(within=120)
            await self.watch.start()
            await asyncio.sleep(2)
            self.result.baseline_rss = sample(operator_pid(self.op)).rss_bytes
            await self._ramp()
            await self._steady()
            await self._rest()
            if self.plan.churn is not None:
                await self._churn(self.plan.churn)
            await self._offline()
            self.result.lease = lease_figures(await scrape(self.op.api_url))
            if self.plan.storm:
                await self._storm()
            if self.plan.adoption:
                await self._adoption()
        finally:
            if self.main is not None:
                await self.main.kill()
            await self.op.cleanup()
            await self.watch.stop()
        return self.result

    @property
    def main_agents(self) -> int:
        return self.plan.main_agents

    @property
    def url(self) -> str:
        return opamp_url(self.op, self.plan.transport)

    def held(self, metrics: Metrics) -> float:
        return agents_held(metrics, self.plan.transport)

    async def _ramp(self) -> None:
        n = self.main_agents
        plan = SimPlan(agents=n, duration=self.plan.main_run_limit, ramp=self.plan.ramp)
        self.main = SimulatorGroup(
            plan, self.url, self.workdir, f"sim-{self.plan.label}-main",
            self.plan.agents_per_simulator,
        )  # fmt: skip
        rss = PeakRss(operator_pid(self.op))
        rss.start()
        started = time.monotonic()
        await self.main.start()
        self.result.simulators = len(self.main.pids)
        self.say(f"ramping {n} agents at {self.plan.ramp:g}/s ({len(self.main.pids)} simulators)")
        connected = await wait_metrics(
            self.op.api_url, lambda m: self.held(m) >= n, n / self.plan.ramp + 120
        )
        self.result.connected_seconds = None if connected is None else connected - started
        self._all_connected = connected or time.monotonic()
        online = await self.watch.wait_for(
            lambda: self.watch.count(lambda _, v: v.phase == "Online") >= n,
            self.plan.fleet_timeout,
        )
        self.result.cr_online_seconds = None if online is None else online - started
        await wait_metrics(self.op.api_url, idle_queues, self.plan.idle_timeout)
        metrics = await scrape(self.op.api_url)
        self.result.ramp_kube_writes = writes_by_kind(metrics)
        self.result.ramp_lease = lease_figures(metrics)
        self.result.peak_connections = self.held(metrics)
        self.result.ramp_peak_rss = await rss.stop()
        self.say(
            f"connected after {self.result.connected_seconds}, CRs Online after "
            f"{self.result.cr_online_seconds} s, writes {self.result.ramp_kube_writes}"
        )

    async def _steady(self) -> None:
        assert self.main is not None
        seconds = self.plan.steady_seconds
        # Steady means every agent is past its first heartbeat and its CR past its first
        # lastSeenAt refresh: from then on the pattern repeats.
        warm = max(self.options.heartbeat_interval, self.options.last_seen_refresh or 0.0)
        await asyncio.sleep(max(0.0, self._all_connected + warm - time.monotonic()))
        self.say(f"steady window {seconds:g} s")
        profile = self._profile("steady", seconds) if self.plan.profile else None
        self.result.steady = window = await measure_window(
            self.op, self.bed, self.database.database,
            sim_pids=self.main.pids, seconds=seconds, agents=self.main_agents,
        )  # fmt: skip
        self.say(f"steady: {window}")
        if profile is not None:
            await profile

    async def _rest(self) -> None:
        ids = [a for a, v in self.watch.crs.items() if v.phase == "Online"]
        sample_ids = random.Random(1).sample(ids, min(len(ids), 2000))
        paths = [f"/api/v1/agents/{agent_id}/status" for agent_id in sample_ids]
        before, gc0 = machine_sample(), gc_totals(self.op)
        self.result.rest = await api_latency._measure(
            self.op.config.api_port, paths, self.plan.rest_requests, self.plan.agents,
            "GET /agents/{id}/status",
        )  # fmt: skip
        self.result.rest_machine_busy_pct = machine_busy_percent(before, machine_sample())
        await asyncio.sleep(1.1)
        self.result.rest_gc = gcwatch.between(gc0, gc_totals(self.op))
        self.say(f"rest: {self.result.rest}")

    async def _churn(self, plan: ChurnPlan) -> None:
        sim = Simulator(
            churn_sim_plan(plan, self.plan.ramp), self.url, self.workdir,
            f"sim-{self.plan.label}-churn",
        )  # fmt: skip
        self.say(
            f"churn: {plan.agents} agents beside {self.main_agents} for {plan.window:g} s, "
            f"{plan.rate:g} disconnects/s, back after {plan.delay:g} s"
        )
        run = ChurnRun(
            self.op, plan, sim, self.held,
            main_agents=self.main_agents, idle_timeout=self.plan.idle_timeout,
        )  # fmt: skip
        self.result.churn = churn = await run.run()
        self.say(
            f"churn: RSS slope {churn.rss_slope_mib} MiB/10 min over {len(churn.settled)} "
            f"samples, {churn.disconnects} disconnects, gc {churn.gc}"
        )

    async def _offline(self) -> None:
        k = self.plan.silent
        if not k:
            return
        duration = SILENT_AFTER_S + self.options.heartbeat_timeout + SILENT_MARGIN_S
        plan = SimPlan(
            agents=k, duration=duration, ramp=k / SILENT_RAMP_S, silent=k,
            silent_after=SILENT_AFTER_S, name_prefix="silent", seed=2,
        )  # fmt: skip
        sim = Simulator(plan, self.url, self.workdir, f"sim-{self.plan.label}-silent")
        self.say(f"{k} agents connect over {SILENT_RAMP_S:g} s, then go silent")
        await sim.start()
        await asyncio.sleep(SILENT_AFTER_S - 2)  # all connected, none silent yet
        held = self.held(await scrape(self.op.api_url))
        self.result.peak_connections = max(self.result.peak_connections, held)
        report = await sim.wait()
        await asyncio.sleep(2)
        for agent in report["silent"]:
            last = agent["last_message_wall"]
            if last is None:
                continue
            deadline = last + self.options.heartbeat_timeout
            seen = self.watch.first_seen(
                agent["instance_uid"], "Offline", agent["went_silent_wall"]
            )
            if seen is None:
                self.result.offline_missed += 1
            else:
                self.result.offline_delays.append(seen - deadline)
        await wait_metrics(self.op.api_url, idle_queues, self.plan.idle_timeout)

    async def _storm(self) -> None:
        ids = [a for a, v in self.watch.crs.items() if v.phase == "Online"]
        n = len(ids)
        self.say(f"storm: restarting the operator with {n} agents connected")
        t_term = time.monotonic()
        await self.op.terminate(within=90)
        t_stopped = time.monotonic()
        spawn_wall = time.time()
        t_spawn = time.monotonic()
        await self.op.start(within=120)
        t_ready = time.monotonic()
        rss = PeakRss(operator_pid(self.op))
        rss.start()
        profile = self._profile("storm", 60) if self.plan.profile else None
        since = math.floor(spawn_wall)
        wanted = set(ids)

        def reconnected() -> bool:
            return (
                self.watch.count(
                    lambda a, v: (
                        a in wanted and v.phase == "Online" and (v.last_connected_at or 0) >= since
                    )
                )
                >= n
            )

        connected_task = asyncio.create_task(
            wait_metrics(self.op.api_url, lambda m: self.held(m) >= n, self.plan.fleet_timeout)
        )
        online = await self.watch.wait_for(reconnected, self.plan.fleet_timeout)
        connected = await connected_task
        metrics = await scrape(self.op.api_url)
        peak = await rss.stop()
        if profile is not None:
            await profile
        await wait_metrics(self.op.api_url, idle_queues, self.plan.idle_timeout)
        await asyncio.sleep(3)  # one more flush interval, and then some
        history = await history_check(self.database, ids, spawn_wall)
        self.result.storm = StormResult(
            agents=n,
            stop_seconds=t_stopped - t_term,
            restart_seconds=t_ready - t_spawn,
            connected_seconds=None if connected is None else connected - t_term,
            online_seconds=None if online is None else online - t_term,
            kube_writes=writes_by_kind(metrics),
            peak_rss=peak,
            history=history,
            rejected_registrations=metrics.value("opamp_registrations_rejected_total"),
        )
        self.say(f"storm: {self.result.storm}")

    async def _adoption(self) -> None:
        self.say("adoption: starting a second replica, then SIGKILL the first")
        run = AdoptionRun(
            self.bed, self.namespace, self.database, self.options,
            lost=self.op, fleet=self.main, watch=self.watch,
            log=self.workdir / f"operator-{self.plan.label}-survivor.log",
            within=self.plan.fleet_timeout,
        )  # fmt: skip
        self.result.adoption = result = await run.run()
        self.say(
            f"adoption: {result.adopted} of {result.agents} CRs, first {result.first_seconds} s, "
            f"last {result.last_seconds} s, rows {result.rows}, timed out {result.timed_out}"
        )

    def _profile(self, name: str, seconds: float) -> asyncio.Task[Path | None]:
        out = self.workdir / f"profile-{self.plan.label}-{name}.txt"
        self.result.profiles[name] = out
        return asyncio.create_task(profiling.record(operator_pid(self.op), seconds, out))
