"""Kopf handlers on OpAMPAgent resources, registered on a registry of their own.

Run them in-process, in the application's event loop, after the status writer started:

    registry = build_registry(fleet, settings.kube, api, writer=writer)
    stop = asyncio.Event()
    kopf_task = asyncio.create_task(kopf.operator(
        registry=registry, clusterwide=False, namespaces=[settings.kube.namespace],
        standalone=True, stop_flag=stop))
    ...
    stop.set(); await kopf_task        # stop with the flag: never cancel the task

What is registered:
- login with the credentials the app loaded once (`kube.api.Credentials`);
- startup: quieter Kopf settings (see `configure_kopf`), and the liveness task;
- a watch of every OpAMPAgent: feeds `LivenessWatch` (Offline/Error for CRs no live session
  holds, and GC; see `kube/liveness/schedule.py` for why this is not a per-object
  `@kopf.timer`), and
  recreates the deleted CR of an agent connected here; with a `PodLinker`, tells it about CRs
  linked to a Pod (so a deleted Pod removes their CR even when no agent here holds them);
- cleanup: stops the liveness task.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from opamp_operator.config import KubeSettings
from opamp_operator.fleet.clock import Clock, SystemClock
from opamp_operator.fleet.registry import Fleet
from opamp_operator.kube.api.resources import KubeApi
from opamp_operator.kube.liveness.judge import LivenessChecker
from opamp_operator.kube.liveness.schedule import LivenessWatch
from opamp_operator.kube.mirror.statuswriter import StatusWriter
from opamp_operator.kube.pods.linker import PodLinker
from opamp_operator.kube.shapes.naming import GROUP, PLURAL, VERSION, agent_id_from_name
from opamp_operator.kube.writes.pace import WriteLimiter

log = logging.getLogger(__name__)


def build_registry(
    fleet: Fleet,
    settings: KubeSettings,
    api: KubeApi,
    *,
    writer: StatusWriter | None = None,
    clock: Clock | None = None,
    pods: PodLinker | None = None,
) -> kopf.OperatorRegistry:
    """A Kopf registry with every handler of the mirror, bound to these collaborators."""
    registry = kopf.OperatorRegistry()
    limiter = writer.limiter if writer is not None else WriteLimiter(settings.writes_per_second)
    checker = LivenessChecker(fleet, settings, api, clock or SystemClock(), limiter)
    watch = LivenessWatch(checker, settings.liveness_check_interval_seconds, settings.api_threads)
    credentials = api.session.credentials  # loaded once, at start-up
    tasks: list[asyncio.Task[None]] = []

    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure_kopf(settings)
        tasks.append(asyncio.create_task(watch.run(), name="kube-liveness"))

    async def cleanup(**_: Any) -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        tasks.clear()

    def login(**_: Any) -> kopf.ConnectionInfo:
        return credentials.connection_info()

    async def observe(event: Mapping[str, Any], **_: Any) -> None:
        body = event.get("object") or {}
        watch.observe(event.get("type"), body)
        if pods is not None:  # CRs linked to a Pod that no agent here holds
            pods.observe_cr(event.get("type"), body)
        if event.get("type") == "DELETED" and writer is not None:
            metadata = body.get("metadata") or {}
            agent_id = agent_id_from_name(str(metadata.get("name", "")))
            if agent_id is not None:
                writer.cr_deleted(agent_id, metadata.get("uid"))

    # Registered by calling the decorators: Kopf's are untyped, and mypy --strict would
    # otherwise call every handler untyped.
    kopf.on.startup(registry=registry)(startup)
    kopf.on.cleanup(registry=registry)(cleanup)
    kopf.on.login(registry=registry)(login)
    kopf.on.event(GROUP, VERSION, PLURAL, registry=registry, id="opampagents")(observe)
    return registry


def configure_kopf(settings: kopf.OperatorSettings) -> None:
    """Kopf settings for running inside the operator process, next to everything else."""
    # Kopf posts its handlers' log lines as Events; "Handler succeeded" on every watch
    # event is noise in `kubectl describe` (we post our own transition Events).
    settings.posting.level = logging.WARNING
    # The application decides when the process ends; Kopf must never SIGKILL it.
    settings.process.ultimate_exiting_timeout = None
    # Kopf logs "Handler 'opampagents' succeeded." at INFO for every watch event, i.e. for
    # every CR write at fleet scale; its warnings and errors still come through.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
