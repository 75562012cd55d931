"""Async calls to the Kubernetes API for the mirror, one method per request.

Which client, and why: the official `kubernetes` client (already a dependency, and what Kopf's
`login_via_client` reads credentials with) is synchronous, so every call here runs on a small
bounded `ThreadPoolExecutor` through `loop.run_in_executor`; nothing blocks the event loop.
Kopf's own API helpers (`kopf._cogs.clients`) are private and change between releases, and an
async client (`kubernetes_asyncio`) would be one more dependency that duplicates this one.
The pool size bounds concurrent requests; the writer's token bucket bounds their rate.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.config.config_exception import ConfigException
from urllib3.exceptions import HTTPError

from opamp_operator.config import KubeSettings

from .naming import API_VERSION, CONFIG_PLURAL, GROUP, KIND, PLURAL, VERSION

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
T = TypeVar("T")


class KubeApiError(Exception):
    """A request failed: `status` is the HTTP status, or 0 when no response came back."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status

    @property
    def outcome(self) -> str:
        """A short label for metrics."""
        named = {0: "unreachable", 404: "not_found", 409: "conflict", 429: "throttled"}
        return named.get(self.status, "error" if self.retryable else "rejected")

    @property
    def retryable(self) -> bool:
        # 0: no response (connection refused, timeout); 409 is handled by the caller.
        return self.status in (0, 403, 408, 429) or self.status >= 500


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """What an Event points at (kubectl describe matches on the uid)."""

    name: str
    uid: str
    namespace: str


def load_configuration(kubeconfig: Path | None) -> k8s.Configuration:
    """Credentials from `kubeconfig`; without one, in-cluster, else the default kubeconfig.

    Blocking (reads files): call it from a thread, or before the event loop runs.
    """
    configuration = type.__call__(k8s.Configuration)  # a fresh one, not the global default
    if kubeconfig is not None:
        k8s_config.load_kube_config(
            config_file=str(kubeconfig), client_configuration=configuration, persist_config=False
        )
        return configuration
    try:
        k8s_config.load_incluster_config(client_configuration=configuration)
    except ConfigException:
        k8s_config.load_kube_config(client_configuration=configuration, persist_config=False)
    return configuration


