"""Every Pod of one namespace (uid -> metadata), kept current by list + watch.

One of these runs per namespace that holds a Pod some agent claims (see `kube/pods/linker.py`),
never cluster-wide: the operator needs read access only where its agents run. It reports a
Pod as gone when a DELETED event arrives, or when a fresh listing (after the watch expired
or broke) no longer holds it, so a deletion during a gap in the watch is not missed.

Memory: one small `PodMeta` per Pod of the watched namespaces (about 200 bytes), plus a
bounded set of recently deleted uids.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from opamp_operator import metrics
from opamp_operator.backoff import UP_TO_A_FIFTH_LATER, Backoff
from opamp_operator.kube.api.listwatch import Informer
from opamp_operator.kube.api.pods import ACCEPT_LIST, ACCEPT_ONE, PodApi, pods_path
from opamp_operator.kube.api.resources import KubeApiError
from opamp_operator.kube.shapes.podref import PodMeta

log = logging.getLogger(__name__)

RECENTLY_GONE = 4096  # deleted uids remembered, for checks that raced the DELETED event


class NamespaceWatch:
    """`start()` once; `listed` is set after the first listing, whether it worked or not.

    The list+watch itself is the operator's one `Informer` (over Pods' metadata); this is
    its handler, keeping uid -> PodMeta and telling which Pods went."""

    def __init__(
        self,
        api: PodApi,
        namespace: str,
        *,
        on_gone: Callable[[PodMeta], None],
        on_listed: Callable[[NamespaceWatch], None],
        retry_max_seconds: float = 30.0,
    ) -> None:
        self.namespace = namespace
        self.pods: dict[str, PodMeta] = {}
        self.error: KubeApiError | None = None  # the latest listing failed with this
        self.listed = asyncio.Event()
        self._on_gone = on_gone
        self._on_listed = on_listed
        self._gone: OrderedDict[str, None] = OrderedDict()
        self._task: asyncio.Task[None] | None = None
        self._informer = Informer(
            api.session, namespace, "pods", self,
            path=pods_path(namespace), accept=(ACCEPT_LIST, ACCEPT_ONE),
            # An empty listing would read as every Pod deleted: a refusal is a failure.
            refused_clears=False, on_failure=self._failed,
            # After a failure: 1 s, doubling up to the cap, up to a fifth later (watches of
            # many namespaces that failed together do not retry in step).
            backoff=Backoff.up_to(retry_max_seconds, initial=1.0, jitter=UP_TO_A_FIFTH_LATER),
            watch_seconds=api.watch_timeout_seconds, retry_max_seconds=retry_max_seconds,
        )  # fmt: skip

    @property
    def synced(self) -> bool:
        return self.listed.is_set() and self.error is None

    def recently_gone(self, uid: str) -> bool:
        return uid in self._gone

    def start(self) -> None:
        self._task = asyncio.create_task(self._informer.run(), name=f"pod-watch-{self.namespace}")

    def cancel(self) -> None:
        """Stop soon, without waiting (the task ends at its next await)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    # -- the informer's handler ---------------------------------------------------------

    def replace(self, items: list[dict[str, Any]]) -> None:
        """A (re)listing: what we missed while not watching shows as Pods no longer there."""
        pods = {}
        for item in items:
            meta = PodMeta.from_metadata(item.get("metadata") or {})
            if meta is not None:
                pods[meta.uid] = meta
        previous, self.pods = self.pods, pods
        recovered = self.error is not None
        self.error = None
        self.listed.set()
        if recovered:
            log.info("reading Pods in %s works again", self.namespace)
        for uid, pod in previous.items():
            if uid not in pods:
                self._forget(pod)
        self._on_listed(self)

    def apply(self, event_type: str, obj: dict[str, Any]) -> None:
        pod = PodMeta.from_metadata(obj.get("metadata") or {})
        if pod is None:
            return
        if event_type == "DELETED":
            self.pods.pop(pod.uid, None)
            self._forget(pod)
        else:
            self.pods[pod.uid] = pod

    def _forget(self, pod: PodMeta) -> None:
        self._gone[pod.uid] = None
        while len(self._gone) > RECENTLY_GONE:
            self._gone.popitem(last=False)
        self._on_gone(pod)

    def _failed(self, error: KubeApiError, failures: int) -> None:
        first = self.error is None
        self.error = error
        self.listed.set()
        metrics.kube_pod_watch_errors.labels(error.outcome).inc()
        if first or failures.bit_count() == 1:  # 1, 2, 4, 8...: log, do not flood
            log.warning(
                "cannot read Pods in namespace %s (attempt %d): %s", self.namespace, failures, error
            )
        if first:
            self._on_listed(self)


class NamespaceWatches:
    """The namespace watches that members (agents, CRs) need: a watch starts with its first
    member and stops when its last one leaves; each member needs one namespace at most."""

    def __init__(
        self,
        api: PodApi,
        *,
        on_gone: Callable[[PodMeta], None],
        on_listed: Callable[[NamespaceWatch], None],
        retry_max_seconds: float = 30.0,
    ) -> None:
        self.api = api
        self._on_gone = on_gone
        self._on_listed = on_listed
        self._retry_max = retry_max_seconds
        self._members: dict[str, set[str]] = {}  # namespace -> members
        self._member_of: dict[str, str] = {}  # member -> namespace
        self._watches: dict[str, NamespaceWatch] = {}

    def namespaces(self) -> list[str]:
        return sorted(self._watches)

    def members(self, namespace: str) -> list[str]:
        return sorted(self._members.get(namespace, ()))

    def join(self, namespace: str, member: str) -> NamespaceWatch:
        """Count `member` in `namespace` (leaving any other); start its watch if new."""
        if self._member_of.get(member) != namespace:
            self.leave(member)
            self._members.setdefault(namespace, set()).add(member)
            self._member_of[member] = namespace
        watch = self._watches.get(namespace)
        if watch is None:
            watch = NamespaceWatch(
                self.api, namespace, on_gone=self._on_gone, on_listed=self._on_listed,
                retry_max_seconds=self._retry_max,
            )  # fmt: skip
            self._watches[namespace] = watch
            watch.start()
            metrics.kube_pod_watches.set(len(self._watches))
            log.info("watching Pods in namespace %s", namespace)
        return watch

    def leave(self, member: str) -> None:
        namespace = self._member_of.pop(member, None)
        if namespace is None:
            return
        members = self._members.get(namespace, set())
        members.discard(member)
        if members:
            return
        self._members.pop(namespace, None)
        watch = self._watches.pop(namespace, None)
        if watch is not None:
            watch.cancel()
            metrics.kube_pod_watches.set(len(self._watches))
            log.info("no longer watching Pods in namespace %s", namespace)

    async def stop(self) -> None:
        watches, self._watches = list(self._watches.values()), {}
        self._members.clear()
        self._member_of.clear()
        await asyncio.gather(*(watch.stop() for watch in watches))
        metrics.kube_pod_watches.set(0)
