"""A list+watch of one custom resource kind in one namespace, over aiohttp, in every replica.

Why not a Kopf handler: with Kopf peering only the active replica processes watch events,
but remote config must reach agents connected to any replica, and each replica only holds its
own agents' sessions. So every replica runs this small informer: list (paged), then watch from
the list's resourceVersion with bookmarks; when the watch ends it resumes from the last
resourceVersion seen, and relists when the server says that is too old (410 Gone).

Requests go through `kube.api.ApiSession` (aiohttp on the event loop): a watch is a
long-lived request, and cancelling a task is how it stops.
The handler is called on the event loop: `replace(items)` after every (re)list with the
complete set, `apply(type, object)` for every ADDED/MODIFIED/DELETED event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from opamp_operator import metrics
from opamp_operator.backoff import Backoff
from opamp_operator.kube.api import ApiSession, Forbidden, Gone, KubeApiError, NotFound
from opamp_operator.kube.shapes.naming import GROUP, VERSION

log = logging.getLogger(__name__)


class InformerHandler(Protocol):
    def replace(self, items: list[dict[str, Any]]) -> None:
        """Every object there is, after a (re)list."""

    def apply(self, event_type: str, obj: dict[str, Any]) -> None:
        """One change: ADDED, MODIFIED or DELETED."""


class Fanout:
    """One watch, several handlers: each gets every (re)list and every event, in order.

    A handler that fails is logged and skipped for that call; the others still get it.
    """

    def __init__(self) -> None:
        self._handlers: list[InformerHandler] = []

    def add(self, handler: InformerHandler) -> None:
        self._handlers.append(handler)

    def replace(self, items: list[dict[str, Any]]) -> None:
        for handler in self._handlers:
            try:
                handler.replace(items)
            except Exception:
                log.exception("a watch subscriber failed on a listing (%s)", handler)

    def apply(self, event_type: str, obj: dict[str, Any]) -> None:
        for handler in self._handlers:
            try:
                handler.apply(event_type, obj)
            except Exception:
                log.exception("a watch subscriber failed on a %s event (%s)", event_type, handler)


class Informer:
    """List and watch one kind in `namespace`; `run()` until cancelled.

    The one list+watch loop of the operator: OpAMPAgents and OpAMPAgentConfigs (our group,
    `plural`), and Pods' metadata per namespace (`kube/pods/podcache.py`, with `path` and
    `accept`). Errors: a refused list (403/404) of a custom resource means there is nothing
    to see, so the handler gets an empty listing (`refused_clears`); for Pods, where an empty
    listing would read as every Pod deleted, it is a failure like any other. Failures are
    retried with `backoff` and told to `on_failure` (with the count of failures in a row).
    """

    def __init__(
        self,
        session: ApiSession,
        namespace: str,
        plural: str,
        handler: InformerHandler,
        *,
        path: str | None = None,
        accept: tuple[str, str] | None = None,  # (list, watch) Accept headers
        refused_clears: bool = True,
        on_failure: Callable[[KubeApiError, int], None] | None = None,
        backoff: Backoff | None = None,
        watch_seconds: int = 300,
        retry_max_seconds: float = 30.0,
    ) -> None:
        self.session = session
        self.plural = plural
        self.handler = handler
        self.watch_seconds = watch_seconds
        self.retry_max_seconds = retry_max_seconds
        self._backoff = backoff or Backoff.up_to(retry_max_seconds)  # 0.5 s doubling
        self.path = path or f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{plural}"
        self._accept_list: str | None = accept[0] if accept else None
        self._accept_watch: str | None = accept[1] if accept else None
        self._refused_clears = refused_clears
        self._on_failure = on_failure
        self.synced = asyncio.Event()  # set after the first complete list
        self.lists = 0

    async def run(self) -> None:
        failures, version = 0, None
        while True:
            try:
                if version is None:
                    version = await self._list()
                version = await self._watch(version)
                failures = 0
            except Gone:
                log.info("watch of %s expired; listing again", self.plural)
                version = None
            except (Forbidden, NotFound) as error:
                if not self._refused_clears:
                    failures += 1
                    await self._failed(error, failures)
                    continue
                # Nothing of this kind we can see: say so once, look again later.
                metrics.kube_informer_errors.labels(self.plural).inc()
                if not self.synced.is_set():
                    log.warning("cannot list %s (%s); looking again later", self.plural, error)
                self.handler.replace([])
                self.synced.set()
                version = None
                await asyncio.sleep(self.retry_max_seconds)
            except KubeApiError as error:
                failures += 1
                await self._failed(error, failures)
            except Exception as error:  # a bug (ours, in a handler) must not end the watch
                failures += 1
                version = None
                log.exception("watch of %s failed", self.plural)
                await self._failed(KubeApiError(0, repr(error)), failures)

    async def _failed(self, error: KubeApiError, failures: int) -> None:
        delay = self._backoff.delay(failures)
        metrics.kube_informer_errors.labels(self.plural).inc()
        if self._on_failure is not None:
            self._on_failure(error, failures)  # it logs (and counts) as it sees fit
        else:
            log.warning("watch of %s failed (again in %.1fs): %s", self.plural, delay, error)
        await asyncio.sleep(delay)

    async def _list(self) -> str:
        items, version = await self.session.list(self.path, accept=self._accept_list)
        self.lists += 1
        self.handler.replace(items)
        self.synced.set()
        return version

    async def _watch(self, version: str) -> str:
        """Watch from `version` until the server ends the watch; return the last version."""
        async for event in self.session.watch(
            self.path, version, timeout_seconds=self.watch_seconds, accept=self._accept_watch
        ):
            version = self._dispatch(event, version)
        return version

    def _dispatch(self, event: Mapping[str, Any], version: str) -> str:
        kind, obj = event.get("type"), event.get("object") or {}
        latest = (obj.get("metadata") or {}).get("resourceVersion") or version
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            try:
                self.handler.apply(str(kind), obj)
            except Exception:
                log.exception("handling a %s event of %s failed", kind, self.plural)
        return str(latest)
