"""The operator process: every component wired together, started and stopped in order.

Data flows one way: transport -> fleet -> event bus -> subscribers (store, Kubernetes
mirror, metrics, API index). Start order makes the sinks ready before agents can connect;
stop order lets every session end as `operator_shutdown` and be written before exit.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import asyncpg
import kopf
from kubernetes import client as k8s

from .api.auth import KubeAuthorizer
from .api.history import StoreHistoryReader
from .api.server import ApiServer
from .config import ListenerSettings, Settings, StoreSettings
from .eventloop import loop_factory
from .fdlimit import connection_capacity, raise_open_files_limit
from .fleet.clock import Clock, SystemClock
from .fleet.events import EventBus
from .fleet.identity import DuplicateUid
from .fleet.ledger import NO_LEDGER, SessionLedger
from .fleet.registry import Fleet
from .fleet.ticker import run_deadline_ticker
from .fleet_metrics import (
    FleetMetrics,
    count_bad_input,
    count_components_request,
    count_duplicate,
    count_rejected_registration,
    count_slow_agent,
)
from .gcpolicy import (
    GcPolicy,
    Reading,
    install_pause_metrics,
    pause_collector,
    read_blocks,
    remove_pause_metrics,
    run_gc_policy,
)
from .kube.api import load_credentials
from .kube.api.leases import LeaseApi
from .kube.api.resources import KubeApi
from .kube.gitops.controller import GitOpsController
from .kube.gitops.outcomes import ConfigOutcomes
from .kube.leases.keeper import LeaseKeeper, renewal_timeout
from .kube.liveness.adoption import Adopter
from .kube.mirror.statuswriter import StatusWriter
from .kube.pods.linker import PodLinker
from .kube.shapes.podref import PodLinks
from .kube.wiring.agentwatch import AgentWatch
from .kube.wiring.kopfsetup import build_registry, run_kopf
from .kube.writes.gate import WriteGate
from .reviews import ReviewedUser, token_review
from .store.migrations import migrate
from .store.pool import StoreUnavailable, create_pool
from .store.recovery import close_lost_replica_sessions, close_orphaned_sessions
from .store.retention import HistoryPruner
from .store.writer import StoreWriter
from .transport import OpAMPListener
from .transport.auth import ReviewToken
from .transport.websocket import protocol_log

log = logging.getLogger(__name__)

DATABASE_STARTUP_WAIT_SECONDS = 60.0


@dataclass
class _Running:
    """What has started (None: not yet, or never): for readiness and the wiring."""

    pool: asyncpg.Pool | None = None
    store: StoreWriter | None = None
    kube: KubeApi | None = None
    mirror: StatusWriter | None = None
    lease: LeaseKeeper | None = None
    pods: PodLinker | None = None
    gitops: GitOpsController | None = None
    listener: OpAMPListener | None = None
    api: ApiServer | None = None


class OperatorApp:
    """Build with settings; `await start()`, run Kopf with `kopf_registry`, `await stop()`."""

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.bus = EventBus()
        self.fleet = Fleet(
            settings.fleet, self.clock, self.bus,
            on_rejected=count_rejected_registration, on_slow_agent=count_slow_agent,
            on_duplicate=self._on_duplicate, on_bad_input=count_bad_input,
            on_components_requested=count_components_request,
        )  # fmt: skip
        # Subscribe before anything can publish, so no subscriber misses the first events.
        self._store_events = self.bus.subscribe("store", settings.store.queue_size)
        self._kube_events = self.bus.subscribe("kube", settings.kube.write_queue_size)
        self._metric_events = self.bus.subscribe("metrics", 100_000)
        self._pod_events = (
            self.bus.subscribe("pods", settings.kube.write_queue_size)
            if settings.kube.link_pods
            else None
        )
        self.running = _Running()
        self.kopf_registry: kopf.OperatorRegistry | None = None
        # Each part registers its own stop as it starts: `stop()` unwinds them in reverse,
        # so the start order below *is* the reverse of the stop order, and a start that
        # failed half-way stops exactly what did start.
        self._stops = AsyncExitStack()
        self._flushed = True  # the status writer wrote everything before it stopped
        self._stop_deadline: float | None = None  # loop time: settings.process.shutdown_seconds
        self._stop_times: list[tuple[str, float]] = []  # (part, seconds) in the stop order
        self._resume_collector: Callable[[], None] | None = None
        self._stopped = False

    async def start(self) -> None:
        """Start every part; the order is the reverse of the stop order (see `stop`)."""
        for warning in self.settings.fleet.warnings():
            log.warning("settings: %s", warning)
        pool = await self._open_store()
        api = await self._connect_kube()
        await self._start_api(pool)
        gate = WriteGate.for_settings(api, self.settings.kube)  # every CR write, one pace
        await self._start_lease(api, gate, pool)
        self._spawn(run_deadline_ticker(self.fleet), "deadline-ticker")
        self._spawn(FleetMetrics(self._metric_events, self.bus).run(), "fleet-metrics")
        self._start_gc_policy()
        await self._start_writers(pool, api, gate)
        await self._start_listener()

    async def _start_listener(self) -> None:
        # New sessions' rows are committed before their first replies.
        ledger: SessionLedger = self.running.store or NO_LEDGER
        review = await self._agent_token_review()
        listener = OpAMPListener(self._listener_settings(), self.fleet, ledger, review)
        await listener.start()
        self.running.listener = listener
        self._on_stop("listener", self.end_sessions)
        log.info(
            "OpAMP listening on %s:%s%s (WebSocket and HTTP); API on %s:%s",
            self.settings.listener.host, listener.port, self.settings.listener.path,
            self.settings.api.host, self.running.api.port if self.running.api else "-",
        )  # fmt: skip

    def _listener_settings(self) -> ListenerSettings:
        """The listener's settings, its connection cap from the open-files limit unless set."""
        settings = self.settings.listener
        if settings.max_connections is not None:
            return settings
        limit = raise_open_files_limit()
        capacity = connection_capacity(limit)
        agents = self.settings.fleet.max_agents
        if capacity is not None and capacity < agents:
            log.warning(
                "open-files limit %d: at most %d agent connections at once (--max-agents is "
                "%d); raise the container's limit (RLIMIT_NOFILE) for more",
                limit, capacity, agents,
            )  # fmt: skip
        return replace(settings, max_connections=capacity)

    def _start_gc_policy(self) -> None:
        """Collector pauses as a metric, and the freeze/thaw policy (gcpolicy.py)."""
        self._stops.callback(remove_pause_metrics, install_pause_metrics())
        fleet = self.fleet

        def read() -> Reading:
            opened, closed = fleet.sessions_opened, fleet.sessions_closed
            return Reading(time.monotonic(), opened, closed, len(fleet), read_blocks())

        policy = GcPolicy(self.settings.gc, read())
        interval = self.settings.gc.check_interval_seconds
        self._spawn(run_gc_policy(policy, read, interval=interval), "gc-policy")

    async def end_sessions(self) -> None:
        """Stop accepting and end every session as operator_shutdown (idempotent); the
        close handshakes get at most half the shutdown budget."""
        self._begin_stop()
        self.fleet.begin_shutdown()  # no heartbeat times out while the sockets close
        if self.running.listener is not None:
            half = self.settings.process.shutdown_seconds / 2
            await self.running.listener.stop(reason="operator_shutdown", within_seconds=half)
        self.fleet.shutdown()  # HTTP sessions have no socket: end them here

    async def stop(self) -> None:
        """Stop in the reverse of the start order: end every session as operator_shutdown
        (listener), stop Pod linking and GitOps, flush history and CRs, stop the background
        tasks, release the Lease, close the REST API, the Kubernetes client and the pool."""
        if self._stopped:
            return
        self._begin_stop()
        try:
            await self._stops.aclose()
        finally:
            if self._resume_collector is not None:
                self._resume_collector()
        self._stopped = True
        assert self._stop_deadline is not None
        took = asyncio.get_running_loop().time() - (
            self._stop_deadline - self.settings.process.shutdown_seconds
        )
        parts = ", ".join(f"{part} {seconds:.1f} s" for part, seconds in self._stop_times
                          if seconds >= 0.05)  # fmt: skip
        log.info("stopped in %.1f s: %d agents known, all sessions closed (%s)",
                 took, len(self.fleet), parts or "every part at once")  # fmt: skip

    def _begin_stop(self) -> None:
        """The shutdown budget starts with whichever comes first: ending sessions, or stop.
        No automatic collection from then on: at 10,000 agents the closes' garbage started
        full collections and a re-freeze (0.2-1 s each) inside the budget, and a process
        about to exit gains nothing from them."""
        if self._stop_deadline is None:
            budget = self.settings.process.shutdown_seconds
            self._stop_deadline = asyncio.get_running_loop().time() + budget
            self._resume_collector = pause_collector()

    def _on_stop(self, part: str, stop: Callable[..., Awaitable[object]], *args: Any) -> None:
        """Register `stop(*args)` at this place in the stop order, timed, so the "stopped"
        line says where the shutdown budget went."""

        async def timed() -> None:
            started = time.perf_counter()
            try:
                await stop(*args)
            finally:
                self._stop_times.append((part, time.perf_counter() - started))

        self._stops.push_async_callback(timed)

    async def _stop_mirror(self, mirror: StatusWriter) -> None:
        # Last in the budget, after the history flush: CRs the writer cannot write in time
        # are the adopting replica's (our Lease is then left to expire) or the next process's.
        assert self._stop_deadline is not None
        left = self._stop_deadline - asyncio.get_running_loop().time()
        self._flushed = await mirror.stop(within_seconds=max(1.0, left))

    async def _release_lease(self, lease: LeaseKeeper) -> None:
        """Delete our Lease once every CR says what we ended; else let a survivor adopt us."""
        if self._flushed:
            await lease.release()
        else:
            log.warning("Lease %s left to expire: a surviving replica adopts the CRs this "
                        "process could not write", lease.replica_id)  # fmt: skip
        await lease.api.close()

    def _on_duplicate(self, found: DuplicateUid) -> None:
        count_duplicate(found)
        if self.running.gitops is not None:
            self.running.gitops.restarts.notices.duplicate(found)  # an Event on the original

    def readiness(self) -> dict[str, bool]:
        running = self.running
        return {
            "listener": bool(running.listener and running.listener.ready),
            "database": bool(running.store and running.store.ready),
            "kubernetes": bool(running.mirror and running.mirror.ready),
            "lease": bool(running.lease and running.lease.current),
        }

    async def _open_store(self) -> asyncpg.Pool:
        """The pool, migrated, with a previous run's open rows closed (writers start later)."""
        settings = self.settings.store
        pool = await _connect_with_patience(settings)
        self.running.pool = pool
        self._on_stop("database pool", pool.close)
        if settings.migrate_on_start:
            applied = await migrate(pool, "up", directory=settings.migrations_dir)
            if applied:
                log.info("applied migrations %s", applied)
        closed = await close_orphaned_sessions(
            pool, self.clock.now(), replica_id=self.settings.kube.replica_id
        )
        if closed:
            log.warning("closed %d connection rows left open by a previous run", closed)
        if settings.history_retention_seconds is not None:
            self._spawn(HistoryPruner(settings, pool, self.clock).run(), "history-retention")
        return pool

    async def _connect_kube(self) -> KubeApi:
        api = await KubeApi.connect(self.settings.kube)
        self.running.kube = api
        self._on_stop("kubernetes client", api.close)
        return api

    async def _start_writers(self, pool: asyncpg.Pool, api: KubeApi, gate: WriteGate) -> None:
        """History, CR status, GitOps and Pod linking: all fed by the fleet's events."""
        settings = self.settings.kube
        links = PodLinks() if self._pod_events is not None else None
        outcomes = ConfigOutcomes()  # GitOps records, the status writer reads
        mirror = StatusWriter(
            settings, self.fleet, self._kube_events, api, self.clock,
            gate=gate, pod_links=links, remote_config=outcomes,
        )  # fmt: skip
        await mirror.start()
        self.running.mirror = mirror
        self._on_stop("CR writer", self._stop_mirror, mirror)
        store = StoreWriter(
            self.settings.store, pool, self.fleet, self._store_events, self.clock,
            replica_id=settings.replica_id,
        )  # fmt: skip
        await store.start()
        self.running.store = store
        self._on_stop("history", store.stop)
        gitops = GitOpsController(
            self.fleet, settings, api, self.clock, mark=mirror.mark, gate=gate, outcomes=outcomes
        )
        await gitops.start(watch_agents=False)  # it subscribes to the replica's one watch
        self.running.gitops = gitops
        self._on_stop("gitops", gitops.stop)
        if links is not None and self._pod_events is not None:
            pods = PodLinker.connect(
                settings, self.fleet, self._pod_events, links,
                writer=mirror, kube=api, clock=self.clock, gate=gate,
                credentials=api.session.credentials,
            )  # fmt: skip
            await pods.start()
            self.running.pods = pods
            self._on_stop("pod links", pods.stop)
        watch = AgentWatch(
            self.fleet, settings, api, writer=mirror, clock=self.clock,
            pods=self.running.pods, replicas=self.running.lease,
        )  # fmt: skip
        watch.subscribe(gitops.agent_events)
        await watch.start()
        self._on_stop("agent watch", watch.stop)
        self.kopf_registry = build_registry(api.session.credentials)

    async def _start_lease(self, api: KubeApi, gate: WriteGate, pool: asyncpg.Pool) -> None:
        """Our Lease before any agent connects; adoption of lost replicas on every replica."""
        settings = self.settings.kube
        lease_api = LeaseApi.own_connection(
            api.session.credentials, settings.namespace, renewal_timeout(settings)
        )
        keeper = LeaseKeeper(lease_api, settings, self.clock)
        await keeper.start()
        self.running.lease = keeper
        self._on_stop("lease", self._release_lease, keeper)
        self._spawn(keeper.run(), "replica-lease")

        async def close_rows(replica_id: str, at: datetime) -> int:
            return await close_lost_replica_sessions(pool, replica_id, at)

        adopter = Adopter(
            keeper, self.fleet, settings, api,
            clock=self.clock, gate=gate, close_rows=close_rows,
        )  # fmt: skip
        self._spawn(adopter.run(), "replica-adoption")

    async def _agent_token_review(self) -> ReviewToken | None:
        """The TokenReview for agents' ServiceAccount tokens (None: that is turned off)."""
        settings = self.settings.listener
        if not settings.agent_serviceaccount_tokens:
            return None
        authn = k8s.AuthenticationV1Api(k8s.ApiClient(await self._kube_configuration()))
        audiences = (settings.agent_token_audience,)
        timeout = self.settings.api.auth_timeout_seconds

        def review(token: str) -> ReviewedUser | None:
            return token_review(authn, token, audiences, timeout)

        log.info("agents may authenticate with ServiceAccount tokens for %r", audiences[0])
        return review

    async def _kube_configuration(self) -> k8s.Configuration:
        """The credentials the Kubernetes side loaded (or load them now, if it is off)."""
        kube = self.running.kube
        if kube is not None:
            return kube.session.credentials.configuration
        return (await load_credentials(self.settings.kube.kubeconfig)).configuration

    async def _start_api(self, pool: asyncpg.Pool) -> None:
        settings = self.settings.api
        auth = None
        if settings.auth_enabled:
            auth = KubeAuthorizer(
                k8s.ApiClient(await self._kube_configuration()),
                self.settings.kube.namespace,
                settings,
            )
            self._stops.callback(auth.close)
        else:
            log.warning("REST API authentication is OFF: use this for local development only")
        history = StoreHistoryReader(pool)
        api = ApiServer(settings, self.fleet, history, auth, self.readiness)
        await api.start()  # readiness says "not ready" until the listener is up
        self.running.api = api
        self._on_stop("rest api", api.stop)

    def _spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        """A background task, cancelled (and awaited) at its place in the stop order."""
        task = asyncio.create_task(coroutine, name=name)
        self._on_stop(name, _cancel, task)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _connect_with_patience(settings: StoreSettings) -> asyncpg.Pool:
    """Wait for the database a while at start (it may start after us), logging each try."""
    deadline = time.monotonic() + DATABASE_STARTUP_WAIT_SECONDS
    while True:
        try:
            return await create_pool(settings)
        except StoreUnavailable as error:
            if time.monotonic() >= deadline:
                raise
            log.warning("%s; retrying for up to %.0fs", error, deadline - time.monotonic())
            await asyncio.sleep(2.0)


