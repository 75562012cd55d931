"""History retention: delete connection history and transitions older than a cutoff.

Never blocks the writer: each statement deletes at most `retention_batch` rows (short
locks, one pool connection held for one statement, then given back), with a pause
between statements; a pass runs every `retention_interval_seconds`. Several replicas
may prune at once: they delete disjoint or already-deleted rows, which is harmless.
Open sessions are never deleted, and the `agents` rows stay.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

import asyncpg

from opamp_operator import metrics
from opamp_operator.config import StoreSettings
from opamp_operator.fleet.clock import Clock

from . import queries

log = logging.getLogger(__name__)

_PAUSE_SECONDS = 0.05  # between batches: the writer gets the pool (and the disk) back
Delete = Callable[[queries.Conn, datetime, int], Awaitable[int]]
_TABLES: tuple[tuple[str, Delete], ...] = (
    ("agent_connection_history", queries.delete_old_sessions),
    ("agent_state_transitions", queries.delete_old_transitions),
)


class HistoryPruner:
    def __init__(self, settings: StoreSettings, pool: asyncpg.Pool, clock: Clock) -> None:
        assert settings.history_retention_seconds is not None
        self.settings = settings
        self.pool = pool
        self.clock = clock
        self.retention = timedelta(seconds=settings.history_retention_seconds)

    async def run(self) -> None:
        """Prune every interval until cancelled; a failed pass is logged and retried later."""
        while True:
            try:
                await self.prune_once()
            except (asyncpg.PostgresError, OSError, TimeoutError) as error:
                metrics.db_errors.labels("retention").inc()
                log.warning("history retention pass failed (next in %gs): %s",
                            self.settings.retention_interval_seconds, error)  # fmt: skip
            await asyncio.sleep(self.settings.retention_interval_seconds)

    async def prune_once(self) -> dict[str, int]:
        """Delete everything older than the retention, batch by batch; rows per table."""
        cutoff = self.clock.now() - self.retention
        deleted: dict[str, int] = {}
        for table, delete in _TABLES:
            deleted[table] = await self._prune(table, delete, cutoff)
        if any(deleted.values()):
            log.info("history retention: deleted %s (older than %s)", deleted, cutoff.isoformat())
        return deleted

    async def _prune(self, table: str, delete: Delete, cutoff: datetime) -> int:
        batch, total = self.settings.retention_batch, 0
        while True:
            async with self.pool.acquire() as conn:
                count = await delete(conn, cutoff, batch)
            total += count
            metrics.db_history_deleted.labels(table).inc(count)
            if count < batch:
                return total
            await asyncio.sleep(_PAUSE_SECONDS)
