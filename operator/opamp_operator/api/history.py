"""Reading agent history from PostgreSQL: the `HistoryReader` protocol and its store adapter.

Rows are plain dicts keyed by the column names of `agent_connection_history` and
`agent_state_transitions` (including the row `id` the cursors page on), and of
`agent_available_components`; the REST views turn
them into JSON. Pages go newest first.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

from opamp_operator.store import queries
from opamp_operator.store.rows import HistoryCursor

from .paging import SessionCursor


class HistoryReader(Protocol):
    async def history(
        self, agent_id: str, limit: int, before: SessionCursor | None
    ) -> list[dict[str, Any]]:
        """Sessions before `before`, newest first: id, session_id, connected_at,
        disconnected_at, duration_seconds, disconnect_reason, remote_addr, transport."""
        ...

    async def transitions(
        self, agent_id: str, limit: int, before: int | None
    ) -> list[dict[str, Any]]:
        """Phase changes with a row id below `before`, newest first: id, from_status,
        to_status, reason, at (statuses lowercase: online, offline, error)."""
        ...

    async def known(self, agent_id: str) -> bool:
        """Whether the database has ever stored this agent."""
        ...

    async def components(self, agent_id: str) -> dict[str, Any] | None:
        """The agent's stored AvailableComponents: agent_id, hash, components (None: only
        the hash is known), counts, total, updated_at; None when none is stored."""
        ...


class StoreHistoryReader:
    """`HistoryReader` on the store's asyncpg pool, through `store.queries`."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    async def history(
        self, agent_id: str, limit: int, before: SessionCursor | None
    ) -> list[dict[str, Any]]:
        cursor = HistoryCursor(before.connected_at, before.id) if before else None
        rows = await queries.agent_history(self._pool, agent_id, before=cursor, limit=limit)
        return [dataclasses.asdict(row) for row in rows]

    async def transitions(
        self, agent_id: str, limit: int, before: int | None
    ) -> list[dict[str, Any]]:
        rows = await queries.agent_transitions(self._pool, agent_id, before_id=before, limit=limit)
        return [dataclasses.asdict(row) for row in rows]

    async def known(self, agent_id: str) -> bool:
        return await queries.get_agent(self._pool, agent_id) is not None

    async def components(self, agent_id: str) -> dict[str, Any] | None:
        stored = await queries.agent_components(self._pool, agent_id)
        return None if stored is None else dataclasses.asdict(stored)
