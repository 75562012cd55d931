"""Agent ids in order with their phase, kept from fleet events, for the list endpoints.

Building a snapshot of every agent costs ~13 µs each (130 ms for 10,000 agents, on the
event loop that also serves OpAMP), so lists do not: they walk this index and snapshot only
the agents on the page. The index follows the fleet through its own bounded subscription:
a task applies events as they come, and every read first applies what is still queued, so
a list is as current as the fleet. If the bus ever drops events for us (queue full), the
index is rebuilt from the fleet once, on the next read.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
from collections.abc import Iterator

from opamp_operator.fleet.events import AgentForgotten, FleetEvent, PhaseChanged, Subscription
from opamp_operator.fleet.model import AgentPhase
from opamp_operator.fleet.registry import Fleet

log = logging.getLogger(__name__)

QUEUE_SIZE = 100_000  # events between two applications; beyond: dropped, then a rebuild


class AgentIndex:
    def __init__(self, fleet: Fleet, name: str = "api-index") -> None:
        self.fleet = fleet
        self.name = name
        self.subscription: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._ids: list[str] = []  # sorted
        self._phases: dict[str, AgentPhase] = {}
        self._down: set[str] = set()  # Offline or Error
        self._built = False
        self.rebuilds = 0

    def start(self) -> None:
        """Subscribe to the fleet's events and apply them in a task."""
        self.subscription = self.fleet.events.subscribe(self.name, QUEUE_SIZE)
        self._built = False
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.subscription is not None:
            self.fleet.events.unsubscribe(self.subscription)
            self.subscription = None

    def sync(self) -> None:
        """Apply every queued event; rebuild from the fleet if events were lost."""
        subscription = self.subscription
        if subscription is None or not self._built or subscription.needs_resync:
            self._rebuild()
            return
        while (event := subscription.get_nowait()) is not None:
            self._apply(event)

    def after(self, agent_id: str | None, phase: AgentPhase | None) -> Iterator[str]:
        """Ids greater than `agent_id` in order, of `phase` only when given."""
        self.sync()
        start = 0 if agent_id is None else bisect.bisect_right(self._ids, agent_id)
        for index in range(start, len(self._ids)):
            candidate = self._ids[index]
            if phase is None or self._phases.get(candidate) is phase:
                yield candidate

    def down(self) -> list[str]:
        """Ids of every agent that is Offline or in Error."""
        self.sync()
        return list(self._down)

    def _apply(self, event: FleetEvent) -> None:
        if isinstance(event, PhaseChanged):
            self._set(event.agent_id, event.current)
        elif isinstance(event, AgentForgotten) and event.agent_id in self._phases:
            del self._phases[event.agent_id]
            self._down.discard(event.agent_id)
            del self._ids[bisect.bisect_left(self._ids, event.agent_id)]

    def _set(self, agent_id: str, phase: AgentPhase) -> None:
        if agent_id not in self._phases:
            bisect.insort(self._ids, agent_id)
        self._phases[agent_id] = phase
        if phase is AgentPhase.ONLINE:
            self._down.discard(agent_id)
        else:
            self._down.add(agent_id)

    def _rebuild(self) -> None:
        if self._built:
            log.warning("agent index lost fleet events (queue full): rebuilding from the fleet")
        if self.subscription is not None:
            # Drop what is queued first: the snapshots below already include it.
            while self.subscription.get_nowait() is not None:
                pass
            self.subscription.needs_resync = False
        snapshots = self.fleet.snapshots()
        self._ids = sorted(snapshot.agent_id for snapshot in snapshots)
        self._phases = {snapshot.agent_id: snapshot.phase for snapshot in snapshots}
        self._down = {s.agent_id for s in snapshots if s.phase is not AgentPhase.ONLINE}
        self._built = self.subscription is not None
        self.rebuilds += 1

    async def _run(self) -> None:
        """Apply events as they arrive (keeping the queue short), until cancelled."""
        while True:
            subscription = self.subscription
            assert subscription is not None
            try:
                event = await subscription.get()
                if self._built:
                    self._apply(event)
                self.sync()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("agent index failed to apply an event; rebuilding")
                subscription.needs_resync = True
