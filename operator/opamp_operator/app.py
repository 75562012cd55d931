"""The operator process: every component wired together, started and stopped in order.

Data flows one way: transport -> fleet -> event bus -> subscribers (store, Kubernetes
mirror, metrics, API index). Start order makes the sinks ready before agents can connect;
stop order lets every session end as `operator_shutdown` and be written before exit.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import kopf
from kubernetes import client as k8s

from .api.auth import KubeAuthorizer
from .api.history import StoreHistoryReader
from .api.server import ApiServer
from .config import Settings
from .eventloop import loop_factory
from .fleet.clock import Clock, SystemClock
from .fleet.events import EventBus
from .fleet.identity import DuplicateUid
from .fleet.ledger import NO_LEDGER, SessionLedger
from .fleet.registry import Fleet
from .fleet.ticker import run_deadline_ticker
from .fleet_metrics import (
    FleetMetrics,
    count_duplicate,
    count_rejected_registration,
    count_slow_agent,
)
from .gcpolicy import (
    GcPolicy,
    PauseTimer,
    full_collections,
    install_pause_metrics,
    remove_pause_metrics,
    run_gc_policy,
)
from .kube.api import load_credentials
from .kube.api.leases import LeaseApi
from .kube.api.resources import KubeApi
from .kube.gitops.controller import GitOpsController
from .kube.kopfwiring.agents import build_registry
from .kube.leases.keeper import LeaseKeeper
from .kube.liveness.adoption import Adopter
from .kube.mirror.statuswriter import StatusWriter
from .kube.pods.linker import PodLinker
from .kube.shapes.podref import PodLinks
from .kube.writes.gate import WriteGate
from .reviews import ReviewedUser, token_review
from .store.migrations import migrate
from .store.pool import StoreUnavailable, create_pool
from .store.recovery import close_lost_replica_sessions, close_orphaned_sessions
from .store.retention import HistoryPruner
from .store.writer import StoreWriter
from .transport import OpAMPListener
from .transport.auth import ReviewToken

log = logging.getLogger(__name__)

DATABASE_STARTUP_WAIT_SECONDS = 60.0


@dataclass
class _Running:
    pool: Any = None
    store: StoreWriter | None = None
    kube: KubeApi | None = None
    mirror: StatusWriter | None = None
    lease: LeaseKeeper | None = None
    pods: PodLinker | None = None
    gitops: GitOpsController | None = None
    listener: OpAMPListener | None = None
    api: ApiServer | None = None
    auth: KubeAuthorizer | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class OperatorApp:
    """Build with settings; `await start()`, run Kopf with `kopf_registry`, `await stop()`."""

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.bus = EventBus()
        self.fleet = Fleet(
            settings.fleet, self.clock, self.bus,
            on_rejected=count_rejected_registration, on_slow_agent=count_slow_agent,
            on_duplicate=self._on_duplicate,
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
        self._pause_timer: PauseTimer | None = None
        self.kopf_registry: kopf.OperatorRegistry | None = None

    async def start(self) -> None:
        for warning in self.settings.fleet.warnings():
            log.warning("settings: %s", warning)
        await self._start_store()
        await self._start_kube()
        self._spawn(run_deadline_ticker(self.fleet), "deadline-ticker")
        self._spawn(FleetMetrics(self._metric_events, self.bus).run(), "fleet-metrics")
        self._start_gc_policy()
        await self._start_api()
        # New sessions' rows are committed before their first replies.
        ledger: SessionLedger = self.running.store or NO_LEDGER
        review = await self._agent_token_review()
        listener = OpAMPListener(self.settings.listener, self.fleet, ledger, review)
        await listener.start()
        self.running.listener = listener
        log.info(
            "OpAMP listening on %s:%s%s (WebSocket and HTTP); API on %s:%s",
            self.settings.listener.host, listener.port, self.settings.listener.path,
            self.settings.api.host, self.running.api.port if self.running.api else "-",
        )  # fmt: skip

    def _start_gc_policy(self) -> None:
        """Collector pauses as a metric, and the freeze/thaw policy (gcpolicy.py)."""
        self._pause_timer = install_pause_metrics()
        settings, fleet = self.settings.gc, self.fleet
        policy = GcPolicy(settings, time.monotonic(), fleet.sessions_opened, full_collections())
        sessions, agents = (lambda: fleet.sessions_opened), fleet.__len__
        interval = settings.check_interval_seconds
        self._spawn(run_gc_policy(policy, sessions, agents, interval=interval), "gc-policy")

    async def end_sessions(self) -> None:
        """Stop accepting and end every session as operator_shutdown (idempotent)."""
        self.fleet.begin_shutdown()  # no heartbeat times out while the sockets close
        if self.running.listener is not None:
            await self.running.listener.stop(reason="operator_shutdown")
        self.fleet.shutdown()  # HTTP sessions have no socket: end them here

    async def stop(self) -> None:
        """Stop accepting, end every session as operator_shutdown, flush, release."""
        running = self.running
        await self.end_sessions()
        if running.pods is not None:
            await running.pods.stop()
        if running.gitops is not None:
            await running.gitops.stop()
        if running.store is not None:
            await running.store.stop()
        flushed = True
        if running.mirror is not None:
            flushed = await running.mirror.stop()
        for task in running.tasks:
            task.cancel()
        await asyncio.gather(*running.tasks, return_exceptions=True)
        if self._pause_timer is not None:
            remove_pause_metrics(self._pause_timer)
        await self._release_lease(flushed)
        if running.api is not None:
            await running.api.stop()
        if running.auth is not None:
            running.auth.close()
        if running.kube is not None:
            await running.kube.close()
        if running.pool is not None:
            await running.pool.close()
        log.info("stopped: %d agents known, all sessions closed", len(self.fleet))

    async def _release_lease(self, flushed: bool) -> None:
        """Delete our Lease once every CR says what we ended; else let a survivor adopt us."""
        lease = self.running.lease
        if lease is None:
            return
        if flushed:
            await lease.release()
        else:
            log.warning("Lease %s left to expire: a surviving replica adopts the CRs this "
                        "process could not write", lease.replica_id)  # fmt: skip

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

    async def _start_store(self) -> None:
        settings = self.settings.store
        pool = await _connect_with_patience(settings)
        self.running.pool = pool
        if settings.migrate_on_start:
            applied = await migrate(pool, "up", directory=settings.migrations_dir)
            if applied:
                log.info("applied migrations %s", applied)
        closed = await close_orphaned_sessions(
            pool, self.clock.now(), replica_id=self.settings.kube.replica_id
        )
        if closed:
            log.warning("closed %d connection rows left open by a previous run", closed)
        store = StoreWriter(
            settings, pool, self.fleet, self._store_events, self.clock,
            replica_id=self.settings.kube.replica_id,
        )  # fmt: skip
        await store.start()
        self.running.store = store
        if settings.history_retention_seconds is not None:
            self._spawn(HistoryPruner(settings, pool, self.clock).run(), "history-retention")

    async def _start_kube(self) -> None:
        settings = self.settings.kube
        api = await KubeApi.connect(settings)
        self.running.kube = api
        links = PodLinks() if self._pod_events is not None else None
        gate = WriteGate.for_settings(api, settings)  # every CR write and Event, one pace
        mirror = StatusWriter(
            settings, self.fleet, self._kube_events, api, self.clock, gate=gate, pod_links=links
        )
        await mirror.start()
        self.running.mirror = mirror
        await self._start_lease(api, mirror)
        gitops = GitOpsController(
            self.fleet, settings, api, self.clock, mark=mirror.mark, gate=gate
        )
        mirror.remote_config = gitops
        await gitops.start()
        self.running.gitops = gitops
        if links is not None and self._pod_events is not None:
            pods = PodLinker.connect(
                settings, self.fleet, self._pod_events, links,
                writer=mirror, kube=api, clock=self.clock, gate=gate,
                credentials=api.session.credentials,
            )  # fmt: skip
            await pods.start()
            self.running.pods = pods
        self.kopf_registry = build_registry(
            self.fleet, settings, api, writer=mirror, clock=self.clock, pods=self.running.pods,
            replicas=self.running.lease,
        )  # fmt: skip

    async def _start_lease(self, api: KubeApi, mirror: StatusWriter) -> None:
        """Our Lease before any agent connects; adoption of lost replicas on every replica."""
        settings = self.settings.kube
        keeper = LeaseKeeper(LeaseApi(api.session, settings.namespace), settings, self.clock)
        await keeper.start()
        self.running.lease = keeper
        self._spawn(keeper.run(), "replica-lease")
        pool = self.running.pool

        async def close_rows(replica_id: str, at: Any) -> int:
            return await close_lost_replica_sessions(pool, replica_id, at)

        adopter = Adopter(
            keeper, self.fleet, settings, api,
            clock=self.clock, gate=mirror.gate, close_rows=close_rows,
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

    async def _kube_configuration(self) -> Any:
        """The credentials the Kubernetes side loaded (or load them now, if it is off)."""
        kube = self.running.kube
        if kube is not None:
            return kube.session.credentials.configuration
        return (await load_credentials(self.settings.kube.kubeconfig)).configuration

    async def _start_api(self) -> None:
        settings = self.settings.api
        auth = None
        if settings.auth_enabled:
            auth = KubeAuthorizer(
                k8s.ApiClient(await self._kube_configuration()),
                self.settings.kube.namespace,
                settings,
            )
        else:
            log.warning("REST API authentication is OFF: use this for local development only")
        self.running.auth = auth
        history = StoreHistoryReader(self.running.pool)
        api = ApiServer(settings, self.fleet, history, auth, self.readiness)
        await api.start()
        self.running.api = api

    def _spawn(self, coroutine: Any, name: str) -> None:
        self.running.tasks.append(asyncio.create_task(coroutine, name=name))


async def _connect_with_patience(settings: Any) -> Any:
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
    try:
        assert app.kopf_registry is not None
        # On SIGTERM Kopf stops its root tasks (running cleanup handlers), then gives every
        # task started after it 5 s and cancels them: the WebSocket handlers among them, so
        # agents would see an aborted connection (connection_closed) and reconnect before
        # `app.stop()`. Ending the sessions in a cleanup handler runs before that sweep.
        kopf.on.cleanup(registry=app.kopf_registry, id="end-opamp-sessions")(_ending_sessions(app))
        # Kopf peering: with the KopfPeering object `default` present (manifests/ ships it),
        # one replica runs the handlers and the others pause; without it, standalone.
        # Peers of equal priority would all pause, so each process draws its own.
        await kopf.operator(
            registry=app.kopf_registry,
            namespaces=[settings.kube.namespace],
            clusterwide=False,
            priority=random.randint(1, 2**31 - 1),
            memo=kopf.Memo(),
        )
    finally:
        if demo is not None and demo.returncode is None:
            demo.terminate()
            await demo.wait()
        await app.stop()


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
    try:
        with asyncio.Runner(loop_factory=loop_factory(settings.process.event_loop)) as runner:
            runner.run(serve(settings, demo_agents))
    except (StoreUnavailable, OSError) as error:
        log.error("cannot start: %s", error)
        return 1
    return 0