async def serve(settings: Settings, demo_agents: int = 0) -> None:
    app = OperatorApp(settings)
    try:
        await app.start()
    except BaseException:
        await app.stop()  # release whatever did start (pool, threads, sockets)
        raise
    demo = await _start_demo_agents(app, demo_agents) if demo_agents else None
    kopf_ready, kopf_stop = asyncio.Event(), asyncio.Event()
    # Created before Kopf starts, so Kopf's task sweep at its exit leaves it alone.
    signals = asyncio.create_task(_stop_on_signal(app, kopf_ready, kopf_stop), name="signals")
    try:
        assert app.kopf_registry is not None
        # The path for a stop that Kopf begins (a signal before it was ready, a failure of
        # its own): on stopping, Kopf runs cleanup handlers, then gives every task started
        # after it 5 s and cancels it, the WebSocket handlers among them (agents would see
        # an aborted connection, connection_closed). Ending the sessions here comes first.
        kopf.on.cleanup(registry=app.kopf_registry, id="end-opamp-sessions")(_ending_sessions(app))
        await run_kopf(
            app.kopf_registry, settings.kube.namespace, ready_flag=kopf_ready, stop_flag=kopf_stop
        )
    finally:
        signals.cancel()
        await asyncio.gather(signals, return_exceptions=True)
        if demo is not None and demo.returncode is None:
            demo.terminate()
            await demo.wait()
        await app.stop()


