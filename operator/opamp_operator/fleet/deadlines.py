"""One scheduler for every agent's deadline: a heap with at most one entry per agent.

A heartbeat only moves the agent's deadline forward in a dict (O(1), no heap work). When a
heap entry comes due, the scheduler compares it with the agent's current deadline: if the
deadline moved, the entry is pushed again at the new time; otherwise the agent is due.
Deadlines only ever move later while an entry is in the heap, so none is missed.
"""

from __future__ import annotations

import heapq


class DeadlineScheduler:
    def __init__(self) -> None:
        self._deadlines: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []
        self._in_heap: set[str] = set()

    def __len__(self) -> int:
        return len(self._deadlines)

    def set(self, key: str, deadline: float) -> None:
        """Set or move `key`'s deadline (monotonic seconds)."""
        previous = self._deadlines.get(key)
        self._deadlines[key] = deadline
        if key not in self._in_heap or (previous is not None and deadline < previous):
            # An earlier deadline than the heap entry needs its own entry; the old one
            # turns stale and is skipped when it comes due.
            heapq.heappush(self._heap, (deadline, key))
            self._in_heap.add(key)

    def cancel(self, key: str) -> None:
        self._deadlines.pop(key, None)

    def deadline(self, key: str) -> float | None:
        return self._deadlines.get(key)

    def next_due(self) -> float | None:
        """The earliest time at which `pop_due` may return something."""
        while self._heap:
            at, key = self._heap[0]
            current = self._deadlines.get(key)
            if current is None or current > at:
                heapq.heappop(self._heap)
                self._in_heap.discard(key)
                if current is not None:
                    heapq.heappush(self._heap, (current, key))
                    self._in_heap.add(key)
                continue
            return at
        return None

    def pop_due(self, now: float) -> list[str]:
        """Remove and return every key whose deadline is at or before `now`."""
        due: list[str] = []
        while True:
            at = self.next_due()
            if at is None or at > now:
                return due
            _, key = heapq.heappop(self._heap)
            self._in_heap.discard(key)
            if self._deadlines.get(key) == at:
                del self._deadlines[key]
                due.append(key)
