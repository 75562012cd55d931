"""Links agents that run in the cluster to their Pods; a deleted Pod ends its agent at once.

Inputs: fleet events (an agent's description carries `k8s.pod.*` attributes: see
`kube/shapes/podref.py`), and, through the Kopf watch of OpAMPAgents, CRs linked to a Pod whose
agent no live session here holds (the process that held it is gone).

For each claim the linker verifies that the Pod exists with the reported uid, from the
namespace's Pod watch (`kube/pods/podcache.py`, started for namespaces that hold claimed Pods and
stopped when none are left), or by a GET when the watch has not seen the Pod. The outcome is
kept in `PodLinks`, which the status writer turns into `status.pod` and labels.

When a linked Pod is deleted (a DELETED event, or missing from a fresh listing):
- the agent is marked Offline with reason `pod_deleted` at once (`Fleet.mark_offline`, which
  also closes its connection), without waiting for the heartbeat timeout;
- its OpAMPAgent is deleted once that state and its Event are written (`StatusWriter.retire`);
  should the agent connect again it gets a new CR, whose `status.pod` says why it is no longer
  linked. A CR no live session holds is deleted directly, after a GET confirms the Pod is gone.
No owner references: the CRs live in the operator's namespace and a cross-namespace owner
reference makes the garbage collector delete the dependent at once (docs/kubernetes.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from opamp_operator import metrics
from opamp_operator.config import KubeSettings
from opamp_operator.fleet.clock import Clock, SystemClock
from opamp_operator.fleet.events import AgentChanged, FleetEvent, SessionOpened, Subscription
from opamp_operator.fleet.model import Reason
from opamp_operator.fleet.registry import Fleet
from opamp_operator.kube.api import ApiSession, Credentials
from opamp_operator.kube.api.pods import PodApi
from opamp_operator.kube.api.resources import KubeApi, KubeApiError, ObjectRef
from opamp_operator.kube.mirror.statuswriter import StatusWriter
from opamp_operator.kube.pods.podcache import NamespaceWatch, NamespaceWatches
from opamp_operator.kube.shapes.naming import agent_id_from_name, resource_name
from opamp_operator.kube.shapes.podref import (
    LinkReason,
    PodClaim,
    PodLink,
    PodLinks,
    PodMeta,
    checking,
    claim_of,
    deleted,
    forbidden,
    incomplete,
    judge,
    lookup_failed,
)
from opamp_operator.kube.writes.pace import WriteLimiter

log = logging.getLogger(__name__)

_CR = "cr:"  # queue and membership keys of CRs (agents use their bare id)
# Not linked, and worth another look when the agent connects again (its Pod may be back).
_RECHECK_ON_CONNECT = frozenset(
    {
        LinkReason.NOT_FOUND, LinkReason.UID_MISMATCH, LinkReason.POD_DELETED,
        LinkReason.LOOKUP_FAILED, LinkReason.FORBIDDEN,
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Orphan:
    """A CR linked to a Pod, whose agent this process does not know."""

    cr_uid: str
    pod_uid: str
    namespace: str
    pod_name: str


class PodLinker:
    """`start()`, then `stop()`; `observe_cr` is fed by the Kopf watch of OpAMPAgents."""

    def __init__(
        self,
        settings: KubeSettings,
        fleet: Fleet,
        subscription: Subscription,
        api: PodApi,
        links: PodLinks,
        *,
        writer: StatusWriter | None = None,
        kube: KubeApi | None = None,
        clock: Clock | None = None,
        limiter: WriteLimiter | None = None,
    ) -> None:
        self.settings = settings
        self.fleet = fleet
        self.subscription = subscription
        self.api = api
        self.links = links
        self.writer = writer
        self.kube = kube
        self.clock = clock or SystemClock()
        self.limiter = limiter or (writer.limiter if writer else None)
        self._claims: dict[str, PodClaim] = {}  # agent id -> the Pod it reports
        self._linked: dict[str, set[str]] = {}  # pod uid -> agents linked to it
        self._orphans: dict[str, _Orphan] = {}  # CR name -> its link
        self._watches = NamespaceWatches(
            api, on_gone=self._pod_gone, on_listed=self._listed,
            retry_max_seconds=settings.retry_max_seconds,
        )  # fmt: skip
        # Agents and CRs waiting for a check: an insertion-ordered set, at most one entry
        # each (so bounded by the fleet's max_agents plus the CRs).
        self._queue: dict[str, None] = {}
        self._failures: dict[str, int] = {}
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._retries: dict[str, asyncio.TimerHandle] = {}

    # -- lifecycle -------------------------------------------------------------------

    @classmethod
    def connect(
        cls,
        settings: KubeSettings,
        fleet: Fleet,
        subscription: Subscription,
        links: PodLinks,
        *,
        writer: StatusWriter | None = None,
        kube: KubeApi | None = None,
        clock: Clock | None = None,
        credentials: Credentials,
    ) -> PodLinker:
        """A linker with its own Pod client on `credentials` (not started)."""
        session = ApiSession(
            credentials, request_timeout_seconds=settings.request_timeout_seconds,
            max_connections=settings.api_threads,
        )  # fmt: skip
        api = PodApi(session)
        return cls(settings, fleet, subscription, api, links, writer=writer, kube=kube, clock=clock)

    async def start(self) -> None:
        """Open the Pod client and start taking fleet events."""
        await self.api.start()
        self._tasks = [asyncio.create_task(self._consume(), name="pod-linker-events")]
        for number in range(self.settings.api_threads):
            self._tasks.append(asyncio.create_task(self._work(), name=f"pod-linker-{number}"))

    async def stop(self) -> None:
        for handle in self._retries.values():
            handle.cancel()
        self._retries.clear()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self._watches.stop()
        await self.api.close()

    @property
    def watched_namespaces(self) -> list[str]:
        return self._watches.namespaces()

    # -- inputs ----------------------------------------------------------------------

    async def _consume(self) -> None:
        while True:
            event = await self.subscription.get()
            try:
                self.on_event(event)
                if self.subscription.needs_resync:
                    self._resync()
            except Exception:
                log.exception("pod linker failed on %s for agent %s", event, event.agent_id)

    def on_event(self, event: FleetEvent) -> None:
        if isinstance(event, AgentChanged) and "description" in event.fields:
            self._refresh_claim(event.agent_id)
        elif isinstance(event, SessionOpened):
            link = self.links.get(event.agent_id)
            if link is not None and link.reason in _RECHECK_ON_CONNECT:
                self._enqueue(event.agent_id)

    def observe_cr(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """One OpAMPAgent watch event: remember CRs linked to a Pod that no agent here holds."""
        metadata = body.get("metadata") or {}
        name = str(metadata.get("name", ""))
        agent_id = agent_id_from_name(name)
        pod = (body.get("status") or {}).get("pod") or {}
        if (
            event_type == "DELETED"
            or agent_id is None
            or not pod.get("linked")
            or metadata.get("deletionTimestamp")
            or not all(pod.get(key) for key in ("uid", "namespace", "name"))
            or self.fleet.get(agent_id) is not None  # known here: its own claim decides
        ):
            self._drop_orphan(name)
            return
        orphan = _Orphan(str(metadata.get("uid", "")), pod["uid"], pod["namespace"], pod["name"])
        if self._orphans.get(name) == orphan:
            return
        self._orphans[name] = orphan
        watch = self._watches.join(orphan.namespace, _CR + name)
        if watch.synced and orphan.pod_uid not in watch.pods:
            self._enqueue(_CR + name)

    # -- claims ----------------------------------------------------------------------

    def _refresh_claim(self, agent_id: str) -> None:
        snapshot = self.fleet.get(agent_id)
        claim = None
        if snapshot is not None:
            claim = claim_of(snapshot.identifying_attributes, snapshot.non_identifying_attributes)
        if claim == self._claims.get(agent_id):
            return
        self._unlink(agent_id)
        self._watches.leave(agent_id)
        if claim is None:
            self._claims.pop(agent_id, None)
            self._set(agent_id, None)
            return
        self._claims[agent_id] = claim
        self._drop_orphan(resource_name(agent_id))  # known here now
        self._set(agent_id, checking(claim))
        self._enqueue(agent_id)

    def _resync(self) -> None:
        self.subscription.needs_resync = False
        log.warning("pod linker lost fleet events; looking at every agent's claim again")
        for snapshot in self.fleet.snapshots():
            self._refresh_claim(snapshot.agent_id)

    # -- the workers -------------------------------------------------------------------

    def _enqueue(self, key: str) -> None:
        self._queue[key] = None
        self._wakeup.set()

    async def _work(self) -> None:
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            key = next(iter(self._queue))
            del self._queue[key]
            try:
                if key.startswith(_CR):
                    await self._check_orphan(key.removeprefix(_CR))
                else:
                    await self._check(key)
            except Exception:
                log.exception("pod link check of %s failed", key)
                self._retry_later(key)

    async def _check(self, agent_id: str) -> None:
        claim = self._claims.get(agent_id)
        if claim is None:
            return
        if claim.missing:
            self._finish(agent_id, claim, incomplete(claim))
            return
        assert claim.namespace is not None and claim.uid is not None
        watch = self._watches.join(claim.namespace, agent_id)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(watch.listed.wait(), self.settings.request_timeout_seconds)
        link = await self._verify(claim, watch)
        if self._claims.get(agent_id) != claim:
            return  # the agent reported something else meanwhile; that is checked next
        if link.linked and watch.recently_gone(claim.uid):
            self._linked.setdefault(claim.uid, set()).add(agent_id)
            self._set(agent_id, link)
            self._pod_gone(PodMeta(claim.uid, claim.name or "", claim.namespace))
            return
        self._finish(agent_id, claim, link)

    async def _verify(self, claim: PodClaim, watch: NamespaceWatch) -> PodLink:
        """The link of `claim`: from the watch when it has the Pod, else from a GET."""
        assert claim.namespace is not None and claim.name is not None
        found = watch.pods.get(claim.uid or "") if watch.synced else None
        if found is not None and found.name == claim.name:
            return judge(claim, found)
        if watch.error is not None and watch.error.status == 403:
            return forbidden(claim, str(watch.error))
        try:
            found = await self.api.get(claim.namespace, claim.name)
        except KubeApiError as error:
            if error.status == 403:
                return forbidden(claim, str(error))
            return lookup_failed(claim, str(error))
        return judge(claim, found)

    def _finish(self, agent_id: str, claim: PodClaim, link: PodLink) -> None:
        metrics.kube_pod_link_checks.labels(link.reason.value).inc()
        if link.linked:
            assert claim.uid is not None
            self._linked.setdefault(claim.uid, set()).add(agent_id)
            self._failures.pop(agent_id, None)
        elif link.reason is LinkReason.LOOKUP_FAILED:
            self._retry_later(agent_id)  # keeps its namespace watch
        elif link.reason is not LinkReason.FORBIDDEN:
            # Nothing to watch for (pod_not_found, uid mismatch, incomplete); a forbidden
            # namespace keeps its watch, which retries and re-checks once it may read Pods.
            self._failures.pop(agent_id, None)
            self._watches.leave(agent_id)
        if link != self.links.get(agent_id) and not link.linked:
            log.info("agent %s not linked to Pod %s: %s", agent_id, claim.where, link.message)
        self._set(agent_id, link)

    async def _check_orphan(self, name: str) -> None:
        """Delete the CR `name` if its Pod is really gone (a GET confirms what the watch says)."""
        orphan = self._orphans.get(name)
        if orphan is None:
            return
        try:
            found = await self.api.get(orphan.namespace, orphan.pod_name)
        except KubeApiError as error:
            log.warning("Pod of OpAMPAgent %s not looked up: %s", name, error)
            self._retry_later(_CR + name)
            return
        if found is not None and found.uid == orphan.pod_uid:
            return
        self._drop_orphan(name)
        agent_id = agent_id_from_name(name)
        if self.kube is None or agent_id is None or self.fleet.get(agent_id) is not None:
            return
        where = f"{orphan.namespace}/{orphan.pod_name}"
        message = f"Pod {where} (uid {orphan.pod_uid}) is gone; no live session holds the agent"
        await self._post_event(ObjectRef(name, orphan.cr_uid, self.kube.namespace), message)
        await self._acquire()
        if await self.kube.delete_agent(name, orphan.cr_uid, None):
            metrics.kube_pod_deleted.labels("cr").inc()
            metrics.kube_writes.labels("delete", "ok").inc()
            log.info("OpAMPAgent %s deleted: %s", name, message)

    def _retry_later(self, key: str) -> None:
        if key in self._retries:
            return
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        delay = min(self.settings.retry_max_seconds, 0.5 * 2 ** min(failures, 10))

        def fire() -> None:
            self._retries.pop(key, None)
            self._enqueue(key)

        self._retries[key] = asyncio.get_running_loop().call_later(delay, fire)

    # -- Pods that went away -------------------------------------------------------------

    def _pod_gone(self, pod: PodMeta) -> None:
        """Called by a namespace watch: `pod` was deleted (or is missing from a listing)."""
        for agent_id in sorted(self._linked.pop(pod.uid, set())):
            link = self.links.get(agent_id)
            if link is None or not link.linked:
                continue
            self._watches.leave(agent_id)
            self._set(agent_id, deleted(link, self.clock.now()))
            went_offline = self.fleet.mark_offline(agent_id, Reason.POD_DELETED)
            if self.writer is not None:
                self.writer.retire(agent_id)
            metrics.kube_pod_deleted.labels("agent").inc()
            log.info(
                "agent %s: Pod %s (uid %s) deleted; %s, its OpAMPAgent is removed",
                agent_id, link.claim.where, pod.uid,
                "Offline (pod_deleted)" if went_offline else "was not Online",
            )  # fmt: skip
        for name, orphan in list(self._orphans.items()):
            if orphan.pod_uid == pod.uid:
                self._enqueue(_CR + name)

    def _listed(self, watch: NamespaceWatch) -> None:
        """A namespace watch listed its Pods (or failed to): reconcile its members."""
        if not watch.synced:
            return
        for member in self._watches.members(watch.namespace):
            if member.startswith(_CR):
                orphan = self._orphans.get(member.removeprefix(_CR))
                if orphan is not None and orphan.pod_uid not in watch.pods:
                    self._enqueue(member)
                continue
            link = self.links.get(member)
            if link is None:
                continue
            if link.linked and link.claim.uid not in watch.pods:
                self._pod_gone(
                    PodMeta(link.claim.uid or "", link.claim.name or "", watch.namespace)
                )
            elif link.reason in (LinkReason.FORBIDDEN, LinkReason.LOOKUP_FAILED):
                self._enqueue(member)

    # -- bookkeeping ---------------------------------------------------------------------

    def _set(self, agent_id: str, link: PodLink | None) -> None:
        if self.links.set(agent_id, link) and self.writer is not None:
            self.writer.mark(agent_id)

    def _unlink(self, agent_id: str) -> None:
        claim = self._claims.get(agent_id)
        if claim is not None and claim.uid is not None:
            agents = self._linked.get(claim.uid)
            if agents is not None:
                agents.discard(agent_id)
                if not agents:
                    del self._linked[claim.uid]

    def _drop_orphan(self, name: str) -> None:
        if self._orphans.pop(name, None) is not None:
            self._watches.leave(_CR + name)

    async def _acquire(self) -> None:
        if self.limiter is not None:
            await self.limiter.acquire()

    async def _post_event(self, target: ObjectRef, message: str) -> None:
        if self.kube is None or not self.settings.post_events:
            return
        await self._acquire()
        try:
            await self.kube.post_event(
                target, event_type="Normal", reason=Reason.POD_DELETED, message=message,
                at=self.clock.now(), reporter=self.settings.replica_id,
            )  # fmt: skip
        except KubeApiError as error:
            log.warning("Event for OpAMPAgent %s not posted: %s", target.name, error)