async def _stop_on_signal(
    app: OperatorApp, kopf_ready: asyncio.Event, kopf_stop: asyncio.Event
) -> None:
    """Once Kopf is up, SIGTERM and SIGINT are ours: stop the operator in its own order and
    budget (sessions closed with 1001, history, CRs; `OperatorApp.stop`), then let Kopf stop,
    with nothing of ours left for its sweep to wait 5 s for and cancel."""
    await kopf_ready.wait()
    if threading.current_thread() is not threading.main_thread():
        return  # no signal handlers outside the main thread (Kopf's own rule too)
    loop = asyncio.get_running_loop()
    received: asyncio.Future[signal.Signals] = loop.create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        # Replaces the handler Kopf installed when it started.
        loop.add_signal_handler(signum, _first_signal, received, signum)
    signum = await received
    budget = app.settings.process.shutdown_seconds
    log.info("%s received: stopping within %.1f s (sessions, history, CRs)", signum.name, budget)
    try:
        await app.stop()
    finally:
        kopf_stop.set()


def _first_signal(received: asyncio.Future[signal.Signals], signum: signal.Signals) -> None:
    if not received.done():
        received.set_result(signum)


def _ending_sessions(app: OperatorApp) -> Callable[..., Awaitable[None]]:
    async def end_sessions(**_: Any) -> None:
        await app.end_sessions()

    return end_sessions


