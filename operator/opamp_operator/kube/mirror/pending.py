"""Which agents' CRs wait for a write: a bounded, coalescing set with retries (no I/O).

An agent is in here at most once, whatever happened to it meanwhile: the writer reads the
agent's latest snapshot when its turn comes, so the newest state wins and a burst of changes
costs one write. Phase transitions are kept apart (a few per agent) because each becomes
its own Kubernetes Event.
"""

from __future__ import annotations

import heapq
import random

from opamp_operator.fleet.events import PhaseChanged

MAX_TRANSITIONS_PER_AGENT = 8  # a flapping agent keeps its latest transitions, not all


class PendingUpdates:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._urgent: dict[str, None] = {}  # insertion-ordered set: transitions, changes
        self._refresh: dict[str, None] = {}  # only lastSeenAt is due: served after urgent
        self._retry: list[tuple[float, str]] = []  # heap of (due, agent) after a failure
        self._retry_due: dict[str, float] = {}
        self._attempts: dict[str, int] = {}
        self._in_flight: set[str] = set()
        self._transitions: dict[str, list[PhaseChanged]] = {}
        self.dropped = 0  # marks refused because the set was full
        self.transitions_dropped = 0
        self.overflowed = False  # set when a mark was dropped: the writer must resync

    def __len__(self) -> int:
        """Agents waiting (not counting those being written now)."""
        return len(self._urgent) + len(self._refresh) + len(self._retry_due)

    @property
    def busy(self) -> bool:
        return bool(len(self) or self._in_flight)

    def mark(self, agent_id: str, urgent: bool = True) -> bool:
        """Ask for a write of `agent_id`'s CR; False when the set is full (dropped)."""
        if agent_id in self._urgent or agent_id in self._retry_due:
            return True
        if agent_id in self._refresh:
            if urgent:
                del self._refresh[agent_id]
                self._urgent[agent_id] = None
            return True
        if len(self) >= self.capacity:
            self.dropped += 1
            self.overflowed = True
            return False
        (self._urgent if urgent else self._refresh)[agent_id] = None
        return True

    def add_transition(self, event: PhaseChanged) -> bool:
        """Mark the agent and remember the transition for its Event."""
        if not self.mark(event.agent_id):
            return False
        queue = self._transitions.setdefault(event.agent_id, [])
        queue.append(event)
        if len(queue) > MAX_TRANSITIONS_PER_AGENT:
            del queue[0]
            self.transitions_dropped += 1
        return True

    def transitions(self, agent_id: str) -> list[PhaseChanged]:
        return list(self._transitions.get(agent_id, ()))

    def transition_done(self, agent_id: str, event: PhaseChanged) -> None:
        queue = self._transitions.get(agent_id)
        if queue and event in queue:
            queue.remove(event)
        if not queue:
            self._transitions.pop(agent_id, None)

    def drop_transitions(self, agent_id: str) -> int:
        return len(self._transitions.pop(agent_id, ()))

    def take(self, now: float) -> str | None:
        """The next agent to write (retries that are due first), now marked in flight."""
        while self._retry and self._retry[0][0] <= now:
            due, agent_id = heapq.heappop(self._retry)
            if self._retry_due.get(agent_id) == due:
                del self._retry_due[agent_id]
                self._urgent[agent_id] = None
        for queue in (self._urgent, self._refresh):
            for agent_id in queue:
                if agent_id not in self._in_flight:
                    del queue[agent_id]
                    self._in_flight.add(agent_id)
                    return agent_id
        return None

    def next_retry_at(self) -> float | None:
        return self._retry[0][0] if self._retry else None

    def succeeded(self, agent_id: str) -> None:
        self._in_flight.discard(agent_id)
        self._attempts.pop(agent_id, None)

    def failed(
        self, agent_id: str, now: float, max_delay: float, probe_delay: float | None = None
    ) -> tuple[int, float]:
        """Schedule another try with exponential backoff; return (attempts, delay).

        With `probe_delay`, when no other retry is due within it, this one is (at most that
        late): one agent keeps probing the API server, so the first success after an outage
        comes soon and can release every other retry (`retry_all_now`).
        """
        self._in_flight.discard(agent_id)
        attempts = self._attempts.get(agent_id, 0) + 1
        self._attempts[agent_id] = attempts
        delay = min(max_delay, 0.5 * 2 ** min(attempts - 1, 16)) * random.uniform(1.0, 1.2)
        if probe_delay is not None and not self._retry_due_within(now + probe_delay):
            delay = min(delay, probe_delay)
        self._urgent.pop(agent_id, None)
        self._refresh.pop(agent_id, None)
        due = now + delay
        self._retry_due[agent_id] = due
        heapq.heappush(self._retry, (due, agent_id))
        return attempts, delay

    def retry_all_now(self) -> int:
        """Every agent waiting out a backoff is due now (the API answers again); how many."""
        waiting = list(self._retry_due)
        for agent_id in waiting:
            self._urgent[agent_id] = None
        self._retry_due.clear()
        self._retry.clear()
        return len(waiting)

    def _retry_due_within(self, moment: float) -> bool:
        retry = self._retry
        while retry and self._retry_due.get(retry[0][1]) != retry[0][0]:
            heapq.heappop(retry)  # stale: that agent was retried or rescheduled since
        return bool(retry) and retry[0][0] <= moment

    def abandoned(self, agent_id: str) -> None:
        """Stop trying `agent_id` (a request the API server will never accept)."""
        self._in_flight.discard(agent_id)
        self._attempts.pop(agent_id, None)
        self._transitions.pop(agent_id, None)

    def clear_refresh(self) -> int:
        count = len(self._refresh)
        self._refresh.clear()
        return count
