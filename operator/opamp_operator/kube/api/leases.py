"""Requests on coordination.k8s.io/v1 Leases in one namespace. No operator logic."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .credentials import Credentials
from .errors import NotFound
from .session import ApiSession, Json


class LeaseApi:
    """get, list, create, replace (optimistic: Conflict when it moved on) and delete."""

    def __init__(self, session: ApiSession, namespace: str) -> None:
        self.session = session
        self.namespace = namespace
        self._path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"

    @classmethod
    def own_connection(
        cls, credentials: Credentials, namespace: str, request_timeout_seconds: float
    ) -> LeaseApi:
        """On a connection of its own, so that a renewal never waits for a free connection
        behind the CR writes (in run I, docs/benchmarks.md, renewals on the shared pool
        failed for up to 65 s of a 50,000-agent ramp). One request at a time is all a
        Lease needs."""
        session = ApiSession(
            credentials, request_timeout_seconds=request_timeout_seconds, max_connections=1
        )
        return cls(session, namespace)

    async def close(self) -> None:
        await self.session.close()

    async def get(self, name: str) -> Json | None:
        try:
            return await self.session.get(f"{self._path}/{name}")
        except NotFound:
            return None

    async def list(self, label_selector: str) -> list[Json]:
        items, _ = await self.session.list(self._path, label_selector=label_selector)
        return items

    async def create(self, body: Mapping[str, Any]) -> Json:
        return await self.session.create(self._path, body)

    async def replace(self, name: str, body: Mapping[str, Any]) -> Json:
        """PUT; the body's metadata.resourceVersion is the precondition."""
        return await self.session.replace(f"{self._path}/{name}", body)

    async def delete(self, name: str, *, uid: str, resource_version: str | None) -> bool:
        """Delete if it is still this one (uid, and version if given); False when not."""
        return await self.session.delete(
            f"{self._path}/{name}", uid=uid, resource_version=resource_version
        )
