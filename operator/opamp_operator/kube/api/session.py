"""Requests to the API server over one aiohttp session: get, list, create, replace, merge
patch, delete, post, and the watch stream. No operator logic, no retries (callers decide).

Why aiohttp rather than the official client on a thread pool: Kopf runs on aiohttp already,
a watch is a long-lived request that a cancelled task ends, and the official client's
threads (urllib3, JSON, model validation) held the GIL the OpAMP event loop needs
(measured: `bench/kube_patch_cost.py`, see docs/architecture.md).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp

from opamp_operator import metrics

from .credentials import Credentials
from .errors import Conflict, Gone, KubeApiError, NotFound, Unavailable, check_response, error_for

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
PAGE_SIZE = 500
MAX_EVENT_BYTES = 16 * 1024 * 1024  # one watch event; objects are at most ~1.5 MiB in etcd
Json = dict[str, Any]


class ApiSession:
    """One connection pool to the API server, authenticated by `credentials`; `close()` it.

    `max_connections` bounds concurrent requests (watches hold one each, on their own pool).
    """

    def __init__(
        self,
        credentials: Credentials,
        *,
        request_timeout_seconds: float = 15.0,
        max_connections: int = 4,
    ) -> None:
        self.credentials = credentials
        self.request_timeout_seconds = request_timeout_seconds
        self._max_connections = max_connections
        self._requests: aiohttp.ClientSession | None = None
        self._watches: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        for session in (self._requests, self._watches):
            if session is not None:
                await session.close()
        self._requests = self._watches = None

    # -- one object ----------------------------------------------------------------

    async def get(self, path: str, *, accept: str | None = None) -> Json:
        return await self._json("GET", path, accept=accept)

    async def create(self, path: str, body: Mapping[str, Any]) -> Json:
        return await self._json("POST", path, body=body)

    async def replace(self, path: str, body: Mapping[str, Any]) -> Json:
        """PUT the whole object; Conflict when its metadata.resourceVersion is not current."""
        return await self._json("PUT", path, body=body)

    async def merge_patch(
        self, path: str, body: Mapping[str, Any], resource_version: str | None = None
    ) -> Json:
        """JSON merge patch; with `resource_version`, Conflict if the object moved on."""
        patch = dict(body)
        if resource_version is not None:
            patch["metadata"] = {**patch.get("metadata", {}), "resourceVersion": resource_version}
        return await self._json("PATCH", path, body=patch, content_type=MERGE_PATCH)

    async def delete(
        self, path: str, *, uid: str | None = None, resource_version: str | None = None
    ) -> bool:
        """Delete, only if the object still has this uid (and resourceVersion, if given);
        False when it is gone or no longer that one (NotFound, Conflict)."""
        preconditions = {
            key: value
            for key, value in (("uid", uid), ("resourceVersion", resource_version))
            if value is not None
        }
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": preconditions}
        try:
            await self._json("DELETE", path, body=body)
        except (NotFound, Conflict):
            return False
        return True

    # -- collections ---------------------------------------------------------------

    async def list(
        self, path: str, *, accept: str | None = None, label_selector: str | None = None
    ) -> tuple[list[Json], str]:
        """Every item (paged), and the list's resourceVersion to watch from."""
        items: list[Json] = []
        params = {"limit": str(PAGE_SIZE)}
        if label_selector:
            params["labelSelector"] = label_selector
        while True:
            page = await self._json("GET", path, params=params, accept=accept)
            items.extend(page.get("items") or ())
            metadata = page.get("metadata") or {}
            if not metadata.get("continue"):
                return items, str(metadata.get("resourceVersion", ""))
            params["continue"] = str(metadata["continue"])

    async def watch(
        self, path: str, resource_version: str, *, timeout_seconds: int, accept: str | None = None
    ) -> AsyncIterator[Json]:
        """Events (with bookmarks) after `resource_version` until the server ends the watch.

        Raises Gone when the version is too old, another KubeApiError for other failures.
        """
        params = {
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_seconds),
        }
        # No total timeout: the server ends the watch; a silent connection is dropped after
        # the server's own timeout plus a margin (bookmarks arrive about once a minute).
        limits = aiohttp.ClientTimeout(
            total=None, sock_connect=self.request_timeout_seconds,
            sock_read=timeout_seconds + self.request_timeout_seconds,
        )  # fmt: skip
        if self._watches is None:
            self._watches = aiohttp.ClientSession()
        try:
            response = await self._watches.get(
                self.credentials.server + path, params=params,
                headers=await self._headers(accept), ssl=self.credentials.ssl, timeout=limits,
            )  # fmt: skip
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            raise Unavailable(0, f"no response from the API server: {error!r}") from error
        async with response:
            await check_response(response, "watch " + path)
            open_watches = metrics.kube_watches_open.labels(path.rsplit("/", 1)[-1])
            open_watches.inc()
            try:
                while True:
                    try:
                        line = await response.content.readuntil(b"\n", max_size=MAX_EVENT_BYTES)
                    except (aiohttp.ClientError, ValueError, TimeoutError, OSError) as error:
                        raise Unavailable(0, f"watch of {path} broke: {error!r}") from error
                    if not line:
                        return  # the server ended the watch
                    if line.strip():
                        yield _event(line, path)
            finally:
                open_watches.dec()

    # -- plumbing ------------------------------------------------------------------

    async def _json(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
        accept: str | None = None,
        content_type: str = "application/json",
    ) -> Json:
        if self._requests is None:
            self._requests = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections),
                timeout=aiohttp.ClientTimeout(total=self.request_timeout_seconds),
            )
        headers = await self._headers(accept)
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body).encode()
        try:
            async with self._requests.request(
                method, self.credentials.server + path, params=params, data=data,
                headers=headers, ssl=self.credentials.ssl,
            ) as response:  # fmt: skip
                await check_response(response, f"{method} {path}")
                result: Json = await response.json(content_type=None)
                return result
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            raise Unavailable(0, f"no response from the API server: {error!r}") from error

    async def _headers(self, accept: str | None) -> dict[str, str]:
        headers = {"Accept": accept or "application/json"}
        authorization = await self.credentials.authorization()
        if authorization:
            headers["Authorization"] = authorization
        return headers


def _event(line: bytes, path: str) -> Json:
    try:
        event = json.loads(line)
    except ValueError as error:
        raise Unavailable(0, f"watch of {path}: not JSON: {line[:200]!r}") from error
    if not isinstance(event, dict):
        raise Unavailable(0, f"watch of {path}: not an event: {line[:200]!r}")
    if event.get("type") == "ERROR":
        obj = event.get("object") or {}
        code = int(obj.get("code") or 0)
        message = f"watch of {path}: {obj.get('message', obj)}"
        raise Gone(410, message) if code == 410 else error_for(code or 500, message)
    return event


__all__ = ["MERGE_PATCH", "ApiSession", "Json", "KubeApiError"]