class KubeApi:
    """The requests the mirror makes, on OpAMPAgent resources and Events in one namespace."""

    def __init__(
        self,
        configuration: k8s.Configuration,
        namespace: str,
        max_threads: int = 4,
        request_timeout_seconds: float = 15.0,
    ) -> None:
        self.namespace = namespace
        self._client = k8s.ApiClient(configuration)
        self._objects = k8s.CustomObjectsApi(self._client)
        self._core = k8s.CoreV1Api(self._client)
        self._timeout = request_timeout_seconds
        self._pool = ThreadPoolExecutor(max_threads, thread_name_prefix="kube-api")

    @classmethod
    async def connect(cls, settings: KubeSettings) -> KubeApi:
        """Load credentials off the event loop and build the client the settings describe."""
        loop = asyncio.get_running_loop()
        configuration = await loop.run_in_executor(None, load_configuration, settings.kubeconfig)
        return cls(
            configuration, settings.namespace, settings.api_threads,
            settings.request_timeout_seconds,
        )  # fmt: skip

    async def close(self) -> None:
        """Wait for requests in flight, then release the threads and connections."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, functools.partial(self._pool.shutdown, wait=True))
        self._client.close()

    # -- OpAMPAgent ----------------------------------------------------------------

    async def create_agent(self, name: str, labels: Mapping[str, str]) -> dict[str, Any]:
        body = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": name, "labels": dict(labels)},
            "spec": {},
        }
        return await self._call(
            self._objects.create_namespaced_custom_object,
            GROUP, VERSION, self.namespace, PLURAL, body,
        )  # fmt: skip

    async def get_agent(self, name: str) -> dict[str, Any] | None:
        """The CR, or None when it does not exist."""
        try:
            return await self._call(
                self._objects.get_namespaced_custom_object,
                GROUP, VERSION, self.namespace, PLURAL, name,
            )  # fmt: skip
        except KubeApiError as error:
            if error.status == 404:
                return None
            raise

    async def list_agents(self, label_selector: str | None = None) -> list[dict[str, Any]]:
        result = await self._call(
            self._objects.list_namespaced_custom_object,
            GROUP, VERSION, self.namespace, PLURAL, label_selector=label_selector,
        )  # fmt: skip
        items: list[dict[str, Any]] = result.get("items", [])
        return items

    async def patch_agent_status(
        self, name: str, status_patch: Mapping[str, Any], resource_version: str | None
    ) -> dict[str, Any]:
        """Merge-patch `/status`; with `resource_version`, fail with 409 if the CR moved on."""
        return await self._call(
            self._objects.patch_namespaced_custom_object_status,
            GROUP, VERSION, self.namespace, PLURAL, name,
            _with_version({"status": dict(status_patch)}, resource_version),
            _content_type=MERGE_PATCH,
        )  # fmt: skip

    async def patch_agent_labels(
        self, name: str, labels: Mapping[str, str | None], resource_version: str | None
    ) -> dict[str, Any]:
        """Merge-patch labels (None removes one)."""
        return await self._call(
            self._objects.patch_namespaced_custom_object,
            GROUP, VERSION, self.namespace, PLURAL, name,
            _with_version({"metadata": {"labels": dict(labels)}}, resource_version),
            _content_type=MERGE_PATCH,
        )  # fmt: skip

    async def delete_agent(self, name: str, uid: str, resource_version: str | None) -> bool:
        """Delete the CR if it is still exactly the one we looked at; False when it is not.

        Without `resource_version`, any version of that CR (same uid) is deleted.
        """
        options = k8s.V1DeleteOptions(
            preconditions=k8s.V1Preconditions(uid=uid, resource_version=resource_version)
        )
        try:
            await self._call(
                self._objects.delete_namespaced_custom_object,
                GROUP, VERSION, self.namespace, PLURAL, name, body=options,
            )  # fmt: skip
        except KubeApiError as error:
            if error.status in (404, 409):
                return False
            raise
        return True

    # -- OpAMPAgentConfig ----------------------------------------------------------

    async def patch_config_status(
        self, name: str, status_patch: Mapping[str, Any], resource_version: str | None
    ) -> dict[str, Any]:
        """Merge-patch an OpAMPAgentConfig's `/status`."""
        return await self._call(
            self._objects.patch_namespaced_custom_object_status,
            GROUP, VERSION, self.namespace, CONFIG_PLURAL, name,
            _with_version({"status": dict(status_patch)}, resource_version),
            _content_type=MERGE_PATCH,
        )  # fmt: skip

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
        body = k8s.CoreV1Event(
            metadata=k8s.V1ObjectMeta(
                # client-go's naming (object.hex nanoseconds) plus a few random bits: two
                # transitions can share a timestamp.
                name=f"{target.name}.{int(at.timestamp() * 1e9):x}{secrets.randbits(16):04x}",
                namespace=target.namespace,
            ),
            involved_object=k8s.V1ObjectReference(
                api_version=API_VERSION, kind=KIND, name=target.name,
                namespace=target.namespace, uid=target.uid,
            ),
            reason=reason,
            message=message[:1024],
            type=event_type,
            count=1,
            first_timestamp=stamp,
            last_timestamp=stamp,
            source=k8s.V1EventSource(component="opamp-operator", host=reporter),
            reporting_component="opamp.dev/opamp-operator",
            reporting_instance=reporter,
        )  # fmt: skip
        await self._call(self._core.create_namespaced_event, target.namespace, body)

    # -- plumbing ------------------------------------------------------------------

    async def _call(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        call = functools.partial(method, *args, _request_timeout=self._timeout, **kwargs)
        try:
            return await loop.run_in_executor(self._pool, call)
        except k8s.ApiException as error:
            raise KubeApiError(int(error.status or 0), _api_message(error)) from error
        except (HTTPError, OSError) as error:
            raise KubeApiError(0, f"no response from the API server: {error}") from error


def _with_version(body: dict[str, Any], resource_version: str | None) -> dict[str, Any]:
    if resource_version is not None:
        body.setdefault("metadata", {})["resourceVersion"] = resource_version
    return body


def _api_message(error: k8s.ApiException) -> str:
    return f"{error.reason}: {(error.body or '')[:500]}"
