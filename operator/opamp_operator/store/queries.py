"""Every SQL statement of the operator, written out, with values always as parameters.

Each function runs exactly one statement. Batch writes pass columns as arrays and
`unnest` them, so a batch of any size costs one round trip per statement kind.
Timestamps are the operator's clock, passed in; the database's now() is never used.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, TypeAlias

import asyncpg

from opamp_operator.fleet.events import PhaseChanged, SessionClosed, SessionOpened

from .rows import (
    AgentRow,
    AgentStateRow,
    ComponentsRow,
    DescriptionRow,
    HistoryCursor,
    HistoryRow,
    SnapshotRow,
    StoredComponents,
    TransitionRow,
    clean_text,
    status_of,
)

Conn: TypeAlias = asyncpg.Connection  # or a Pool: both run a single statement the same way

# -- writes ------------------------------------------------------------------------------


def _status_unless_held_elsewhere(replica_param: str) -> str:
    """SQL for agents.status on conflict; `replica_param` is this replica's `$n` placeholder.

    Another replica holding the agent's newest open session owns its status: this one's
    news (a stale session timing out after the agent moved, its Error timer later) is older
    and must not mark an agent connected elsewhere offline.
    """
    return f"""CASE WHEN excluded.status <> 'online' AND EXISTS (
        SELECT 1 FROM agent_connection_history h
        WHERE h.agent_id = a.id AND h.disconnected_at IS NULL AND h.replica_id <> {replica_param}
          AND h.connected_at >= COALESCE(a.last_connected_at, h.connected_at))
        THEN a.status ELSE excluded.status END"""


# Replicas' flushes take this transaction lock before they write agents' states. Without it,
# under READ COMMITTED, a replica's upsert that waited for another's row lock re-checks the
# row but not `_status_unless_held_elsewhere`'s subquery (its snapshot predates the other's
# commit), and a stale session's timeout overwrote the other replica's "online".
AGENT_STATES_LOCK = 0x6F70616D70  # "opamp": any constant shared by every replica


async def lock_agent_states(conn: Conn) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock($1)", AGENT_STATES_LOCK)


UPSERT_AGENT_STATES = """
INSERT INTO agents AS a (id, status, last_connected_at, last_disconnected_at,
                         disconnect_reason, created_at, updated_at)
SELECT u.id, u.status, u.connected, u.disconnected, u.reason, u.first_at, $7
FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::text[],
            $6::timestamptz[]) AS u(id, status, connected, disconnected, reason, first_at)
ON CONFLICT (id) DO UPDATE SET
    status = {status},
    last_connected_at = COALESCE(excluded.last_connected_at, a.last_connected_at),
    last_disconnected_at = COALESCE(excluded.last_disconnected_at, a.last_disconnected_at),
    disconnect_reason = CASE WHEN excluded.last_disconnected_at IS NULL
                             THEN a.disconnect_reason ELSE excluded.disconnect_reason END,
    updated_at = excluded.updated_at
""".format(status=_status_unless_held_elsewhere("$8"))


async def upsert_agent_states(
    conn: Conn, rows: Sequence[AgentStateRow], now: datetime, replica_id: str
) -> str:
    return str(
        await conn.execute(
            UPSERT_AGENT_STATES,
            [r.agent_id for r in rows],
            [r.status for r in rows],
            [r.last_connected_at for r in rows],
            [r.last_disconnected_at for r in rows],
            [clean_text(r.disconnect_reason) for r in rows],
            [r.first_at for r in rows],
            now,
            replica_id,
        )
    )


INSERT_OPEN_SESSIONS = """
INSERT INTO agent_connection_history (agent_id, session_id, replica_id, connected_at,
                                      remote_addr, transport, created_at)
SELECT u.agent_id, u.session_id, $3, u.connected_at, u.remote_addr, u.transport, $7
FROM unnest($1::text[], $2::uuid[], $4::timestamptz[], $5::text[], $6::text[])
     AS u(agent_id, session_id, connected_at, remote_addr, transport)
ON CONFLICT (session_id) DO NOTHING
"""


async def insert_open_sessions(
    conn: Conn, opened: Sequence[SessionOpened], replica_id: str, now: datetime
) -> str:
    return str(
        await conn.execute(
            INSERT_OPEN_SESSIONS,
            [e.agent_id for e in opened],
            [e.session_id for e in opened],
            replica_id,
            [e.at for e in opened],
            [clean_text(e.remote_addr) for e in opened],
            [e.transport.value for e in opened],
            now,
        )
    )


# Closing inserts the whole row when the open one is missing (opened in the same batch
# and skipped, or shed while the database was down): a session is never lost.
CLOSE_SESSIONS = """
INSERT INTO agent_connection_history AS h (agent_id, session_id, replica_id, connected_at,
    disconnected_at, duration_seconds, disconnect_reason, remote_addr, transport, created_at)