async def _start_demo_agents(app: OperatorApp, count: int) -> asyncio.subprocess.Process:
    """`dev --demo-agents N`: the fleet simulator in a child process, so it is visible at once."""
    assert app.running.listener is not None
    url = f"ws://127.0.0.1:{app.running.listener.port}{app.settings.listener.path}"
    log.info("starting %d simulated agents against %s", count, url)
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "opamp_operator", "simulate", "--url", url,
        "--agents", str(count), "--duration", "86400", "--name-prefix", "demo",
        stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


def run_operator(settings: Settings, demo_agents: int = 0) -> int:
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        # websockets' "connection open" / "connection closed", a pair per session at INFO:
        # 70,000 lines in a 10,000-agent benchmark run, 9,800 inside the shutdown budget.
        # The connection history has every session; --log-level DEBUG shows them again.
        protocol_log.setLevel(logging.WARNING)
    try:
        with asyncio.Runner(loop_factory=loop_factory(settings.process.event_loop)) as runner:
            runner.run(serve(settings, demo_agents))
            stopped = time.monotonic()
        # What the loop's own close took (remaining tasks cancelled, executor threads
        # joined): part of SIGTERM to exit that no component's log line covers.
        log.info("event loop closed %.1f s after the operator stopped", time.monotonic() - stopped)
    except (StoreUnavailable, OSError) as error:
        log.error("cannot start: %s", error)
        return 1
    return 0
