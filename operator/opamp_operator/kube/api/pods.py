"""Pod metadata from the API server: get one; the path and headers to list and watch them.

Only metadata is asked for (`Accept: ...;as=PartialObjectMetadata`): uid, name, owners. A Pod
spec can carry secrets in environment variables, and metadata is a fraction of the bytes.
Requests, credentials and the watch stream are `kube.api.ApiSession`'s.
"""

from __future__ import annotations

from urllib.parse import quote

from opamp_operator.kube.api import ApiSession, KubeApiError, NotFound
from opamp_operator.kube.shapes.podref import PodMeta

_META = "g=meta.k8s.io;v=v1"
ACCEPT_ONE = f"application/json;as=PartialObjectMetadata;{_META},application/json"
ACCEPT_LIST = f"application/json;as=PartialObjectMetadataList;{_META},application/json"

__all__ = ["ACCEPT_LIST", "ACCEPT_ONE", "KubeApiError", "PodApi", "pods_path"]


def pods_path(namespace: str) -> str:
    """The Pods of `namespace` (the list and watch path; `kube/pods/podcache.py` watches it)."""
    return f"/api/v1/namespaces/{quote(namespace)}/pods"


class PodApi:
    """Reads Pod metadata in any namespace the operator may read; `close()` when done.

    Lists and watches go through the one `Informer` (`kube/pods/podcache.py`); this holds
    the session, the watch timeout and the single-Pod read."""

    def __init__(self, session: ApiSession, watch_timeout_seconds: int = 300) -> None:
        self.session = session
        self.watch_timeout_seconds = watch_timeout_seconds

    async def start(self) -> None:
        """Nothing to open: the session connects on the first request."""

    async def close(self) -> None:
        await self.session.close()

    async def get(self, namespace: str, name: str) -> PodMeta | None:
        """The Pod's metadata, or None when there is no such Pod."""
        path = f"{pods_path(namespace)}/{quote(name)}"
        try:
            body = await self.session.get(path, accept=ACCEPT_ONE)
        except NotFound:
            return None
        return PodMeta.from_metadata(body.get("metadata") or {})
