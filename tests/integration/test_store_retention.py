"""History retention on the real PostgreSQL: old rows go in bounded batches, the rest stays."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from opamp_operator.config import StoreSettings
from opamp_operator.fleet.clock import FakeClock
from opamp_operator.store.migrations import migrate
from opamp_operator.store.pool import create_pool
from opamp_operator.store.retention import HistoryPruner

pytestmark = pytest.mark.integration

NOW = datetime(2026, 12, 1, tzinfo=UTC)
DAY = timedelta(days=1)


async def _seed(conn: asyncpg.Connection, agent_id: str) -> None:
    await conn.execute(
        "INSERT INTO agents (id, status, created_at, updated_at) VALUES ($1, 'offline', $2, $2)",
        agent_id, NOW - 90 * DAY,
    )  # fmt: skip
    sessions = [  # (connected, disconnected): 7 old closed, 1 old still open, 2 recent
        *[(NOW - (60 - i) * DAY, NOW - (60 - i) * DAY + timedelta(hours=1)) for i in range(7)],
        (NOW - 50 * DAY, None),
        (NOW - DAY, NOW - DAY + timedelta(hours=1)),
        (NOW - timedelta(hours=1), None),
    ]
    for connected, disconnected in sessions:
        await conn.execute(
            "INSERT INTO agent_connection_history (agent_id, session_id, replica_id,"
            " connected_at, disconnected_at, duration_seconds, disconnect_reason, transport,"
            " created_at) VALUES ($1, $2, 'r', $3, $4, $5, $6, 'websocket', $3)",
            agent_id, uuid.uuid4(), connected, disconnected,
            None if disconnected is None else 3600.0,
            None if disconnected is None else "agent_disconnect",
        )  # fmt: skip
    for days in (70, 65, 61, 45, 2):
        await conn.execute(
            "INSERT INTO agent_state_transitions (agent_id, from_status, to_status, reason, at)"
            " VALUES ($1, 'online', 'offline', 'agent_disconnect', $2)",
            agent_id, NOW - days * DAY,
        )  # fmt: skip


async def test_old_history_is_deleted_in_batches_and_open_or_recent_rows_stay(
    postgres_dsn: str,
) -> None:
    await migrate(postgres_dsn, "up")
    settings = StoreSettings(
        dsn=postgres_dsn, history_retention_seconds=30 * 86400.0, retention_batch=3
    )
    clock = FakeClock(NOW)
    pool = await create_pool(settings)
    agent_id = str(uuid.uuid4())
    try:
        async with pool.acquire() as conn:
            await _seed(conn, agent_id)
        deleted = await HistoryPruner(settings, pool, clock).prune_once()
        assert deleted == {"agent_connection_history": 7, "agent_state_transitions": 4}
        async with pool.acquire() as conn:
            left = await conn.fetch(
                "SELECT connected_at, disconnected_at FROM agent_connection_history"
                " WHERE agent_id = $1 ORDER BY connected_at",
                agent_id,
            )
            assert [r["disconnected_at"] is None for r in left] == [True, False, True]
            ats = await conn.fetchval(
                "SELECT count(*) FROM agent_state_transitions WHERE agent_id = $1", agent_id
            )
            assert ats == 1
            assert await conn.fetchval("SELECT count(*) FROM agents WHERE id = $1", agent_id) == 1
        assert await HistoryPruner(settings, pool, clock).prune_once() == {
            "agent_connection_history": 0,
            "agent_state_transitions": 0,
        }
    finally:
        await pool.close()
