"""Crash recovery at start: close the sessions a previous run of this replica left open."""

from __future__ import annotations

import logging
from datetime import datetime

import asyncpg

from opamp_operator.fleet.model import Reason

from . import queries

log = logging.getLogger(__name__)


async def close_orphaned_sessions(
    pool: asyncpg.Pool,
    now: datetime,
    reason: str = Reason.OPERATOR_RESTART,
    *,
    replica_id: str | None = None,
) -> int:
    """Close history rows left open; return how many. Run before accepting agents.

    With `replica_id`, only that replica's rows are closed (other replicas' sessions are
    alive); with None, all of them (a single replica). The replica id must be stable
    across restarts (a StatefulSet pod name, say) for its own rows to be found again.
    Then agents still marked online with no open session anywhere become offline, with
    a transition row. One transaction; `now` is the operator's clock.
    """
    async with pool.acquire() as conn, conn.transaction():
        closed = await queries.close_open_sessions(conn, now, str(reason), replica_id)
        offline = await queries.mark_unconnected_agents_offline(conn, now, str(reason))
    if closed or offline:
        log.info(
            "crash recovery: closed %d sessions left open by %s, marked %d agents offline (%s)",
            closed,
            f"replica {replica_id}" if replica_id is not None else "any replica",
            offline,
            reason,
        )
    return closed


async def close_lost_replica_sessions(
    pool: asyncpg.Pool, replica_id: str, at: datetime, reason: str = Reason.REPLICA_LOST
) -> int:
    """Adoption of a lost replica: close its open rows as of `at` (its Lease's last renewal).

    The same statements as the crash recovery above, for another replica's id: its agents
    that have no open session anywhere (they did not reconnect elsewhere) become offline
    with a transition row. Idempotent: a second adopter finds nothing left open.
    """
    async with pool.acquire() as conn, conn.transaction():
        closed = await queries.close_open_sessions(conn, at, str(reason), replica_id)
        offline = await queries.mark_unconnected_agents_offline(conn, at, str(reason))
    log.info(
        "adoption of replica %s: closed %d sessions as %s at %s, marked %d agents offline",
        replica_id, closed, reason, at.isoformat(), offline,
    )  # fmt: skip
    return closed
