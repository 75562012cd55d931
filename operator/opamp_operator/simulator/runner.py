"""One simulator run: ramp agents up, churn and silence some, stop on time, report.

Everything runs in the caller's event loop: one task per agent plus four
helpers (launcher, churner, silencer, loop-lag probe). The load phase lasts
`duration`; stopping (goodbyes, then abort whatever is left) takes at most
`stop_grace` plus one second, so a run always ends.
"""

from __future__ import annotations

import asyncio
import logging
import random
import resource
from typing import Final

import aiohttp

from opamp_operator.simulator import gctune, http, ws
from opamp_operator.simulator.agent import AgentLogic, AgentState, Mode
from opamp_operator.simulator.config import (
    SimulationConfig,
    SimulationConfigError,
    ensure_loopback,
)
from opamp_operator.simulator.report import SilentAgent, SimulationReport
from opamp_operator.simulator.stats import LatencyHistogram, Stats

log = logging.getLogger("opamp_operator.simulator")

#: File descriptors kept free for everything that is not an agent connection.
_SPARE_FDS: Final = 256
_LAG_PROBE_S: Final = 0.05
#: Agents started per loop turn when ramping without a limit, so the loop keeps breathing.
_LAUNCH_BATCH: Final = 200
#: Random draws per churn tick before giving up on finding a connected agent.
_CHURN_DRAWS: Final = 16
_CANCEL_WAIT_S: Final = 1.0


async def run_simulation(config: SimulationConfig) -> SimulationReport:
    """Run a simulated fleet against `config.url` and return what happened.

    Raises SimulationConfigError before any connection when the target is not
    loopback (with loopback_only) or the file descriptor limit is too low.
    """
    if config.loopback_only:
        await ensure_loopback(config.effective_url)
    _ensure_fd_limit(config)
    loop = asyncio.get_running_loop()
    logic = AgentLogic(config, Stats(config.agents), random.Random(config.seed), loop.time)
    return await _Run(logic).execute()


