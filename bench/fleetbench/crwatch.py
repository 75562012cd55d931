"""A watch on every OpAMPAgent in a namespace, recording when each CR was seen in each phase.

The benchmark reads "when did the CR show Offline" from here: the time an event arrives
on this watch is the time a `kubectl get -w` user would have seen it. One list, then one
streaming watch (re-listed after 410 Gone); events are parsed with json.loads only.
"""

from __future__ import annotations

import asyncio
import calendar
import json
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from opamp_operator.kube.shapes.naming import GROUP, PLURAL, VERSION, agent_id_from_name
from opamp_operator.testbed.controlplane import ControlPlaneEndpoints

log = logging.getLogger("fleetbench.crwatch")

_WATCH_TIMEOUT_S = 240  # the server ends a watch after this; we resume from the last version


@dataclass
class CrView:
    """What the watch last saw of one CR, and when it saw each change of phase or reason."""

    phase: str | None = None
    reason: str | None = None  # status.disconnectReason
    replica: str | None = None  # status.connection.replica: who holds the session
    last_connected_at: float | None = None  # Unix seconds (the CR keeps whole seconds)
    #: (seen wall time, phase, disconnectReason), one entry per change of either
    phases: list[tuple[float, str, str | None]] = field(default_factory=list)


def parse_rfc3339(text: object) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        return None


class CrWatch:
    def __init__(self, endpoints: ControlPlaneEndpoints, namespace: str) -> None:
        self.url = f"{endpoints.server_url}/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
        context = ssl.create_default_context(cafile=str(endpoints.certs.ca_cert))
        context.load_cert_chain(str(endpoints.certs.admin_cert), str(endpoints.certs.admin_key))
        self._ssl = context
        self.crs: dict[str, CrView] = {}
        self.events = 0
        self._task: asyncio.Task[None] | None = None
        self._synced = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="cr-watch")
        synced = asyncio.create_task(self._synced.wait())
        await asyncio.wait({self._task, synced}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        if self._task.done():
            self._task.result()  # raises what stopped the watch
        if not synced.done():
            synced.cancel()
            raise TimeoutError("the OpAMPAgent list did not succeed within 60 s")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    # -- queries ------------------------------------------------------------------------

    def count(self, predicate: Callable[[str, CrView], bool]) -> int:
        return sum(1 for agent_id, view in self.crs.items() if predicate(agent_id, view))

    async def wait_for(
        self, predicate: Callable[[], bool], within: float, poll: float = 0.1
    ) -> float | None:
        """Wait until `predicate()` holds; the monotonic time it was seen true, or None."""
        deadline = time.monotonic() + within
        while True:
            if predicate():
                return time.monotonic()
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(poll)

    def first_seen(self, agent_id: str, phase: str, after_wall: float) -> float | None:
        """Wall time the watch first saw `agent_id` in `phase` after `after_wall`."""
        view = self.crs.get(agent_id)
        if view is None:
            return None
        for seen, value, _ in view.phases:
            if value == phase and seen >= after_wall:
                return seen
        return None

    def seen_with(self, agent_id: str, phase: str, reason: str, after_wall: float) -> list[float]:
        """Wall times the watch saw `agent_id` enter `phase` for `reason` after `after_wall`."""
        view = self.crs.get(agent_id)
        if view is None:
            return []
        return [s for s, p, r in view.phases if p == phase and r == reason and s >= after_wall]

    # -- the watch ------------------------------------------------------------------------

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_read=_WATCH_TIMEOUT_S + 30)
        connector = aiohttp.TCPConnector(ssl=self._ssl, limit=2)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            version: str | None = None
            while True:
                try:
                    if version is None:  # first, or expired (410): start from a fresh list
                        version = await self._list(session)
                        self._synced.set()
                    version = await self._watch(session, version)
                except aiohttp.ClientError as error:
                    # e.g. 429 "storage is (re)initializing" right after the API server starts
                    log.warning("CR watch interrupted (%s); resuming", error)
                    await asyncio.sleep(0.5)

    async def _list(self, session: aiohttp.ClientSession) -> str:
        async with session.get(self.url) as response:
            response.raise_for_status()
            body = await response.json()
        now = time.time()
        for item in body.get("items", []):
            self._observe(item, now)
        return str(body["metadata"]["resourceVersion"])

    async def _watch(self, session: aiohttp.ClientSession, version: str) -> str | None:
        """Stream events until the server ends the watch; None when a re-list is needed."""
        params = {
            "watch": "1",
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(_WATCH_TIMEOUT_S),
        }
        async with session.get(self.url, params=params) as response:
            if response.status == 410:
                return None
            response.raise_for_status()
            buffer = b""
            async for chunk in response.content.iter_any():
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                now = time.time()
                for line in lines:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    kind, item = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        return None if item.get("code") == 410 else version
                    version = str(item.get("metadata", {}).get("resourceVersion", version))
                    if kind in ("ADDED", "MODIFIED"):
                        self.events += 1
                        self._observe(item, now)
                    elif kind == "DELETED":
                        self.events += 1
                        self._forget(item)
        return version

    def _observe(self, item: dict[str, Any], seen: float) -> None:
        agent_id = agent_id_from_name(str(item.get("metadata", {}).get("name", "")))
        if agent_id is None:
            return
        status = item.get("status") or {}
        view = self.crs.get(agent_id)
        if view is None:
            view = self.crs[agent_id] = CrView()
        phase, reason = status.get("phase"), status.get("disconnectReason")
        if phase is not None and (phase, reason) != (view.phase, view.reason):
            view.phases.append((seen, str(phase), None if reason is None else str(reason)))
        view.phase, view.reason = phase, reason
        view.replica = (status.get("connection") or {}).get("replica")
        view.last_connected_at = parse_rfc3339(status.get("lastConnectedAt"))

    def _forget(self, item: dict[str, Any]) -> None:
        agent_id = agent_id_from_name(str(item.get("metadata", {}).get("name", "")))
        if agent_id is not None:
            self.crs.pop(agent_id, None)
