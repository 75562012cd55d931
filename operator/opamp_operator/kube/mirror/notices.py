"""Kubernetes Events about one agent that are no phase transition: a duplicate instance uid
found, a restart sent or refused. Posted in the background; never blocks the fleet.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from opamp_operator.config import KubeSettings
from opamp_operator.fleet.clock import Clock
from opamp_operator.fleet.identity import DuplicateUid
from opamp_operator.kube.api.resources import KubeApi, KubeApiError, ObjectRef
from opamp_operator.kube.shapes.naming import resource_name
from opamp_operator.kube.writes.gate import WriteGate

log = logging.getLogger(__name__)

DUPLICATE_REASON: Final = "DuplicateInstanceUid"
_MAX_IN_FLIGHT: Final = 64  # Events being posted at once; more are logged and dropped


class AgentNotices:
    """Posts Events about OpAMPAgents by agent id; `stop()` cancels what is in flight."""

    def __init__(self, settings: KubeSettings, api: KubeApi, clock: Clock, gate: WriteGate) -> None:
        self.settings = settings
        self.api = api  # reads; the Events go through the gate
        self.clock = clock
        self.gate = gate
        self._tasks: set[asyncio.Task[None]] = set()

    def duplicate(self, found: DuplicateUid) -> None:
        """Tell on the original agent's CR that a clone was given another uid."""
        self.post(found.original, "Warning", DUPLICATE_REASON, found.describe())

    def post(self, agent_id: str, event_type: str, reason: str, message: str) -> None:
        if not self.settings.post_events:
            return
        if len(self._tasks) >= _MAX_IN_FLIGHT:
            log.warning("Event %s for agent %s not posted: too many in flight", reason, agent_id)
            return
        task = asyncio.get_running_loop().create_task(
            self._post(agent_id, event_type, reason, message)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _post(self, agent_id: str, event_type: str, reason: str, message: str) -> None:
        name = resource_name(agent_id)
        try:
            obj = await self.api.get_agent(name)
            if obj is None:
                log.info("Event %s not posted: OpAMPAgent %s does not exist", reason, name)
                return
            uid = str((obj.get("metadata") or {}).get("uid", ""))
            target = ObjectRef(name=name, uid=uid, namespace=self.settings.namespace)
            await self.gate.post_event(
                target, event_type=event_type, reason=reason, message=message,
                at=self.clock.now(), reporter=self.settings.replica_id,
            )  # fmt: skip
        except KubeApiError as error:
            log.warning("Event %s for OpAMPAgent %s not posted: %s", reason, name, error)
