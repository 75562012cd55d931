"""A list+watch of one custom resource kind in one namespace, over aiohttp, in every replica.

Why not a Kopf handler: with Kopf peering only the active replica processes watch events,
but remote config must reach agents connected to any replica, and each replica only holds its
own agents' sessions. So every replica runs this small informer: list (paged), then watch from
the list's resourceVersion with bookmarks; when the watch ends it resumes from the last
resourceVersion seen, and relists when the server says that is too old (410 Gone).

It is async (aiohttp, which Kopf runs on already) rather than the official client in a
thread: a watch is a long-lived request, and cancelling a task is how it stops.
The handler is called on the event loop: `replace(items)` after every (re)list with the
complete set, `apply(type, object)` for every ADDED/MODIFIED/DELETED event.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from kubernetes import client as k8s

from opamp_operator import metrics

from .client import load_configuration
from .naming import GROUP, VERSION

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 16 * 1024 * 1024  # one watch event; objects are at most ~1.5 MiB in etcd
PAGE_SIZE = 500


class InformerHandler(Protocol):
    def replace(self, items: list[dict[str, Any]]) -> None:
        """Every object there is, after a (re)list."""

    def apply(self, event_type: str, obj: dict[str, Any]) -> None:
        """One change: ADDED, MODIFIED or DELETED."""


class Gone(Exception):
    """410: the resourceVersion (or continue token) is too old; list again."""


class NotServed(Exception):
    """404 or 403 on the list: the CRD is not installed (yet), or we may not read it."""


@dataclass(frozen=True)
class KubeEndpoint:
    """Where the API server is and how to authenticate, from a client Configuration."""

    configuration: k8s.Configuration

    @property
    def host(self) -> str:
        return str(self.configuration.host).rstrip("/")

    @classmethod
    async def connect(cls, kubeconfig: Path | None) -> KubeEndpoint:
        """Credentials as `KubeApi.connect` loads them, read off the event loop."""
        loop = asyncio.get_running_loop()
        return cls(await loop.run_in_executor(None, load_configuration, kubeconfig))

    def ssl_context(self) -> ssl.SSLContext | bool:
        """Blocking (reads files): call once, off the event loop."""
        configuration = self.configuration
        if not self.host.startswith("https"):
            return False
        if not configuration.verify_ssl:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        else:
            context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
        if configuration.cert_file:
            context.load_cert_chain(configuration.cert_file, configuration.key_file)
        return context

    def headers(self) -> dict[str, str]:
        """Blocking (an in-cluster token is re-read from its file): call off the event loop."""
        configuration = self.configuration
        token = configuration.get_api_key_with_prefix(
            "BearerToken"
        ) or configuration.get_api_key_with_prefix("authorization")
        if token:
            return {"Authorization": token}
        if configuration.username:
            return {"Authorization": configuration.get_basic_auth_token()}
        return {}


class Informer:
    """List and watch `plural` in `namespace`; `run()` until cancelled."""

    def __init__(
        self,
        endpoint: KubeEndpoint,
        namespace: str,
        plural: str,
        handler: InformerHandler,
        *,
        watch_seconds: int = 300,
        retry_max_seconds: float = 30.0,
    ) -> None:
        self.endpoint = endpoint
        self.plural = plural
        self.handler = handler
        self.watch_seconds = watch_seconds
        self.retry_max_seconds = retry_max_seconds
        self.path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{plural}"
        self.synced = asyncio.Event()  # set after the first complete list
        self.lists = 0
        self._ssl: ssl.SSLContext | bool = True

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._ssl = await loop.run_in_executor(None, self.endpoint.ssl_context)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=None)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            delay, version = 0.5, None
            while True:
                try:
                    if version is None:
                        version = await self._list(session)
                    version = await self._watch(session, version)
                    delay = 0.5
                except Gone:
                    log.info("watch of %s expired; listing again", self.plural)
                    version = None
                except NotServed as error:
                    # Nothing of this kind we can see: say so once, look again later.
                    if not self.synced.is_set():
                        log.warning("cannot list %s (%s); looking again later", self.plural, error)
                    self.handler.replace([])
                    self.synced.set()
                    await asyncio.sleep(self.retry_max_seconds)
                except (aiohttp.ClientError, TimeoutError, ValueError, OSError) as error:
                    metrics.kube_informer_errors.labels(self.plural).inc()
                    log.warning(
                        "watch of %s failed (again in %.1fs): %r", self.plural, delay, error
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.retry_max_seconds)

    async def _headers(self) -> dict[str, str]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.endpoint.headers)

    async def _list(self, session: aiohttp.ClientSession) -> str:
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            params = {"limit": str(PAGE_SIZE)}
            if token:
                params["continue"] = token
            url = self.endpoint.host + self.path
            async with session.get(
                url, params=params, headers=await self._headers(), ssl=self._ssl
            ) as response:
                if response.status == 410:
                    raise Gone()
                if response.status in (403, 404):
                    metrics.kube_informer_errors.labels(self.plural).inc()
                    detail = "forbidden" if response.status == 403 else "CRD not installed?"
                    raise NotServed(f"{response.status}: {detail}")
                await _raise_for_status(response, "list " + self.plural)
                page = await response.json(loads=json.loads)
            items.extend(page.get("items") or [])
            metadata = page.get("metadata") or {}
            token = metadata.get("continue")
            if not token:
                break
        self.lists += 1
        self.handler.replace(items)
        self.synced.set()
        return str(metadata.get("resourceVersion", ""))

    async def _watch(self, session: aiohttp.ClientSession, version: str) -> str:
        """Watch from `version` until the server ends the watch; return the last version."""
        params = {
            "watch": "true",
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(self.watch_seconds),
        }
        read_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=10, sock_read=self.watch_seconds + 30
        )
        url = self.endpoint.host + self.path
        async with session.get(
            url, params=params, headers=await self._headers(), ssl=self._ssl, timeout=read_timeout
        ) as response:
            if response.status == 410:
                raise Gone()
            await _raise_for_status(response, "watch " + self.plural)
            async for event in _events(response.content):
                version = self._dispatch(event, version)
        return version

    def _dispatch(self, event: Mapping[str, Any], version: str) -> str:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Gone()
            raise ValueError(f"watch error: {obj.get('message')}")
        latest = (obj.get("metadata") or {}).get("resourceVersion") or version
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            try:
                self.handler.apply(str(kind), obj)
            except Exception:
                log.exception("handling a %s event of %s failed", kind, self.plural)
        return str(latest)


async def _events(stream: aiohttp.StreamReader) -> AsyncIterator[dict[str, Any]]:
    """One JSON object per line, each at most MAX_LINE_BYTES."""
    buffer = bytearray()
    async for chunk in stream.iter_any():
        buffer += chunk
        while (end := buffer.find(b"\n")) >= 0:
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            if line.strip():
                yield json.loads(line)
        if len(buffer) > MAX_LINE_BYTES:
            raise ValueError(f"a watch event exceeds {MAX_LINE_BYTES} bytes")


async def _raise_for_status(response: aiohttp.ClientResponse, what: str) -> None:
    if response.status >= 400:
        body = (await response.text())[:300]
        raise aiohttp.ClientResponseError(
            response.request_info,
            response.history,
            status=response.status,
            message=f"{what}: {body}",
        )
