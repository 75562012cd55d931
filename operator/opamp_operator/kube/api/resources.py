"""The mirror's requests on OpAMPAgent / OpAMPAgentConfig resources and Events, one method each.

A thin, named layer over `kube.api.ApiSession` (aiohttp on the event loop): paths and bodies
of our resources here, credentials, errors and the wire in `kube/api/`.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from opamp_operator.config import KubeSettings
from opamp_operator.kube.api import (
    ApiSession,
    Credentials,
    KubeApiError,
    NotFound,
    load_credentials,
)
from opamp_operator.kube.api.credentials import load_configuration
from opamp_operator.kube.shapes.naming import (
    API_VERSION,
    CONFIG_PLURAL,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
)

__all__ = ["KubeApi", "KubeApiError", "ObjectRef", "load_configuration"]


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """What an Event points at (kubectl describe matches on the uid)."""

    name: str
    uid: str
    namespace: str
    kind: str = KIND
    api_version: str = API_VERSION


class KubeApi:
    """The requests the mirror makes, on OpAMPAgent resources and Events in one namespace."""

    def __init__(self, session: ApiSession, namespace: str) -> None:
        self.namespace = namespace
        self.session = session
        self._agents = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
        self._configs = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{CONFIG_PLURAL}"

    @classmethod
    def from_credentials(
        cls, credentials: Credentials, namespace: str, max_connections: int = 4,
        request_timeout_seconds: float = 15.0,
    ) -> KubeApi:  # fmt: skip
        session = ApiSession(
            credentials, request_timeout_seconds=request_timeout_seconds,
            max_connections=max_connections,
        )  # fmt: skip
        return cls(session, namespace)

    @classmethod
    async def connect(cls, settings: KubeSettings) -> KubeApi:
        """Load credentials off the event loop and build the client the settings describe."""
        credentials = await load_credentials(settings.kubeconfig)
        return cls.from_credentials(
            credentials, settings.namespace, settings.api_threads,
            settings.request_timeout_seconds,
        )  # fmt: skip

    async def close(self) -> None:
        """Release the session's connections."""
        await self.session.close()

    # -- OpAMPAgent ----------------------------------------------------------------

    async def create_agent(self, name: str, labels: Mapping[str, str]) -> dict[str, Any]:
        body = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": name, "labels": dict(labels)},
            "spec": {},
        }
        return await self.session.create(self._agents, body)

    async def get_agent(self, name: str) -> dict[str, Any] | None:
        """The CR, or None when it does not exist."""
        return await self._get_or_none(f"{self._agents}/{name}")

    async def list_agents(self, label_selector: str | None = None) -> list[dict[str, Any]]:
        items, _ = await self.session.list(self._agents, label_selector=label_selector)
        return items

    async def patch_agent_status(
        self, name: str, status_patch: Mapping[str, Any], resource_version: str | None
    ) -> dict[str, Any]:
        """Merge-patch `/status`; with `resource_version`, fail with 409 if the CR moved on."""
        return await self.session.merge_patch(
            f"{self._agents}/{name}/status", {"status": dict(status_patch)}, resource_version
        )

    async def patch_agent_labels(
        self, name: str, labels: Mapping[str, str | None], resource_version: str | None
    ) -> dict[str, Any]:
        """Merge-patch labels (None removes one)."""
        return await self.session.merge_patch(
            f"{self._agents}/{name}", {"metadata": {"labels": dict(labels)}}, resource_version
        )

    async def delete_agent(self, name: str, uid: str, resource_version: str | None) -> bool:
        """Delete the CR if it is still exactly the one we looked at; False when it is not.

        Without `resource_version`, any version of that CR (same uid) is deleted.
        """
        return await self.session.delete(
            f"{self._agents}/{name}", uid=uid, resource_version=resource_version
        )

    # -- OpAMPAgentConfig ----------------------------------------------------------

    async def get_config(self, name: str) -> dict[str, Any] | None:
        """The OpAMPAgentConfig, or None when it does not exist."""
        return await self._get_or_none(f"{self._configs}/{name}")

    async def patch_config_status(
        self, name: str, status_patch: Mapping[str, Any], resource_version: str | None
    ) -> dict[str, Any]:
        """Merge-patch an OpAMPAgentConfig's `/status`."""
        return await self.session.merge_patch(
            f"{self._configs}/{name}/status", {"status": dict(status_patch)}, resource_version
        )

    # -- Secrets (connection settings headers) ---------------------------------------

    async def get_secret_data(self, name: str) -> dict[str, bytes] | None:
        """A Secret's decoded `data` in the operator's namespace (None: no such Secret).

        The values are credentials: callers never log them nor write them to a resource.
        """
        body = await self._get_or_none(f"/api/v1/namespaces/{self.namespace}/secrets/{name}")
        if body is None:
            return None
        data = body.get("data") or {}
        return {str(key): base64.b64decode(value) for key, value in data.items()}

    # -- Events --------------------------------------------------------------------

    async def post_event(
        self,
        target: ObjectRef,
        *,
        event_type: str,
        reason: str,
        message: str,
        at: datetime,
        reporter: str,
    ) -> None:
        """Post a core/v1 Event about `target` (what `kubectl describe` lists)."""
        stamp = at.strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                # client-go's naming (object.hex nanoseconds) plus a few random bits: two
                # transitions can share a timestamp.
                "name": f"{target.name}.{int(at.timestamp() * 1e9):x}{secrets.randbits(16):04x}",
                "namespace": target.namespace,
            },
            "involvedObject": {
                "apiVersion": target.api_version, "kind": target.kind, "name": target.name,
                "namespace": target.namespace, "uid": target.uid,
            },
            "reason": reason,
            "message": message[:1024],
            "type": event_type,
            "count": 1,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "source": {"component": "opamp-operator", "host": reporter},
            "reportingComponent": "opamp.dev/opamp-operator",
            "reportingInstance": reporter,
        }  # fmt: skip
        await self.session.create(f"/api/v1/namespaces/{target.namespace}/events", body)

    async def _get_or_none(self, path: str) -> dict[str, Any] | None:
        try:
            return await self.session.get(path)
        except NotFound:
            return None
