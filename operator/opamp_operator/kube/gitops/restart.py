"""Restart on request: the `opamp.dev/restart-requested-at` annotation on an OpAMPAgent.

Mirrors the reconnect annotation (kube/gitops/controller.py): set it to any new value (a
timestamp) and the replica holding the agent sends it the OpAMP Restart command, once per
value. What was done goes to `status.restart` (requestedAt = the value, handledAt, result,
message, replica) and into an Event: Normal `RestartRequested` when the command went out (or
waits for an HTTP agent's next poll), Warning `RestartRefused` when the agent does not claim
AcceptsRestartCommand or is not connected. The REST API's `POST .../restart` uses the same
fleet call (api/handlers.py); both count in `opamp_restart_requests_total`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, Final

from opamp_operator import metrics
from opamp_operator.config import KubeSettings
from opamp_operator.fleet.clock import Clock
from opamp_operator.fleet.commands import RestartResult, explain
from opamp_operator.fleet.model import AgentPhase
from opamp_operator.fleet.registry import Fleet
from opamp_operator.kube.api.resources import KubeApi
from opamp_operator.kube.gitops.requests import record_handled
from opamp_operator.kube.mirror.notices import AgentNotices
from opamp_operator.kube.shapes.agentstatus import format_time
from opamp_operator.kube.writes.gate import WriteGate

log = logging.getLogger(__name__)

# Set it to any new value (e.g. a timestamp) to make the agent restart, once per value.
RESTART_ANNOTATION: Final = "opamp.dev/restart-requested-at"
REQUESTED_REASON: Final = "RestartRequested"
REFUSED_REASON: Final = "RestartRefused"
_ACCEPTED: Final = frozenset(result.value for result in RestartResult if result.accepted)


class RestartRequests:
    """Acts on the restart annotation of the OpAMPAgents the GitOps informer sees."""

    def __init__(
        self,
        fleet: Fleet,
        settings: KubeSettings,
        api: KubeApi,
        clock: Clock,
        *,
        gate: WriteGate,
        notices: AgentNotices | None = None,
    ) -> None:
        self.fleet = fleet
        self.settings = settings
        self.api = api  # reads; writes go through the gate
        self.clock = clock
        self.gate = gate
        self.notices = notices or AgentNotices(settings, api, clock, gate)
        self._acted: dict[str, str] = {}  # CR name -> annotation value acted upon
        self._writes: set[asyncio.Task[None]] = set()

    def check(self, name: str, agent_id: str, obj: Mapping[str, Any]) -> None:
        """Called with every version of an OpAMPAgent the informer sees."""
        annotations = (obj.get("metadata") or {}).get("annotations") or {}
        value = annotations.get(RESTART_ANNOTATION)
        if not value:
            return
        status = obj.get("status") or {}
        handled = (status.get("restart") or {}).get("requestedAt")
        if value == handled or self._acted.get(name) == value:
            return
        result = self.fleet.request_restart(agent_id)
        if not result.accepted and _held_elsewhere(status, self.settings.replica_id):
            return  # another replica holds the session: it acts
        self._acted[name] = value
        message = explain(result, agent_id)
        metrics.restart_requests.labels("annotation", result.value).inc()
        log.info("OpAMPAgent %s: restart requested by annotation %r: %s", name, value, message)
        record = {
            "requestedAt": value,
            "handledAt": format_time(self.clock.now()),
            "result": result.value,
            "message": message,
            "replica": self.settings.replica_id,
        }
        self._spawn(self._record(name, record, obj))
        accepted = result.accepted
        kind, reason = ("Normal", REQUESTED_REASON) if accepted else ("Warning", REFUSED_REASON)
        self.notices.post(agent_id, kind, reason, f"annotation {value!r}: {message}")

    def forget(self, name: str) -> None:
        self._acted.pop(name, None)

    async def stop(self) -> None:
        for task in self._writes:
            task.cancel()
        await asyncio.gather(*self._writes, return_exceptions=True)
        await self.notices.stop()

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _record(self, name: str, record: dict[str, Any], seen: Mapping[str, Any]) -> None:
        await record_handled(
            self.gate, self.api, name, seen, annotation=RESTART_ANNOTATION, key="restart",
            record=record, acted=lambda r: r.get("result") in _ACCEPTED,
        )  # fmt: skip


def _held_elsewhere(status: Mapping[str, Any], replica: str) -> bool:
    """The CR says another replica holds the agent's live session."""
    online = status.get("phase") == AgentPhase.ONLINE.value
    return online and (status.get("connection") or {}).get("replica") != replica
