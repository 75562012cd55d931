"""Pod metadata from the API server: get one, list a namespace, watch a namespace (async).

Why not `KubeApi` (the official client on a thread pool): a watch holds its request open for
minutes, which would pin one of the pool's few threads per watched namespace. aiohttp (which
Kopf runs on already) streams the watch on the event loop instead.

Only metadata is asked for (`Accept: ...;as=PartialObjectMetadata`): uid, name, owners. A Pod
spec can carry secrets in environment variables, and metadata is a fraction of the bytes.
Credentials come from the same `kubernetes.client.Configuration` as everything else (client
certificate, bearer token, refreshed through the configuration's own hook).
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
from kubernetes import client as k8s

from .client import KubeApiError
from .podlink import PodMeta

_META = "g=meta.k8s.io;v=v1"
ACCEPT_ONE = f"application/json;as=PartialObjectMetadata;{_META},application/json"
ACCEPT_LIST = f"application/json;as=PartialObjectMetadataList;{_META},application/json"
LIST_PAGE_SIZE = 500
MAX_EVENT_BYTES = 1 << 20  # one watch event (a Pod's metadata): far below this


class WatchExpired(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""


@dataclass(frozen=True, slots=True)
class PodEvent:
    """One watch event: ADDED, MODIFIED, DELETED or BOOKMARK (pod None for bookmarks)."""

    type: str
    pod: PodMeta | None
    resource_version: str


class PodApi:
    """Reads Pod metadata in any namespace the operator may read; `start()`, then `close()`."""

    def __init__(
        self,
        configuration: k8s.Configuration,
        request_timeout_seconds: float = 15.0,
        watch_timeout_seconds: int = 300,
    ) -> None:
        self._configuration = configuration
        self._server = str(configuration.host).rstrip("/")
        self._timeout = request_timeout_seconds
        self.watch_timeout_seconds = watch_timeout_seconds
        self._session: aiohttp.ClientSession | None = None
        self._ssl: ssl.SSLContext | bool = True

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._ssl = await loop.run_in_executor(None, self._ssl_context)  # reads key files
        self._session = aiohttp.ClientSession()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def get(self, namespace: str, name: str) -> PodMeta | None:
        """The Pod's metadata, or None when there is no such Pod."""
        path = f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(name)}"
        try:
            body = await self._json(path, {}, ACCEPT_ONE)
        except KubeApiError as error:
            if error.status == 404:
                return None
            raise
        return PodMeta.from_metadata(body.get("metadata") or {})

    async def list(self, namespace: str) -> tuple[dict[str, PodMeta], str]:
        """Every Pod of `namespace` by uid, and the resourceVersion to watch from."""
        path = f"/api/v1/namespaces/{quote(namespace)}/pods"
        pods: dict[str, PodMeta] = {}
        params: dict[str, str] = {"limit": str(LIST_PAGE_SIZE)}
        while True:
            body = await self._json(path, params, ACCEPT_LIST)
            for item in body.get("items") or ():
                meta = PodMeta.from_metadata(item.get("metadata") or {})
                if meta is not None:
                    pods[meta.uid] = meta
            listed = body.get("metadata") or {}
            if not listed.get("continue"):
                return pods, str(listed.get("resourceVersion", ""))
            params["continue"] = str(listed["continue"])

    async def watch(self, namespace: str, resource_version: str) -> AsyncIterator[PodEvent]:
        """Events after `resource_version` until the server ends the watch (a few minutes).

        Raises WatchExpired when the version is too old, KubeApiError for other failures.
        """
        path = f"/api/v1/namespaces/{quote(namespace)}/pods"
        params = {
            "watch": "1",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(self.watch_timeout_seconds),
        }
        # No total timeout: the server ends the watch; a silent connection is dropped after
        # the server's own timeout plus a margin (bookmarks arrive about once a minute).
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self._timeout,
            sock_read=self.watch_timeout_seconds + self._timeout,
        )  # fmt: skip
        try:
            response = await self._request(path, params, ACCEPT_ONE, timeout)
        except (aiohttp.ClientError, TimeoutError) as error:
            raise KubeApiError(0, f"no response from the API server: {error!r}") from error
        async with response:
            await _raise_for_status(response)
            while True:
                try:
                    line = await response.content.readuntil(b"\n", max_size=MAX_EVENT_BYTES)
                except (aiohttp.ClientError, ValueError, TimeoutError) as error:
                    raise KubeApiError(0, f"pod watch in {namespace} broke: {error!r}") from error
                if not line:
                    return  # the server ended the watch
                if line.strip():
                    yield _event(_decode(line, namespace))

    # -- plumbing ------------------------------------------------------------------

    async def _json(self, path: str, params: dict[str, str], accept: str) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=self._timeout)
        try:
            async with await self._request(path, params, accept, timeout) as response:
                await _raise_for_status(response)
                body: dict[str, Any] = await response.json(content_type=None)
                return body
        except (aiohttp.ClientError, TimeoutError) as error:
            raise KubeApiError(0, f"no response from the API server: {error!r}") from error

    async def _request(
        self, path: str, params: dict[str, str], accept: str, limits: aiohttp.ClientTimeout
    ) -> aiohttp.ClientResponse:
        if self._session is None:
            raise RuntimeError("PodApi.start() first")
        headers = {"Accept": accept}
        authorization = await self._authorization()
        if authorization:
            headers["Authorization"] = authorization
        return await self._session.get(
            self._server + path, params=params, headers=headers, ssl=self._ssl, timeout=limits
        )

    async def _authorization(self) -> str | None:
        configuration = self._configuration
        if configuration.refresh_api_key_hook is None:
            return _bearer(configuration)
        # The hook may re-read a token file or run a credential plugin: off the loop.
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, _bearer, configuration)

    def _ssl_context(self) -> ssl.SSLContext | bool:
        configuration = self._configuration
        if not configuration.verify_ssl:
            return False
        context = ssl.create_default_context(cafile=configuration.ssl_ca_cert or None)
        if configuration.cert_file:
            context.load_cert_chain(configuration.cert_file, configuration.key_file or None)
        return context


def _bearer(configuration: k8s.Configuration) -> str | None:
    header = configuration.get_api_key_with_prefix("BearerToken")
    header = header or configuration.get_api_key_with_prefix("authorization")
    return str(header) if header else None


async def _raise_for_status(response: aiohttp.ClientResponse) -> None:
    if response.status < 300:
        return
    text = (await response.text())[:500]
    raise KubeApiError(response.status, f"{response.reason}: {text}")


def _decode(line: bytes, namespace: str) -> dict[str, Any]:
    try:
        raw = json.loads(line)
    except ValueError as error:
        raise KubeApiError(0, f"pod watch in {namespace}: not JSON: {line[:200]!r}") from error
    if not isinstance(raw, dict):
        raise KubeApiError(0, f"pod watch in {namespace}: not an event: {line[:200]!r}")
    return raw


def _event(raw: dict[str, Any]) -> PodEvent:
    kind = str(raw.get("type", ""))
    obj = raw.get("object") or {}
    if kind == "ERROR":
        code = int(obj.get("code") or 0)
        if code == 410:
            raise WatchExpired(str(obj.get("message", "")))
        raise KubeApiError(code, f"pod watch error: {obj.get('message', obj)}")
    metadata = obj.get("metadata") or {}
    version = str(metadata.get("resourceVersion", ""))
    pod = None if kind == "BOOKMARK" else PodMeta.from_metadata(metadata)
    return PodEvent(kind, pod, version)