SELECT u.agent_id, u.session_id, $3, u.connected_at, u.disconnected_at, u.duration,
       u.reason, u.remote_addr, u.transport, $10
FROM unnest($1::text[], $2::uuid[], $4::timestamptz[], $5::timestamptz[], $6::float8[],
            $7::text[], $8::text[], $9::text[])
     AS u(agent_id, session_id, connected_at, disconnected_at, duration, reason,
          remote_addr, transport)
ON CONFLICT (session_id) DO UPDATE SET
    disconnected_at = excluded.disconnected_at,
    duration_seconds = excluded.duration_seconds,
    disconnect_reason = excluded.disconnect_reason
WHERE h.disconnected_at IS NULL
"""


async def close_sessions(
    conn: Conn, closed: Sequence[SessionClosed], replica_id: str, now: datetime
) -> str:
    return str(
        await conn.execute(
            CLOSE_SESSIONS,
            [e.agent_id for e in closed],
            [e.session_id for e in closed],
            replica_id,
            [e.connected_at for e in closed],
            [e.at for e in closed],
            [e.duration_seconds for e in closed],
            [clean_text(e.reason) for e in closed],
            [clean_text(e.remote_addr) for e in closed],
            [e.transport.value for e in closed],
            now,
        )
    )


# WITH ORDINALITY keeps the events' order in the ids the rows get.
INSERT_TRANSITIONS = """
INSERT INTO agent_state_transitions (agent_id, from_status, to_status, reason, at)
SELECT u.agent_id, u.from_status, u.to_status, u.reason, u.at
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[])
     WITH ORDINALITY AS u(agent_id, from_status, to_status, reason, at, n)
ORDER BY u.n
"""


async def insert_transitions(conn: Conn, changes: Sequence[PhaseChanged]) -> str:
    return str(
        await conn.execute(
            INSERT_TRANSITIONS,
            [e.agent_id for e in changes],
            [status_of(e.previous) if e.previous else None for e in changes],
            [status_of(e.current) for e in changes],
            [clean_text(e.reason) for e in changes],
            [e.at for e in changes],
        )
    )


UPSERT_DESCRIPTIONS = """
INSERT INTO agents AS a (id, status, description, capabilities, created_at, updated_at)
SELECT u.id, u.status, u.description::jsonb, u.capabilities::jsonb, u.first_at, $6
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[])
     AS u(id, status, description, capabilities, first_at)
ON CONFLICT (id) DO UPDATE SET
    description = excluded.description,
    capabilities = excluded.capabilities,
    updated_at = excluded.updated_at
"""


async def upsert_descriptions(conn: Conn, rows: Sequence[DescriptionRow], now: datetime) -> str:
    return str(
        await conn.execute(
            UPSERT_DESCRIPTIONS,
            [r.agent_id for r in rows],
            [r.status for r in rows],
            [r.description_json for r in rows],
            [r.capabilities_json for r in rows],
            [r.first_at for r in rows],
            now,
        )
    )


UPSERT_COMPONENTS = """
INSERT INTO agent_available_components AS c (agent_id, hash, components, counts, total,
                                             updated_at)
SELECT u.id, u.hash, u.components::jsonb, u.counts::jsonb, u.total, $6
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[])
     AS u(id, hash, components, counts, total)
ON CONFLICT (agent_id) DO UPDATE SET
    hash = excluded.hash,
    components = excluded.components,
    counts = excluded.counts,
    total = excluded.total,
    updated_at = excluded.updated_at
"""


async def upsert_components(conn: Conn, rows: Sequence[ComponentsRow], now: datetime) -> str:
    """Agents' rows must exist (the writer upserts descriptions first, same transaction)."""
    return str(
        await conn.execute(
            UPSERT_COMPONENTS,
            [r.agent_id for r in rows],
            [r.hash for r in rows],
            [r.components_json for r in rows],
            [r.counts_json for r in rows],
            [r.total for r in rows],
            now,
        )
    )