def _ensure_fd_limit(config: SimulationConfig) -> None:
    """Raise the soft RLIMIT_NOFILE when needed; refuse a run that cannot fit."""
    sockets = config.agents if config.effective_transport == "ws" else config.http_connections
    needed = sockets + _SPARE_FDS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise SimulationConfigError(
            f"{sockets} connections need {needed} file descriptors; the hard limit is {hard}"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    log.info("raised the open file limit from %d to %d", soft, needed)


class _Run:
    def __init__(self, logic: AgentLogic) -> None:
        self.logic = logic
        self.config = logic.config
        self.stats = logic.stats
        self.agents: list[AgentState] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.side_tasks: set[asyncio.Task[None]] = set()  # churn goodbyes in flight
        self.silent: list[AgentState] = []
        self.session: aiohttp.ClientSession | None = None
        self.start = 0.0
        self.launched_at: float | None = None
        self.transport = self.config.effective_transport

    async def execute(self) -> SimulationReport:
        self.start = self.logic.now()
        started_wall = self.logic.wall()
        if self.transport == "http":
            self.session = http.new_session(self.logic)
        thresholds = gctune.tune() if self.config.tune_gc else None
        helpers = [
            asyncio.create_task(self._launch(), name="sim-launch"),
            asyncio.create_task(self._churn(), name="sim-churn"),
            asyncio.create_task(self._silence(), name="sim-silence"),
            asyncio.create_task(self._probe_lag(), name="sim-lag"),
        ]
        if thresholds is not None:
            helpers.append(asyncio.create_task(gctune.freeze_while(self._ramping), name="sim-gc"))
        connected_at_end = 0
        try:
            await self.logic.sleep_until(self.start + self.config.duration)
            connected_at_end = self.stats.connected
        finally:
            await self._stop(helpers)
            if thresholds is not None:
                gctune.restore(thresholds)
        return self._report(started_wall, connected_at_end)

    # -- load
    async def _launch(self) -> None:
        ramp = self.config.ramp
        for index in range(self.config.agents):
            if ramp > 0:
                await self.logic.sleep_until(self.start + index / ramp)
            elif index and index % _LAUNCH_BATCH == 0:
                await asyncio.sleep(0)
            agent = self.logic.new_agent(index)
            self.agents.append(agent)
            self.tasks.append(asyncio.create_task(self._agent_main(agent)))
        self.launched_at = self.logic.now()

    async def _agent_main(self, agent: AgentState) -> None:
        try:
            if self.session is not None:
                await http.run_http_agent(self.logic, agent, self.session)
            else:
                await ws.run_ws_agent(self.logic, agent)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not take the fleet down; counted, logged once
            self.logic.failed(agent, f"internal_{type(exc).__name__}", detail=repr(exc))
            log.debug("simulated agent %d crashed", agent.index, exc_info=True)

    def _eligible(self, agent: AgentState) -> bool:
        """Connected and running (over WebSocket: with its connection at hand)."""
        if agent.mode is not Mode.RUNNING or not agent.connected:
            return False
        return self.session is not None or agent.conn is not None

    async def _churn(self) -> None:
        if self.config.churn <= 0:
            return
        rng = self.logic.rng
        while True:
            await asyncio.sleep(rng.expovariate(self.config.churn))  # Poisson arrivals
            for _ in range(_CHURN_DRAWS if self.agents else 0):
                agent = self.agents[rng.randrange(len(self.agents))]
                if self._eligible(agent):
                    self.logic.churn(agent)
                    self._spawn_goodbye(agent)
                    break

    def _spawn_goodbye(self, agent: AgentState) -> None:
        task = asyncio.create_task(self._goodbye(agent))
        self.side_tasks.add(task)
        task.add_done_callback(self.side_tasks.discard)

    async def _goodbye(self, agent: AgentState) -> None:
        if self.session is not None:
            await http.goodbye(self.logic, agent, self.session)
        elif agent.conn is not None:
            await ws.goodbye(self.logic, agent, agent.conn)

    async def _silence(self) -> None:
        wanted = self.config.silent_agents
        if not wanted:
            return
        await self.logic.sleep_until(self.start + self.config.silent_at)
        # Only connected agents can go silent "with the socket open"; wait for
        # more to connect when too few are (e.g. silent_after=0 during the ramp).
        while len(self.silent) < wanted:
            candidates = [a for a in self.agents if self._eligible(a)]
            count = min(wanted - len(self.silent), len(candidates))
            for agent in self.logic.rng.sample(candidates, count):
                self.logic.silence(agent)
                self.silent.append(agent)
            if len(self.silent) < wanted:
                await asyncio.sleep(0.1)

    def _ramping(self) -> bool:
        """Still launching, or launched less than a connect timeout ago and not all in."""
        if self.launched_at is None:
            return True
        if self.stats.connected >= self.config.agents:
            return False
        return self.logic.now() < self.launched_at + self.config.connect_timeout

    async def _probe_lag(self) -> None:
        while True:
            before = self.logic.now()
            await asyncio.sleep(_LAG_PROBE_S)
            self.stats.loop_lag.record(self.logic.now() - before - _LAG_PROBE_S)

    # -- stop
    async def _stop(self, helpers: list[asyncio.Task[None]]) -> None:
        self.logic.stopping.set()
        for task in helpers:
            task.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        for agent in self.silent:
            _abort(agent)  # a hung agent does not say goodbye
        leaving = [a for a in self.agents if self._eligible(a)]
        for agent in self.agents:
            if agent.mode in (Mode.RUNNING, Mode.CHURNING):
                agent.mode = Mode.STOPPING
        goodbyes = [asyncio.create_task(self._goodbye(agent)) for agent in leaving]
        if not await _wait(goodbyes, self.config.stop_grace):
            log.warning("goodbyes did not finish within %.1f s; aborting", self.config.stop_grace)
        for agent in self.agents:
            _abort(agent)
        pending = [*self.tasks, *self.side_tasks, *goodbyes]
        for task in pending:
            task.cancel()
        await _wait(pending, _CANCEL_WAIT_S)
        if self.session is not None:
            await self.session.close()

    # -- report
    def _report(self, started_wall: float, connected_at_end: int) -> SimulationReport:
        stats = self.stats
        all_connected = stats.first_all_connected
        heartbeat = (
            f"{self.config.heartbeat:g}s"
            if self.config.heartbeat is not None
            else "server offer (default 30s)"
        )
        return SimulationReport(
            url=self.config.effective_url,
            transport=self.transport,
            agents=self.config.agents,
            heartbeat=heartbeat,
            duration_s=self.config.duration,
            elapsed_s=self.logic.now() - self.start,
            peak_connected=stats.peak_connected,
            connected_at_end=connected_at_end,
            all_connected_after_s=None if all_connected is None else all_connected - self.start,
            messages_sent=stats.messages_sent,
            replies_received=stats.replies_received,
            reconnects=stats.reconnects,
            churn_disconnects=stats.churn_disconnects,
            full_state_requests=stats.full_state_requests,
            heartbeats_late=stats.heartbeats_late,
            latency_p50_ms=_ms(stats.latency, 50),
            latency_p99_ms=_ms(stats.latency, 99),
            latency_max_ms=_ms(stats.latency, 100),
            loop_lag_p99_ms=_ms(stats.loop_lag, 99),
            loop_lag_max_ms=_ms(stats.loop_lag, 100),
            errors=stats.errors,
            silent=tuple(self._silent_record(agent, started_wall) for agent in self.silent),
            started_monotonic=self.start,
            started_wall=started_wall,
        )

    def _silent_record(self, agent: AgentState, started_wall: float) -> SilentAgent:
        def wall(monotonic: float) -> float:
            return started_wall + (monotonic - self.start)

        last = agent.last_sent or None
        return SilentAgent(
            instance_uid=self.logic.uid_text(agent),
            went_silent_monotonic=agent.silent_at,
            went_silent_wall=wall(agent.silent_at),
            last_message_monotonic=last,
            last_message_wall=None if last is None else wall(last),
            server_closed_monotonic=agent.closed_at or None,
        )


def _ms(histogram: LatencyHistogram, q: float) -> float | None:
    seconds = histogram.max if q >= 100 and histogram.count else histogram.percentile(q)
    return None if seconds is None else round(seconds * 1000, 3)


def _abort(agent: AgentState) -> None:
    if agent.conn is not None:
        agent.conn.transport.abort()


async def _wait(tasks: list[asyncio.Task[None]], seconds: float) -> bool:
    """Wait at most `seconds` for `tasks`; True when all finished. Never raises their errors."""
    if not tasks:
        return True
    done, pending = await asyncio.wait(tasks, timeout=seconds)
    for task in done:
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio does not log "never retrieved"
    return not pending


__all__ = ["run_simulation"]
