"""The write gate: every write of an OpAMPAgent or OpAMPAgentConfig, and every Event we post.

One `WriteGate` per process, shared by the status writer, liveness, the Pod linker and
GitOps, so that what the README promises holds for all of them:
- **paced**: each attempt waits its turn on one `WriteLimiter` (`writes_per_second`);
- **preconditioned**: every merge patch carries the resourceVersion it was computed from,
  so a patch built on a stale read fails with Conflict instead of overwriting someone
  else's write; `update` re-reads and decides again, other callers handle Conflict as
  they always did (the status writer re-reads its mirror, liveness looks at the next tick);
- **retried**: with `retries`, Throttled (waiting at least the server's Retry-After) and
  Unavailable are tried again after the one backoff type (`opamp_operator.backoff`);
  callers that retry from their own queue (the status writer) ask for none;
- **counted**: every attempt in `opamp_kube_writes_total{kind,outcome}`.

Reads (get, list, watch) do not go through here: they are not paced.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any, TypedDict, TypeVar, Unpack

from opamp_operator import metrics
from opamp_operator.backoff import UP_TO_A_FIFTH_LATER, Backoff
from opamp_operator.config import KubeSettings
from opamp_operator.kube.api import Conflict, KubeApiError, Throttled, Unavailable
from opamp_operator.kube.api.resources import KubeApi, ObjectRef
from opamp_operator.kube.writes.pace import WriteLimiter

T = TypeVar("T")
Json = dict[str, Any]
DEFAULT_CONFLICTS = 3  # re-reads before `update` gives up on an object that keeps moving


class EventFields(TypedDict):
    """What `KubeApi.post_event` takes besides its target."""

    event_type: str
    reason: str
    message: str
    at: datetime
    reporter: str


def write_backoff(cap_seconds: float) -> Backoff:
    """How failed CR writes back off, here and in the status writer's queue.

    0.5 s doubling up to the cap, each delay up to a fifth later (writers that failed
    together do not retry in step).
    """
    return Backoff.up_to(cap_seconds, initial=0.5, jitter=UP_TO_A_FIFTH_LATER)


def retry_hint(error: KubeApiError) -> float | None:
    """The server's Retry-After on a 429, in seconds (None: no hint)."""
    return error.retry_after if isinstance(error, Throttled) else None


class WriteGate:
    """The paced, preconditioned, retried and counted writes of one namespace's resources."""

    def __init__(self, api: KubeApi, pace: WriteLimiter, backoff: Backoff | None = None) -> None:
        self.api = api
        self.pace = pace
        self.backoff = backoff or write_backoff(30.0)

    @classmethod
    def for_settings(cls, api: KubeApi, settings: KubeSettings) -> WriteGate:
        return cls(
            api, WriteLimiter(settings.writes_per_second), write_backoff(settings.retry_max_seconds)
        )

    @property
    def namespace(self) -> str:
        return self.api.namespace

    # -- OpAMPAgent ----------------------------------------------------------------

    async def create_agent(self, name: str, labels: Mapping[str, str]) -> Json:
        return await self.send("create", lambda: self.api.create_agent(name, labels))

    async def patch_agent_status(
        self,
        name: str,
        patch: Mapping[str, Any],
        resource_version: str,
        *,
        kind: str = "status",
        retries: int = 0,
    ) -> Json:
        version = _required(resource_version, name)
        return await self.send(
            kind, lambda: self.api.patch_agent_status(name, patch, version), retries=retries
        )

    async def patch_agent_labels(
        self, name: str, labels: Mapping[str, str | None], resource_version: str
    ) -> Json:
        version = _required(resource_version, name)
        return await self.send("labels", lambda: self.api.patch_agent_labels(name, labels, version))

    async def delete_agent(self, name: str, uid: str, resource_version: str | None) -> bool:
        """Delete the CR if it still has `uid` (and `resource_version`, when given)."""
        return await self.send("delete", lambda: self.api.delete_agent(name, uid, resource_version))

    # -- OpAMPAgentConfig ----------------------------------------------------------

    async def patch_config_status(
        self,
        name: str,
        patch: Mapping[str, Any],
        resource_version: str,
        *,
        kind: str = "config_status",
        retries: int = 0,
    ) -> Json:
        version = _required(resource_version, name)
        return await self.send(
            kind,
            lambda: self.api.patch_config_status(name, patch, version),
            retries=retries,
        )

    # -- Events --------------------------------------------------------------------

    async def post_event(self, target: ObjectRef, **fields: Unpack[EventFields]) -> None:
        """Post an Event about `target`: paced with the CR writes, counted as kind "event"."""
        await self.send("event", lambda: self.api.post_event(target, **fields))

    # -- the mechanisms --------------------------------------------------------------

    def skipped(self, kind: str, outcome: str) -> None:
        """Count a write decided against (e.g. another replica holds fresher news)."""
        metrics.kube_writes.labels(kind, outcome).inc()

    async def send(self, kind: str, request: Callable[[], Awaitable[T]], *, retries: int = 0) -> T:
        """One write: paced, counted; Throttled/Unavailable tried up to `retries` more times."""
        failures = 0
        while True:
            await self.pace.acquire()
            try:
                result = await request()
            except KubeApiError as error:
                metrics.kube_writes.labels(kind, error.outcome).inc()
                if failures >= retries or not isinstance(error, (Throttled, Unavailable)):
                    raise
                failures += 1
                await asyncio.sleep(max(self.backoff.delay(failures), retry_hint(error) or 0.0))
                continue
            metrics.kube_writes.labels(kind, "ok").inc()
            return result

    async def update(
        self,
        body: Mapping[str, Any] | None,
        read: Callable[[], Awaitable[Json | None]],
        change: Callable[[Mapping[str, Any]], Mapping[str, Any] | None],
        write: Callable[[Mapping[str, Any], str], Awaitable[Json]],
        *,
        conflicts: int = DEFAULT_CONFLICTS,
    ) -> Json | None:
        """Read-modify-write under the resourceVersion precondition.

        `change(body)` says what to patch (None: nothing to do); `write(patch, version)`
        sends it with `body`'s resourceVersion. On Conflict the object is read again and
        `change` decides anew, so a stale `body` (a lagging watch) never overwrites a
        newer write. Returns the object as written, or None when nothing was written
        (nothing to change, or the object is gone); Conflict after `conflicts` re-reads.
        """
        for _ in range(conflicts + 1):
            if body is None:
                body = await read()
                if body is None:
                    return None
            patch = change(body)
            if patch is None:
                return None
            version = str((body.get("metadata") or {}).get("resourceVersion") or "")
            try:
                return await write(patch, version)
            except Conflict:
                body = None
        raise Conflict(409, f"still changing after {conflicts} re-reads")


def _required(resource_version: str, name: str) -> str:
    # A patch without a precondition would overwrite whatever someone else wrote since.
    if not resource_version:
        raise ValueError(f"a write of {name} needs the resourceVersion it was computed from")
    return resource_version
