"""The batched writer: fleet events and heartbeats into PostgreSQL, never blocking the fleet.

One task moves events from the fleet's bounded subscription into `PendingWrites`; another
flushes every `flush_interval_seconds`: all pending events in one transaction, in a fixed
statement order that gives the same result as applying them one by one (agent rows first,
for the foreign keys; then sessions opened, sessions closed, transitions, descriptions,
available components, and one statement for every agent's last-seen time). While the
database is unreachable, flushes back off exponentially and the buffer absorbs events up to
its bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import asyncpg

from opamp_operator import metrics
from opamp_operator.backoff import Backoff
from opamp_operator.config import StoreSettings
from opamp_operator.fleet.clock import Clock
from opamp_operator.fleet.events import FleetEvent, Subscription
from opamp_operator.fleet.model import AgentSnapshot
from opamp_operator.fleet.registry import Fleet

from . import queries
from .batch import Batch, PendingWrites, Shed, plan_agent_states, split_sessions
from .pool import DATA_ERRORS, describe_target, ping, scrub
from .rows import ComponentsRow, components_row, description_row, snapshot_row, status_of

log = logging.getLogger(__name__)

_BACKOFF_START_SECONDS = 0.5


class StoreWriter:
    def __init__(
        self,
        settings: StoreSettings,
        pool: asyncpg.Pool,
        fleet: Fleet,
        subscription: Subscription,
        clock: Clock,
        *,
        replica_id: str = "local",
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.fleet = fleet
        self.subscription = subscription
        self.clock = clock
        self.replica_id = replica_id
        self.statements: Counter[str] = Counter()  # statements executed, by kind
        self._pending = PendingWrites(settings.queue_size)
        self._target = describe_target(settings.dsn) if settings.dsn else "PostgreSQL"
        self._consumer: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._stopped = False
        self._last_ok: float | None = None  # monotonic time of the last successful write/ping
        self._outage_since: float | None = None
        self._outage_errors = 0
        # Sessions' first replies waiting for a commit: (events appended by then, waiter).
        self._barriers: list[tuple[int, asyncio.Future[bool]]] = []
        self._commit_soon: asyncio.TimerHandle | None = None
        self.dropped_history = 0  # since start, for logs and tests (metrics count too)
        self.dropped_last_seen = 0
        # Agent id -> (hash, complete) of the components row last committed: a resync
        # rewrites only rows that differ.
        self._components_written: dict[str, tuple[str, bool]] = {}

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start consuming and flushing; a failed first ping only makes `ready` False."""
        await self._try(self._ping, "ping")
        self._consumer = asyncio.create_task(self._consume(), name="store-consumer")
        self._flusher = asyncio.create_task(self._flush_loop(), name="store-flusher")

    async def stop(self) -> None:
        """Write everything still pending, for at most `stop_timeout_seconds`, then stop."""
        if self._stopped:
            return
        self._stopped = True
        deadline = time.monotonic() + self.settings.stop_timeout_seconds
        self._stopping = True
        self._wake.set()
        if self._flusher is not None:
            # Let a write in progress finish rather than cancel it mid-transaction.
            await _wait_or_cancel(self._flusher, deadline - time.monotonic())
        if self._consumer is not None:
            self._consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._consumer
        backoff = Backoff.up_to(self.settings.max_backoff_seconds, initial=_BACKOFF_START_SECONDS)
        failures = 0
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.0)):
                while True:
                    self._drain_subscription()
                    if await self.flush() and not self._pending.history_depth:
                        return
                    failures += 1
                    await asyncio.sleep(backoff.delay(failures))
        except TimeoutError:
            log.error(
                "store writer stopped with %d events and %d agents' last-seen times unwritten"
                " (%s unreachable or slow)",
                self._pending.history_depth,
                len(self._pending) - self._pending.history_depth,
                self._target,
            )
        finally:
            self._release_barriers(committed=False)  # what is left is not coming

    @property
    def ready(self) -> bool:
        """A write or ping succeeded within `ready_window_seconds`, and none failed since."""
        if self._last_ok is None or self._outage_since is not None:
            return False
        return self.clock.monotonic() - self._last_ok <= self.settings.ready_window_seconds

    def pending(self) -> int:
        """History events not yet written: buffered here plus queued in the subscription."""
        return self._pending.history_depth + self.subscription.depth()

    async def recorded(self) -> None:
        """`SessionLedger`: return once every event published so far is committed.

        The transports call it when a message opened a session, before the first reply, so
        a session the agent was answered for has its row even after a SIGKILL. Waiters of
        the next `commit_window_seconds` share one transaction. Bounded: while the database
        is unreachable (not `ready`) or slow, the reply goes out unconfirmed, counted.
        """
        started = time.perf_counter()
        self._drain_subscription()
        target = self._pending.appended
        if self._pending.settled >= target:
            return
        if not self.ready or self._stopped:
            metrics.db_session_commits.labels("unconfirmed").inc()
            return
        waiter = asyncio.get_running_loop().create_future()
        self._barriers.append((target, waiter))
        if self._commit_soon is None:
            self._commit_soon = asyncio.get_running_loop().call_later(
                self.settings.commit_window_seconds, self._wake.set
            )
        wait = self.settings.session_commit_wait_seconds
        try:
            committed = await asyncio.wait_for(asyncio.shield(waiter), wait)
        except TimeoutError:
            committed = False
        metrics.db_session_commits.labels("recorded" if committed else "unconfirmed").inc()
        if committed:
            metrics.db_session_commit_wait_seconds.observe(time.perf_counter() - started)

    def _release_barriers(self, *, committed: bool = True) -> None:
        """Answer the waiters whose events are settled (all of them when stopping)."""
        settled = self._pending.settled
        waiting = []
        for target, waiter in self._barriers:
            if target <= settled or not committed:
                if not waiter.done():
                    waiter.set_result(committed)
            else:
                waiting.append((target, waiter))
        self._barriers = waiting

    # -- consuming -------------------------------------------------------------------------

    async def _consume(self) -> None:
        while True:
            event = await self.subscription.get()
            try:
                self._accept(event)
                self._drain_subscription()
            except Exception:  # a bug here must not stop the consumer for good
                log.exception("store writer could not buffer %s", type(event).__name__)

    def _drain_subscription(self) -> None:
        while (event := self.subscription.get_nowait()) is not None:
            self._accept(event)
        if self.subscription.needs_resync:
            # The bus dropped events for us: agents' rows are rewritten from the fleet.
            self.subscription.needs_resync = False
            self._pending.request_resync()
        metrics.db_queue_depth.set(self.pending())

    def _accept(self, event: FleetEvent) -> None:
        self._count_shed(self._pending.add_event(event), type(event).__name__)

    def _count_shed(self, shed: Shed, what: str) -> None:
        if not shed:
            return
        before = self.dropped_history + self.dropped_last_seen
        if shed.last_seen:
            metrics.db_dropped.labels("last_seen").inc(shed.last_seen)
            self.dropped_last_seen += shed.last_seen
        if shed.history:
            metrics.db_dropped.labels("history").inc(shed.history)
            self.dropped_history += shed.history
        after = self.dropped_history + self.dropped_last_seen
        # Log the first drop, then each time the total passes another power of ten.
        if before == 0 or len(str(before)) != len(str(after)):
            log.error(
                "store buffer full (bound %d, %s unreachable or slow): dropped %d history "
                "events and %d last-seen updates so far (latest: %s); agents' rows will be "
                "resynchronised from the fleet",
                self._pending.limit, self._target, self.dropped_history,
                self.dropped_last_seen, what,
            )  # fmt: skip

    # -- flushing --------------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        interval = self.settings.flush_interval_seconds
        # After a failed flush: twice the interval (at least 0.5 s), doubling up to the cap.
        backoff = Backoff.up_to(
            self.settings.max_backoff_seconds, initial=max(2 * interval, _BACKOFF_START_SECONDS)
        )
        failures = 0
        while not self._stopping:
            delay = backoff.delay(failures) if failures else interval
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            if self._stopping:
                return
            self._wake.clear()
            self._commit_soon = None  # waiters from now on schedule the next group commit
            try:
                ok = await self.flush()
            except Exception:  # a bug here must not end persistence for good
                log.exception("store flush failed unexpectedly; retrying")
                ok = False
            failures = 0 if ok else failures + 1

    async def flush(self) -> bool:
        """Write everything published and seen so far (in batches); False on a DB failure."""
        self._drain_subscription()
        self._count_shed(self._pending.add_seen(self.fleet.drain_seen()), "heartbeat")
        wrote = False
        while batch := self._pending.take():
            wrote = True
            if not await self._try(functools.partial(self._write, batch), "flush", batch):
                return False
        if not wrote and self._ping_due():
            return await self._try(self._ping, "ping")
        return True

    async def _try(
        self, operation: Callable[[], Awaitable[None]], name: str, batch: Batch | None = None
    ) -> bool:
        try:
            await operation()
        except DATA_ERRORS as error:
            if batch is None:
                self._on_failure(name, error)
                return False
            if not self._pending.split(batch):  # bisect down to the one bad event
                self._reject(batch, error)
            return True
        except Exception as error:
            if batch is not None:
                self._count_shed(self._pending.failed(batch), "retry")
            self._on_failure(name, error)
            return False
        except BaseException:
            if batch is not None:  # cancelled mid-write: nothing was committed
                self._pending.failed(batch)
            raise
        if batch is not None:
            self._pending.done(batch)
            self._release_barriers()
        self._on_success()
        return True

    def _reject(self, batch: Batch, error: Exception) -> None:
        # Retrying the same row would fail forever: drop it, resync agents' rows later.
        self._pending.discard(batch)
        self._release_barriers()  # nothing more will come of these events
        metrics.db_errors.labels("flush_rejected").inc()
        metrics.db_dropped.labels("history").inc(len(batch.events))
        self.dropped_history += len(batch.events)
        log.error(
            "PostgreSQL at %s rejected a batch of %d events (%s: %s); dropped it",
            self._target, len(batch.events), type(error).__name__,
            scrub(str(error), self.settings.dsn), exc_info=True,
        )  # fmt: skip

    async def _write(self, batch: Batch) -> None:
        started = time.perf_counter()
        now = self.clock.now()
        opened, closed, changes = split_sessions(batch.events)
        described = [s for s in map(self.fleet.get, sorted(batch.described)) if s is not None]
        snapshots = self.fleet.snapshots() if batch.resync else []
        acquire = self.pool.acquire(timeout=self.settings.connect_timeout_seconds)
        async with acquire as conn, conn.transaction():
            if batch.events or snapshots:
                # Held to commit: replicas' state writes apply one after the other, each
                # statement seeing the sessions the others committed.
                await queries.lock_agent_states(conn)
            if batch.events:
                states = plan_agent_states(batch.events, self._current_status)
                await self._run(
                    "agents", queries.upsert_agent_states(conn, states, now, self.replica_id)
                )
            if opened:
                await self._run(
                    "history_open",
                    queries.insert_open_sessions(conn, opened, self.replica_id, now),
                )
            if closed:
                await self._run(
                    "history_close",
                    queries.close_sessions(conn, closed, self.replica_id, now),
                )
            if changes:
                await self._run("transitions", queries.insert_transitions(conn, changes))
            if described:
                rows = [description_row(s) for s in described]
                await self._run("descriptions", queries.upsert_descriptions(conn, rows, now))
            if snapshots:
                full = [snapshot_row(s) for s in snapshots]
                await self._run(
                    "resync", queries.upsert_snapshots(conn, full, now, self.replica_id)
                )
            components = self._components_rows(batch, described, snapshots)
            if components:
                await self._run("components", queries.upsert_components(conn, components, now))
            if batch.seen:
                await self._run("last_seen", queries.update_last_seen(conn, batch.seen, now))
        for row in components:
            self._components_written[row.agent_id] = (row.hash, row.components_json is not None)
        metrics.db_flush_seconds.observe(time.perf_counter() - started)
        if snapshots:
            log.info("resynchronised %d agents' rows from the fleet", len(snapshots))

    async def _run(self, kind: str, statement: Awaitable[str]) -> None:
        status = await statement
        self.statements[kind] += 1
        table = _TABLES[kind]
        metrics.db_writes.labels(table).inc(queries.rows_affected(status))

    def _components_rows(
        self, batch: Batch, described: list[AgentSnapshot], snapshots: list[AgentSnapshot]
    ) -> list[ComponentsRow]:
        """Agents whose components changed; on a resync also those whose stored (hash,
        complete) differs from the fleet's (a full map is large: never rewritten blindly)."""
        chosen = {s.agent_id: s for s in described if s.agent_id in batch.components}
        for snapshot in snapshots:
            held = snapshot.available_components
            if held is not None and self._components_written.get(snapshot.agent_id) != (
                held.hash_hex,
                held.complete,
            ):
                chosen[snapshot.agent_id] = snapshot
        if snapshots:  # forget agents the fleet forgot
            known = {s.agent_id for s in snapshots}
            self._components_written = {
                k: v for k, v in self._components_written.items() if k in known
            }
        return [row for row in map(components_row, chosen.values()) if row is not None]

    def _current_status(self, agent_id: str) -> str | None:
        snapshot = self.fleet.get(agent_id)
        return status_of(snapshot.phase) if snapshot else None

    async def _ping(self) -> None:
        await ping(self.pool, self.settings.connect_timeout_seconds)

    def _ping_due(self) -> bool:
        last = self._last_ok
        return last is None or (
            self.clock.monotonic() - last >= self.settings.ping_interval_seconds
        )

    # -- health ----------------------------------------------------------------------------

    def _on_success(self) -> None:
        self._last_ok = self.clock.monotonic()
        if self._outage_since is not None:
            log.warning(
                "PostgreSQL at %s is reachable again after %.1fs (%d failed attempts); "
                "%d events still pending",
                self._target, time.monotonic() - self._outage_since, self._outage_errors,
                self.pending(),
            )  # fmt: skip
            self._outage_since = None
            self._outage_errors = 0
        metrics.db_queue_depth.set(self.pending())

    def _on_failure(self, operation: str, error: Exception) -> None:
        metrics.db_errors.labels(operation).inc()
        metrics.db_queue_depth.set(self.pending())
        self._outage_errors += 1
        if self._outage_since is None:  # log once per outage
            self._outage_since = time.monotonic()
            log.error(
                "PostgreSQL at %s failed (%s): %s: %s; buffering %d events (bound %d) and "
                "retrying with backoff up to %.0fs",
                self._target, operation, type(error).__name__,
                scrub(str(error), self.settings.dsn), self.pending(), self._pending.limit,
                self.settings.max_backoff_seconds,
            )  # fmt: skip


_TABLES = {
    "components": "agent_available_components",
    "agents": "agents",
    "history_open": "agent_connection_history",
    "history_close": "agent_connection_history",
    "transitions": "agent_state_transitions",
    "descriptions": "agents",
    "resync": "agents",
    "last_seen": "agents",
}


async def _wait_or_cancel(task: asyncio.Task[None], seconds: float) -> None:
    done, _ = await asyncio.wait({task}, timeout=max(seconds, 0.0))
    if not done:
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
