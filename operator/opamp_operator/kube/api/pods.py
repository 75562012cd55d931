"""Pod metadata from the API server: get one, list a namespace, watch a namespace (async).

Only metadata is asked for (`Accept: ...;as=PartialObjectMetadata`): uid, name, owners. A Pod
spec can carry secrets in environment variables, and metadata is a fraction of the bytes.
Requests, credentials and the watch stream are `kube.api.ApiSession`'s.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from opamp_operator.kube.api import ApiSession, Gone, KubeApiError, NotFound
from opamp_operator.kube.shapes.podref import PodMeta

_META = "g=meta.k8s.io;v=v1"
ACCEPT_ONE = f"application/json;as=PartialObjectMetadata;{_META},application/json"
ACCEPT_LIST = f"application/json;as=PartialObjectMetadataList;{_META},application/json"

WatchExpired = Gone  # the watch's resourceVersion is too old (410 Gone): list again

__all__ = ["ACCEPT_LIST", "ACCEPT_ONE", "KubeApiError", "PodApi", "PodEvent", "WatchExpired"]


@dataclass(frozen=True, slots=True)
class PodEvent:
    """One watch event: ADDED, MODIFIED, DELETED or BOOKMARK (pod None for bookmarks)."""

    type: str
    pod: PodMeta | None
    resource_version: str


class PodApi:
    """Reads Pod metadata in any namespace the operator may read; `close()` when done."""

    def __init__(self, session: ApiSession, watch_timeout_seconds: int = 300) -> None:
        self.session = session
        self.watch_timeout_seconds = watch_timeout_seconds

    async def start(self) -> None:
        """Nothing to open: the session connects on the first request."""

    async def close(self) -> None:
        await self.session.close()

    async def get(self, namespace: str, name: str) -> PodMeta | None:
        """The Pod's metadata, or None when there is no such Pod."""
        path = f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(name)}"
        try:
            body = await self.session.get(path, accept=ACCEPT_ONE)
        except NotFound:
            return None
        return PodMeta.from_metadata(body.get("metadata") or {})

    async def list(self, namespace: str) -> tuple[dict[str, PodMeta], str]:
        """Every Pod of `namespace` by uid, and the resourceVersion to watch from."""
        path = f"/api/v1/namespaces/{quote(namespace)}/pods"
        items, version = await self.session.list(path, accept=ACCEPT_LIST)
        pods: dict[str, PodMeta] = {}
        for item in items:
            meta = PodMeta.from_metadata(item.get("metadata") or {})
            if meta is not None:
                pods[meta.uid] = meta
        return pods, version

    async def watch(self, namespace: str, resource_version: str) -> AsyncIterator[PodEvent]:
        """Events after `resource_version` until the server ends the watch (a few minutes).

        Raises WatchExpired (Gone) when the version is too old, KubeApiError otherwise.
        """
        path = f"/api/v1/namespaces/{quote(namespace)}/pods"
        async for raw in self.session.watch(
            path, resource_version, timeout_seconds=self.watch_timeout_seconds, accept=ACCEPT_ONE
        ):
            yield _event(raw)


def _event(raw: dict[str, Any]) -> PodEvent:
    kind = str(raw.get("type", ""))
    metadata = (raw.get("object") or {}).get("metadata") or {}
    version = str(metadata.get("resourceVersion", ""))
    pod = None if kind == "BOOKMARK" else PodMeta.from_metadata(metadata)
    return PodEvent(kind, pod, version)
