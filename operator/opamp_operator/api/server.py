"""The HTTP server of the REST API, `/metrics`, `/healthz` and `/readyz`.

Every `/api/v1/agents...` route is authorized (see auth.py); `/api/v1/openapi.json`,
`/metrics`, `/healthz` and `/readyz` are not, so probes and Prometheus need no token.
Errors are problem documents; every answer is counted by route template and status.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from opamp_operator import metrics
from opamp_operator.config import ApiSettings, ConfigError
from opamp_operator.fleet.registry import Fleet

from .auth import Authorizer, AuthUnavailable
from .handlers import USER, AgentRoutes, route_name
from .history import HistoryReader
from .index import AgentIndex
from .openapi import openapi_document
from .problems import (
    Problem,
    forbidden,
    from_http_exception,
    internal_error,
    unauthorized,
    unavailable,
)

log = logging.getLogger(__name__)

PREFIX = "/api/v1"
# (method, route template) -> the RBAC verb it needs on opampagents; other routes are public.
VERBS: Mapping[tuple[str, str], str] = {
    ("GET", f"{PREFIX}/agents"): "list",
    ("GET", f"{PREFIX}/agents/offline"): "list",
    ("GET", f"{PREFIX}/agents/{{id}}/status"): "get",
    ("GET", f"{PREFIX}/agents/{{id}}/connection-history"): "get",
    ("GET", f"{PREFIX}/agents/{{id}}/transitions"): "get",
    ("GET", f"{PREFIX}/agents/{{id}}/components"): "get",
    ("POST", f"{PREFIX}/agents/{{id}}/reconnect"): "update",
    ("POST", f"{PREFIX}/agents/{{id}}/restart"): "update",
}


class ApiServer:
    """Serves the REST API on `settings.host`:`settings.port` (0: any free port, see `.port`)."""

    def __init__(
        self,
        settings: ApiSettings,
        fleet: Fleet,
        history: HistoryReader | None,
        auth: Authorizer | None,
        readiness: Callable[[], dict[str, bool]],
    ) -> None:
        if settings.auth_enabled and auth is None:
            raise ConfigError("API authentication is enabled but no authorizer was given")
        self.settings = settings
        self.fleet = fleet
        self.auth = auth if settings.auth_enabled else None
        self.readiness = readiness
        self.port: int | None = None
        self._collector = metrics.FleetCollector(fleet.counts, fleet.departed)
        self._runner: web.AppRunner | None = None
        self._openapi = json.dumps(openapi_document(settings)).encode()
        self.app = web.Application(middlewares=[self._middleware])
        self.index = AgentIndex(fleet)
        AgentRoutes(settings, fleet, history, self.index).add_to(self.app, PREFIX)
        router = self.app.router
        router.add_get(f"{PREFIX}/openapi.json", self._openapi_json, allow_head=False)
        router.add_get("/metrics", self._metrics, allow_head=False)
        router.add_get("/healthz", self._healthz, allow_head=False)
        router.add_get("/readyz", self._readyz, allow_head=False)

    async def start(self) -> None:
        metrics.REGISTRY.register(self._collector)
        self.index.start()
        runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=5.0
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.settings.host, self.settings.port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            await self.index.stop()
            metrics.REGISTRY.unregister(self._collector)
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        log.info("REST API listening on %s:%d", self.settings.host, self.port)
        if not self.settings.auth_enabled:
            log.warning(
                "REST API authentication is OFF: anyone who reaches %s:%d may read agent "
                "state and request reconnects",
                self.settings.host,
                self.port,
            )

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
            await self.index.stop()
            metrics.REGISTRY.unregister(self._collector)

    # -- every request -----------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        route = route_name(request)
        try:
            await self._authorize(request, route)
            response = await handler(request)
        except Problem as problem:
            response = problem.response(request.path)
        except web.HTTPException as error:
            response = from_http_exception(error).response(request.path)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("REST %s %s failed", request.method, request.path)
            metrics.api_errors.labels(route=route, cause="internal").inc()
            response = internal_error().response(request.path)
        metrics.api_requests.labels(
            route=route, method=request.method, code=str(response.status)
        ).inc()
        metrics.api_request_seconds.labels(route=route).observe(time.perf_counter() - started)
        return response

    async def _authorize(self, request: web.Request, route: str) -> None:
        verb = VERBS.get((request.method, route))
        if verb is None or self.auth is None:
            return
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise unauthorized("send a Kubernetes bearer token: Authorization: Bearer <token>")
        try:
            decision = await self.auth.authorize(token, verb)
        except AuthUnavailable as error:
            metrics.api_errors.labels(route=route, cause="authorization").inc()
            raise unavailable(f"authorization could not be checked: {error}", 1) from error
        if decision.status == 401:
            raise unauthorized(decision.reason)
        if not decision.allowed:
            raise forbidden(decision.reason)
        if decision.user is not None:
            request[USER] = decision.user  # for the handlers' audit logs

    # -- public routes -------------------------------------------------------------

    async def _openapi_json(self, request: web.Request) -> web.Response:
        return web.Response(body=self._openapi, content_type="application/json")

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(metrics.REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        """200 when every check the app reports (listener, database, kubernetes) is true."""
        try:
            checks = {name: bool(ok) for name, ok in self.readiness().items()}
        except Exception as error:
            log.exception("readiness check failed")
            failed = {"ready": False, "checks": {}, "error": f"{type(error).__name__}: {error}"}
            return web.json_response(failed, status=503)
        ready = all(checks.values())
        return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)