# One statement for every agent heard from since the last flush; never moves backwards.
UPDATE_LAST_SEEN = """
UPDATE agents AS a SET last_seen_at = u.seen_at, updated_at = $3
FROM unnest($1::text[], $2::timestamptz[]) AS u(id, seen_at)
WHERE a.id = u.id AND (a.last_seen_at IS NULL OR a.last_seen_at < u.seen_at)
"""


async def update_last_seen(conn: Conn, seen: Mapping[str, datetime], now: datetime) -> str:
    return str(await conn.execute(UPDATE_LAST_SEEN, list(seen), list(seen.values()), now))


UPSERT_SNAPSHOTS = """
INSERT INTO agents AS a (id, status, last_seen_at, last_connected_at, last_disconnected_at,
                         disconnect_reason, description, capabilities, created_at, updated_at)
SELECT u.id, u.status, u.seen, u.connected, u.disconnected, u.reason, u.description::jsonb,
       u.capabilities::jsonb, u.first_at, $10
FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::timestamptz[],
            $6::text[], $7::text[], $8::text[], $9::timestamptz[])
     AS u(id, status, seen, connected, disconnected, reason, description, capabilities,
          first_at)
ON CONFLICT (id) DO UPDATE SET
    status = {status},
    last_seen_at = GREATEST(a.last_seen_at, excluded.last_seen_at),
    last_connected_at = COALESCE(excluded.last_connected_at, a.last_connected_at),
    last_disconnected_at = COALESCE(excluded.last_disconnected_at, a.last_disconnected_at),
    disconnect_reason = COALESCE(excluded.disconnect_reason, a.disconnect_reason),
    description = excluded.description,
    capabilities = excluded.capabilities,
    updated_at = excluded.updated_at
""".format(status=_status_unless_held_elsewhere("$11"))


async def upsert_snapshots(
    conn: Conn, rows: Sequence[SnapshotRow], now: datetime, replica_id: str
) -> str:
    return str(
        await conn.execute(
            UPSERT_SNAPSHOTS,
            [r.agent_id for r in rows],
            [r.status for r in rows],
            [r.last_seen_at for r in rows],
            [r.last_connected_at for r in rows],
            [r.last_disconnected_at for r in rows],
            [clean_text(r.disconnect_reason) for r in rows],
            [r.description_json for r in rows],
            [r.capabilities_json for r in rows],
            [r.first_at for r in rows],
            now,
            replica_id,
        )
    )


# -- crash recovery ------------------------------------------------------------------------

CLOSE_OPEN_SESSIONS = """
UPDATE agent_connection_history
SET disconnected_at = GREATEST($1, connected_at),
    duration_seconds = GREATEST(0, EXTRACT(EPOCH FROM ($1 - connected_at)))::float8,
    disconnect_reason = $2
WHERE disconnected_at IS NULL AND ($3::text IS NULL OR replica_id = $3)
"""


async def close_open_sessions(
    conn: Conn, now: datetime, reason: str, replica_id: str | None
) -> int:
    """Close rows left open (by `replica_id`, or by anyone when None); return how many."""
    return rows_affected(await conn.execute(CLOSE_OPEN_SESSIONS, now, reason, replica_id))


# Agents still marked online with no open session anywhere: offline, with a transition.
MARK_UNCONNECTED_OFFLINE = """
WITH stale AS (
    UPDATE agents AS a
    SET status = 'offline', last_disconnected_at = $1, disconnect_reason = $2, updated_at = $1
    WHERE a.status = 'online' AND NOT EXISTS (
        SELECT 1 FROM agent_connection_history h
        WHERE h.agent_id = a.id AND h.disconnected_at IS NULL)
    RETURNING a.id
)
INSERT INTO agent_state_transitions (agent_id, from_status, to_status, reason, at)
SELECT id, 'online', 'offline', $2, $1 FROM stale
"""


async def mark_unconnected_agents_offline(conn: Conn, now: datetime, reason: str) -> int:
    return rows_affected(await conn.execute(MARK_UNCONNECTED_OFFLINE, now, reason))


# -- retention ------------------------------------------------------------------------------

# Closed sessions that started and ended before the cutoff; open rows are never deleted.
# `LIMIT` in a sub-select keeps each statement (and its locks) small: see store/retention.py.
DELETE_OLD_SESSIONS = """
DELETE FROM agent_connection_history
WHERE id IN (
    SELECT id FROM agent_connection_history
    WHERE connected_at < $1 AND disconnected_at < $1
    LIMIT $2
)
"""

DELETE_OLD_TRANSITIONS = """
DELETE FROM agent_state_transitions
WHERE id IN (SELECT id FROM agent_state_transitions WHERE at < $1 LIMIT $2)
"""


