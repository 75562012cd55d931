"""The writer's bounded buffer of what is still to be written, and how a batch is planned.

History events (sessions, phase changes) are kept one by one, in order. Heartbeats are
coalesced into one last-seen time per agent and description changes into a set of agent
ids, so both cost O(agents), not O(messages). Nothing here does I/O.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import islice

from opamp_operator.fleet.events import (
    AgentChanged,
    AgentForgotten,
    FleetEvent,
    PhaseChanged,
    SessionClosed,
    SessionOpened,
)

from .rows import AgentStateRow, status_of

HistoryEvent = SessionOpened | SessionClosed | PhaseChanged

# Events per transaction while catching up: bounds one flush's time and memory.
MAX_BATCH_EVENTS = 20_000


@dataclass(slots=True)
class Batch:
    """What one flush writes: a prefix of the history events and, with the last prefix,
    the coalesced last-seen times, described agents and the resync request."""

    events: list[HistoryEvent]
    seen: dict[str, datetime] = field(default_factory=dict)
    described: set[str] = field(default_factory=set)
    # Agents whose AvailableComponents changed (each is in `described` too: its row first).
    components: set[str] = field(default_factory=set)
    resync: bool = False

    def __bool__(self) -> bool:
        return bool(self.events or self.seen or self.described or self.components or self.resync)


@dataclass(frozen=True, slots=True)
class Shed:
    """What had to be dropped to stay within the buffer's bound."""

    history: int = 0
    last_seen: int = 0

    def __bool__(self) -> bool:
        return bool(self.history or self.last_seen)


class PendingWrites:
    """At most `limit` history events plus agents with a pending last-seen time.

    When full, last-seen times are shed first (the fleet still has them: a resync writes
    them back later), then new history events are dropped. Either asks for a resync.
    The set of described agents is bounded by the number of agents and not counted.
    """

    def __init__(self, limit: int, max_batch: int = MAX_BATCH_EVENTS) -> None:
        self.limit = limit
        self.max_batch = max_batch
        self._events: deque[HistoryEvent] = deque()
        # Events ever appended / ever written or discarded: every event appended before
        # `appended` reached n is settled once `settled` >= n (batches leave in order).
        self.appended = 0
        self.settled = 0
        self._seen: dict[str, datetime] = {}
        self._described: set[str] = set()
        self._components: set[str] = set()
        self._resync = False
        self._next_size: int | None = None  # smaller batches while isolating a bad event

    def __len__(self) -> int:
        return len(self._events) + len(self._seen)

    @property
    def history_depth(self) -> int:
        return len(self._events)

    @property
    def resync_requested(self) -> bool:
        return self._resync

    def request_resync(self) -> None:
        self._resync = True

    def add_event(self, event: FleetEvent) -> Shed:
        if isinstance(event, AgentChanged):
            self._described.add(event.agent_id)
            if "available_components" in event.fields:
                self._components.add(event.agent_id)
            return Shed()
        if isinstance(event, AgentForgotten):
            return Shed()  # memory only: the agent's row and history stay
        shed_seen = 0
        if len(self) >= self.limit and self._seen:
            shed_seen = len(self._seen)
            self._seen.clear()
            self._resync = True
        if len(self._events) >= self.limit:
            self._resync = True
            return Shed(history=1, last_seen=shed_seen)
        self._events.append(event)
        self.appended += 1
        return Shed(last_seen=shed_seen)

    def add_seen(self, seen: Mapping[str, datetime]) -> Shed:
        dropped = 0
        for agent_id, at in seen.items():
            known = self._seen.get(agent_id)
            if known is not None:
                self._seen[agent_id] = max(known, at)
            elif len(self) < self.limit:
                self._seen[agent_id] = at
            else:
                dropped += 1
        if dropped:
            self._resync = True
        return Shed(last_seen=dropped)

    def take(self) -> Batch:
        """The next batch; its events stay here until `done` or `discard`."""
        count = min(len(self._events), self._next_size or self.max_batch)
        batch = Batch(list(islice(self._events, count)))
        if count == len(self._events):  # the last prefix carries the coalesced state
            batch.seen, self._seen = self._seen, {}
            batch.described, self._described = self._described, set()
            batch.components, self._components = self._components, set()
            batch.resync, self._resync = self._resync, False
        return batch

    def done(self, batch: Batch) -> None:
        """`batch` was written: forget it."""
        for _ in batch.events:
            self._events.popleft()
        self.settled += len(batch.events)
        self._next_size = None

    def discard(self, batch: Batch) -> None:
        """`batch` can never be written (bad data): forget its events, keep its last-seen
        times, and resynchronise agents' rows (descriptions included) later."""
        self.done(batch)
        self.add_seen(batch.seen)
        self._resync = True

    def split(self, batch: Batch) -> bool:
        """`batch` holds data the database rejects: keep it, and take half as much next
        time to isolate the bad event; False when it cannot be split (discard it then)."""
        if len(batch.events) <= 1:
            return False
        self.failed(batch)
        self._next_size = len(batch.events) // 2
        return True

    def failed(self, batch: Batch) -> Shed:
        """`batch` was not written: keep everything for the next attempt."""
        self._described |= batch.described
        self._components |= batch.components
        self._resync = self._resync or batch.resync
        shed = self.add_seen(batch.seen)
        return shed


def plan_agent_states(
    events: Sequence[HistoryEvent], current_status: Callable[[str], str | None]
) -> list[AgentStateRow]:
    """Each agent's state after applying `events` in order, one row per agent.

    An agent with no phase change in the batch keeps the fleet's current status
    (`current_status`), or what its last session event implies.
    """
    first_at: dict[str, datetime] = {}
    status: dict[str, str] = {}
    connected: dict[str, datetime] = {}
    disconnected: dict[str, tuple[datetime, str]] = {}
    implied: dict[str, str] = {}
    for event in events:
        first_at.setdefault(event.agent_id, event.at)
        if isinstance(event, PhaseChanged):
            status[event.agent_id] = status_of(event.current)
        elif isinstance(event, SessionOpened):
            connected[event.agent_id] = event.at
            implied[event.agent_id] = "online"
        else:
            disconnected[event.agent_id] = (event.at, event.reason)
            implied[event.agent_id] = "offline"
    rows = []
    for agent_id, at in first_at.items():
        chosen = status.get(agent_id) or current_status(agent_id) or implied[agent_id]
        closed = disconnected.get(agent_id)
        rows.append(
            AgentStateRow(
                agent_id,
                chosen,
                at,
                last_connected_at=connected.get(agent_id),
                last_disconnected_at=closed[0] if closed else None,
                disconnect_reason=closed[1] if closed else None,
            )
        )
    return rows


def split_sessions(
    events: Sequence[HistoryEvent],
) -> tuple[list[SessionOpened], list[SessionClosed], list[PhaseChanged]]:
    """Sessions to open (those not also closed in the batch), sessions to close, changes."""
    closed = [e for e in events if isinstance(e, SessionClosed)]
    closed_ids = {e.session_id for e in closed}
    opened = [e for e in events if isinstance(e, SessionOpened) and e.session_id not in closed_ids]
    changes = [e for e in events if isinstance(e, PhaseChanged)]
    return opened, closed, changes
