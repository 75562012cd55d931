"""What PostgreSQL saw: statements and transactions per database, and the history check."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from opamp_operator.testbed.postgres import PostgresEndpoint

_STATEMENTS = """
SELECT coalesce(sum(s.calls), 0)::bigint AS calls,
       coalesce(sum(s.calls) FILTER (WHERE s.query ~* '^\\s*(begin|commit|rollback)'), 0)::bigint
           AS control
FROM pg_stat_statements AS s JOIN pg_database AS d ON d.oid = s.dbid
WHERE d.datname = $1
"""
_DATABASE = """
SELECT xact_commit + xact_rollback AS xacts, tup_inserted + tup_updated + tup_deleted AS rows
FROM pg_stat_database WHERE datname = $1
"""


@dataclass(frozen=True)
class PgCounters:
    statements: int  # every statement pg_stat_statements saw, BEGIN/COMMIT included
    control: int  # of which BEGIN/COMMIT/ROLLBACK
    transactions: int
    rows: int  # inserted + updated + deleted


async def counters(admin: PostgresEndpoint, database: str) -> PgCounters:
    """Read through the `postgres` database, so the reading itself is not counted."""
    connection = await asyncpg.connect(admin.dsn)
    try:
        statements = await connection.fetchrow(_STATEMENTS, database)
        stats = await connection.fetchrow(_DATABASE, database)
    finally:
        await connection.close()
    return PgCounters(
        int(statements["calls"]),
        int(statements["control"]),
        int(stats["xacts"]),
        int(stats["rows"]),
    )


@dataclass(frozen=True)
class HistoryCheck:
    """Sessions around an operator restart at `restart`, for the agents in `agent_ids`."""

    agents: int
    without_session_before: int  # no row connected before the restart
    left_open_before: int  # a row from before the restart still open
    without_session_after: int  # no open row connected after the restart
    open_rows_total: int
    #: disconnect_reason of the rows the restart closed -> count (operator_shutdown expected)
    closed_by_restart: dict[str, int]

    @property
    def missing(self) -> int:
        return self.without_session_before + self.left_open_before + self.without_session_after


_HISTORY = """
WITH wanted AS (SELECT unnest($1::text[]) AS agent_id),
before AS (
    SELECT agent_id, count(*) AS n, count(*) FILTER (WHERE disconnected_at IS NULL) AS open
    FROM agent_connection_history WHERE connected_at < $2 GROUP BY agent_id
),
after AS (
    SELECT agent_id, count(*) AS n FROM agent_connection_history
    WHERE connected_at >= $2 AND disconnected_at IS NULL GROUP BY agent_id
)
SELECT count(*) FILTER (WHERE before.n IS NULL) AS without_before,
       count(*) FILTER (WHERE before.open > 0) AS open_before,
       count(*) FILTER (WHERE after.n IS NULL) AS without_after
FROM wanted LEFT JOIN before USING (agent_id) LEFT JOIN after USING (agent_id)
"""


# The last session before the restart of each agent, and how it ended.
_CLOSED_BY_RESTART = """
SELECT disconnect_reason, count(*) AS n FROM (
    SELECT DISTINCT ON (agent_id) agent_id, disconnect_reason
    FROM agent_connection_history
    WHERE agent_id = ANY($1::text[]) AND connected_at < $2
    ORDER BY agent_id, connected_at DESC
) AS last GROUP BY disconnect_reason
"""


async def history_check(
    database: PostgresEndpoint, agent_ids: list[str], restart_wall: float
) -> HistoryCheck:
    restart = datetime.fromtimestamp(restart_wall, UTC)
    connection = await asyncpg.connect(database.dsn)
    try:
        row = await connection.fetchrow(_HISTORY, agent_ids, restart)
        open_rows = await connection.fetchval(
            "SELECT count(*) FROM agent_connection_history WHERE disconnected_at IS NULL"
        )
        reasons = await connection.fetch(_CLOSED_BY_RESTART, agent_ids, restart)
    finally:
        await connection.close()
    return HistoryCheck(
        len(agent_ids),
        int(row["without_before"]),
        int(row["open_before"]),
        int(row["without_after"]),
        int(open_rows),
        {str(r["disconnect_reason"]): int(r["n"]) for r in reasons},
    )


@dataclass(frozen=True)
class AdoptionRows:
    """A lost replica's history rows and the transitions its adoption wrote."""

    left_open: int  # rows of the lost replica still open (0 once it is adopted)
    closed_lost: int  # rows of the lost replica closed with the adoption's reason
    transitions: int  # agent_state_transitions rows with that reason (one per agent)
    transition_agents: int  # distinct agents among them

    @property
    def duplicate_transitions(self) -> int:
        return self.transitions - self.transition_agents


_LOST_REPLICA_ROWS = """
SELECT count(*) FILTER (WHERE disconnected_at IS NULL) AS open,
       count(*) FILTER (WHERE disconnect_reason = $2) AS closed
FROM agent_connection_history WHERE replica_id = $1
"""
_TRANSITIONS_FOR = """
SELECT count(*) AS n, count(DISTINCT agent_id) AS agents
FROM agent_state_transitions WHERE reason = $1
"""


async def adoption_rows(database: PostgresEndpoint, replica_id: str, reason: str) -> AdoptionRows:
    connection = await asyncpg.connect(database.dsn)
    try:
        rows = await connection.fetchrow(_LOST_REPLICA_ROWS, replica_id, reason)
        transitions = await connection.fetchrow(_TRANSITIONS_FOR, reason)
    finally:
        await connection.close()
    return AdoptionRows(
        int(rows["open"]), int(rows["closed"]), int(transitions["n"]), int(transitions["agents"])
    )