async def delete_old_sessions(conn: Conn, before: datetime, limit: int) -> int:
    return rows_affected(await conn.execute(DELETE_OLD_SESSIONS, before, limit))


async def delete_old_transitions(conn: Conn, before: datetime, limit: int) -> int:
    return rows_affected(await conn.execute(DELETE_OLD_TRANSITIONS, before, limit))


# -- reads ---------------------------------------------------------------------------------

_AGENT_COLUMNS = """id, status, last_seen_at, last_connected_at, last_disconnected_at,
    disconnect_reason, description::text, capabilities::text, created_at, updated_at"""


async def get_agent(conn: Conn, agent_id: str) -> AgentRow | None:
    row = await conn.fetchrow(f"SELECT {_AGENT_COLUMNS} FROM agents WHERE id = $1", agent_id)
    return None if row is None else _agent(row)


async def list_agents(
    conn: Conn, status: str | None = None, *, after_id: str | None = None, limit: int = 100
) -> list[AgentRow]:
    """Agents by id (keyset: pass the last id of the previous page), optionally by status."""
    rows = await conn.fetch(
        f"SELECT {_AGENT_COLUMNS} FROM agents "
        "WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR id > $2) "
        "ORDER BY id LIMIT $3",
        status,
        after_id,
        limit,
    )
    return [_agent(row) for row in rows]


async def list_stale_agents(conn: Conn, seen_before: datetime, limit: int = 1000) -> list[AgentRow]:
    """Agents stored as online but not heard from since `seen_before`, oldest first."""
    rows = await conn.fetch(
        f"SELECT {_AGENT_COLUMNS} FROM agents "
        "WHERE status = 'online' AND (last_seen_at IS NULL OR last_seen_at < $1) "
        "ORDER BY last_seen_at NULLS FIRST, id LIMIT $2",
        seen_before,
        limit,
    )
    return [_agent(row) for row in rows]


async def agent_history(
    conn: Conn, agent_id: str, *, before: HistoryCursor | None = None, limit: int = 50
) -> list[HistoryRow]:
    """One agent's sessions, newest first; pass the last row's cursor for the next page."""
    rows = await conn.fetch(
        "SELECT id, agent_id, session_id::text, replica_id, connected_at, disconnected_at, "
        "duration_seconds, disconnect_reason, remote_addr, transport "
        "FROM agent_connection_history WHERE agent_id = $1 "
        "AND ($2::timestamptz IS NULL OR (connected_at, id) < ($2, $3::bigint)) "
        "ORDER BY connected_at DESC, id DESC LIMIT $4",
        agent_id,
        before.connected_at if before else None,
        before.id if before else None,
        limit,
    )
    return [HistoryRow(**dict(row)) for row in rows]


async def agent_transitions(
    conn: Conn, agent_id: str, *, before_id: int | None = None, limit: int = 100
) -> list[TransitionRow]:
    """One agent's phase changes, newest first (pass the last id for the next page)."""
    rows = await conn.fetch(
        "SELECT id, agent_id, from_status, to_status, reason, at "
        "FROM agent_state_transitions WHERE agent_id = $1 "
        "AND ($2::bigint IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
        agent_id,
        before_id,
        limit,
    )
    return [TransitionRow(**dict(row)) for row in rows]


async def agent_components(conn: Conn, agent_id: str) -> StoredComponents | None:
    row = await conn.fetchrow(
        "SELECT agent_id, hash, components::text, counts::text, total, updated_at "
        "FROM agent_available_components WHERE agent_id = $1",
        agent_id,
    )
    if row is None:
        return None
    components = row["components"]
    return StoredComponents(
        agent_id=row["agent_id"],
        hash=row["hash"],
        components=json.loads(components) if components is not None else None,
        counts=json.loads(row["counts"]),
        total=row["total"],
        updated_at=row["updated_at"],
    )


def rows_affected(status: str) -> int:
    """The row count of a command status such as 'INSERT 0 12' or 'UPDATE 3'."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


def _agent(row: Any) -> AgentRow:
    description, capabilities = row["description"], row["capabilities"]
    return AgentRow(
        agent_id=row["id"],
        status=row["status"],
        last_seen_at=row["last_seen_at"],
        last_connected_at=row["last_connected_at"],
        last_disconnected_at=row["last_disconnected_at"],
        disconnect_reason=row["disconnect_reason"],
        description=json.loads(description) if description is not None else None,
        capabilities=json.loads(capabilities) if capabilities is not None else None,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )
