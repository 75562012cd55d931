"""The one OpAMPAgent watch of a replica, and everything that subscribes to it.

One list+watch (`kube.api.listwatch.Informer`) of OpAMPAgent resources per replica, on
every replica (not only Kopf's active peer), fanned out to:
- liveness (`kube/liveness/schedule.py`): when to look at a CR no live session holds;
- the status writer: a deleted CR of an agent connected here is recreated at once;
- Pod linking: CRs linked to a Pod that no agent here holds (a deleted Pod removes them);
- GitOps (`kube/gitops/controller.py`): labels, generation, own remote config, annotations,
  subscribed by the app with `subscribe`.
The liveness task that acts on due CRs runs beside the watch and stops with it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from opamp_operator.config import KubeSettings
from opamp_operator.fleet.clock import Clock
from opamp_operator.fleet.registry import Fleet
from opamp_operator.kube.api.listwatch import Fanout, Informer, InformerHandler
from opamp_operator.kube.api.resources import KubeApi
from opamp_operator.kube.liveness.judge import LivenessChecker, ReplicaView
from opamp_operator.kube.liveness.schedule import LivenessWatch
from opamp_operator.kube.mirror.statuswriter import StatusWriter
from opamp_operator.kube.pods.linker import PodLinker
from opamp_operator.kube.shapes.naming import PLURAL, agent_id_from_name


class AgentWatch:
    """`subscribe(...)` what else needs the CRs, then `start()`; `stop()` at shutdown."""

    def __init__(
        self,
        fleet: Fleet,
        settings: KubeSettings,
        api: KubeApi,
        *,
        writer: StatusWriter,
        clock: Clock,
        pods: PodLinker | None = None,
        replicas: ReplicaView | None = None,
    ) -> None:
        checker = LivenessChecker(fleet, settings, api, clock, writer.gate, replicas=replicas)
        self.liveness = LivenessWatch(
            checker, settings.liveness_check_interval_seconds, settings.api_threads
        )
        self.fanout = Fanout()
        self.fanout.add(_Subscribers(self.liveness, writer, pods))
        self.informer = Informer(
            api.session, settings.namespace, PLURAL, self.fanout,
            retry_max_seconds=settings.retry_max_seconds,
        )  # fmt: skip
        self._tasks: list[asyncio.Task[None]] = []

    def subscribe(self, handler: InformerHandler) -> None:
        """Every listing and event from now on (call before `start`)."""
        self.fanout.add(handler)

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self.informer.run(), name="opampagents-watch"),
            asyncio.create_task(self.liveness.run(), name="kube-liveness"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []


class _Subscribers:
    """Liveness, the status writer and Pod linking, as one handler of the watch."""

    def __init__(
        self, liveness: LivenessWatch, writer: StatusWriter, pods: PodLinker | None
    ) -> None:
        self.liveness = liveness
        self.writer = writer
        self.pods = pods

    def replace(self, items: list[dict[str, Any]]) -> None:
        for body in items:  # a (re)listing: objects without an event type
            self._observe(None, body)

    def apply(self, event_type: str, obj: dict[str, Any]) -> None:
        self._observe(event_type, obj)

    def _observe(self, event_type: str | None, body: dict[str, Any]) -> None:
        self.liveness.observe(event_type, body)
        if self.pods is not None:
            self.pods.observe_cr(event_type, body)
        if event_type == "DELETED":
            metadata = body.get("metadata") or {}
            agent_id = agent_id_from_name(str(metadata.get("name", "")))
            if agent_id is not None:
                self.writer.cr_deleted(agent_id, metadata.get("uid"))
