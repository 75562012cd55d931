"""The `/api/v1/agents...` handlers: the fleet's in-memory state, and history from PostgreSQL."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

from aiohttp import web

from opamp_operator import metrics
from opamp_operator.config import ApiSettings
from opamp_operator.fleet.commands import RestartResult, explain
from opamp_operator.fleet.model import AgentPhase
from opamp_operator.fleet.registry import Fleet

from . import views
from .history import HistoryReader
from .index import AgentIndex
from .paging import (
    decode_session_cursor,
    decode_transition_cursor,
    encode_session_cursor,
    parse_agent_id,
    parse_limit,
    parse_status,
    take_page,
)
from .problems import Problem, conflict, not_found, unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

# Who the authorizer said the caller is (set only when authentication is on).
USER = web.RequestKey("opamp_api_user", str)


def route_name(request: web.Request) -> str:
    """The matched route's template (a bounded metric label), or "unmatched"."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


class AgentRoutes:
    """Handlers for one fleet; `history` may be None when no database is configured."""

    def __init__(
        self,
        settings: ApiSettings,
        fleet: Fleet,
        history: HistoryReader | None,
        index: AgentIndex,
    ) -> None:
        self.settings = settings
        self.fleet = fleet
        self.history = history
        self.index = index

    def add_to(self, app: web.Application, prefix: str) -> None:
        app.router.add_get(f"{prefix}/agents", self.list_agents, allow_head=False)
        app.router.add_get(f"{prefix}/agents/offline", self.offline_agents, allow_head=False)
        app.router.add_get(f"{prefix}/agents/{{id}}/status", self.agent_status, allow_head=False)
        app.router.add_get(
            f"{prefix}/agents/{{id}}/connection-history", self.connection_history, allow_head=False
        )
        app.router.add_get(
            f"{prefix}/agents/{{id}}/transitions", self.transitions, allow_head=False
        )
        app.router.add_get(f"{prefix}/agents/{{id}}/components", self.components, allow_head=False)
        app.router.add_post(f"{prefix}/agents/{{id}}/reconnect", self.reconnect)
        app.router.add_post(f"{prefix}/agents/{{id}}/restart", self.restart)

    # -- the fleet, in memory ----------------------------------------------------

    async def list_agents(self, request: web.Request) -> web.Response:
        phase = parse_status(request.query.get("status"))
        limit = self._limit(request)
        raw_cursor = request.query.get("cursor")
        after = parse_agent_id(raw_cursor, "cursor") if raw_cursor is not None else None
        page = take_page(self.index.after(after, phase), self.fleet.get, limit)
        items = [views.agent_summary(snapshot) for snapshot in page.items]
        return web.json_response({"items": items, "nextCursor": page.next_cursor})

    async def agent_status(self, request: web.Request) -> web.Response:
        agent_id = parse_agent_id(request.match_info["id"])
        snapshot = self.fleet.get(agent_id)
        if snapshot is None:
            raise not_found(f"no agent {agent_id} is known to this operator")
        return web.json_response(views.agent_status(snapshot))

    async def offline_agents(self, request: web.Request) -> web.Response:
        now = self.fleet.clock.now()
        down = [s for s in map(self.fleet.get, self.index.down()) if s is not None]
        down.sort(key=lambda s: (s.phase_since, s.agent_id))  # longest down first
        items = [views.offline_agent(s, now) for s in down if s.phase is not AgentPhase.ONLINE]
        return web.json_response({"items": items, "count": len(items)})

    async def reconnect(self, request: web.Request) -> web.Response:
        agent_id = parse_agent_id(request.match_info["id"])
        snapshot = self.fleet.get(agent_id)
        if snapshot is None:
            raise not_found(f"no agent {agent_id} is known to this operator")
        transport = snapshot.session.transport.value if snapshot.session else None
        if not self.fleet.request_reconnect(agent_id):
            raise conflict(f"agent {agent_id} is not connected to this operator ({snapshot.phase})")
        user = request.get(USER) or "anonymous (auth off)"
        log.info("reconnect of agent %s (%s) requested by %s", agent_id, transport, user)
        body = {"id": agent_id, "status": "reconnect requested", "transport": transport}
        return web.json_response(body, status=202)

    async def restart(self, request: web.Request) -> web.Response:
        agent_id = parse_agent_id(request.match_info["id"])
        result = self.fleet.request_restart(agent_id)
        metrics.restart_requests.labels("api", result.value).inc()
        user = request.get(USER) or "anonymous (auth off)"
        message = explain(result, agent_id)
        if result is RestartResult.UNKNOWN_AGENT:
            raise not_found(f"no agent {agent_id} is known to this operator")
        if not result.accepted:
            log.info("restart of agent %s requested by %s refused: %s", agent_id, user, message)
            kind = "restart-not-supported" if result is RestartResult.NOT_SUPPORTED else "conflict"
            raise Problem(409, kind, "Conflict", message)
        snapshot = self.fleet.get(agent_id)
        transport = snapshot.session.transport.value if snapshot and snapshot.session else None
        log.info("restart of agent %s (%s) requested by %s: %s", agent_id, transport, user, message)
        body = {"id": agent_id, "status": "restart requested", "result": result.value,
                "transport": transport}  # fmt: skip
        return web.json_response(body, status=202)

    # -- history, from PostgreSQL -------------------------------------------------

    async def connection_history(self, request: web.Request) -> web.Response:
        agent_id = parse_agent_id(request.match_info["id"])
        limit = self._limit(request)
        raw = request.query.get("cursor")
        before = decode_session_cursor(raw) if raw is not None else None
        reader = self._reader()
        # One row more than asked tells whether another page follows.
        call = reader.history(agent_id, limit + 1, before)
        rows = await self._rows(request, agent_id, reader, call)
        page = rows[:limit]
        last = page[-1] if len(rows) > limit else None
        cursor = encode_session_cursor(last["connected_at"], last["id"]) if last else None
        items = [views.history_entry(row) for row in page]
        return web.json_response({"items": items, "nextCursor": cursor})

    async def transitions(self, request: web.Request) -> web.Response:
        agent_id = parse_agent_id(request.match_info["id"])
        limit = self._limit(request)
        raw = request.query.get("cursor")
        before = decode_transition_cursor(raw) if raw is not None else None
        reader = self._reader()
        call = reader.transitions(agent_id, limit + 1, before)
        rows = await self._rows(request, agent_id, reader, call)
        page = rows[:limit]
        cursor = str(page[-1]["id"]) if len(rows) > limit else None
        items = [views.transition_entry(row) for row in page]
        return web.json_response({"items": items, "nextCursor": cursor})

    async def components(self, request: web.Request) -> web.Response:
        """The fleet's copy of an agent's AvailableComponents, else the database's."""
        agent_id = parse_agent_id(request.match_info["id"])
        snapshot = self.fleet.get(agent_id)
        held = snapshot.available_components if snapshot is not None else None
        if held is not None:
            return web.json_response(views.agent_components(agent_id, held))
        if self.history is not None:
            call = self.history.components(agent_id)
            stored = await self._from_store(route_name(request), agent_id, call)
            if stored is not None:
                return web.json_response(views.stored_components(stored))
        if snapshot is not None:
            raise not_found(f"agent {agent_id} has not reported available components")
        raise not_found(f"no agent {agent_id} is known to this operator or its history")

    def _reader(self) -> HistoryReader:
        if self.history is None:
            raise unavailable("no database is configured: history is not kept")
        return self.history

    async def _rows(
        self,
        request: web.Request,
        agent_id: str,
        reader: HistoryReader,
        call: Awaitable[list[dict[str, Any]]],
    ) -> list[dict[str, Any]]:
        """The rows `call` reads; 404 when there are none and the agent is unknown anywhere."""
        route = route_name(request)
        rows = await self._from_store(route, agent_id, call)
        unknown = not rows and self.fleet.get(agent_id) is None
        if unknown and not await self._from_store(route, agent_id, reader.known(agent_id)):
            raise not_found(f"no agent {agent_id} is known to this operator or its history")
        return rows

    async def _from_store(self, route: str, agent_id: str, call: Awaitable[T]) -> T:
        try:
            return await call
        except Problem:
            raise
        except Exception as error:
            metrics.api_errors.labels(route=route, cause="database").inc()
            log.error(
                "history query for agent %s failed: %s: %s", agent_id, type(error).__name__, error
            )
            raise unavailable("the history database did not answer; try again", 5) from error

    def _limit(self, request: web.Request) -> int:
        return parse_limit(
            request.query.get("limit"), self.settings.page_size, self.settings.max_page_size
        )
