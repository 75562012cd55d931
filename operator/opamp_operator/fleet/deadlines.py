"""One scheduler for every agent's deadline: a heap with at most one entry per agent.

Invariant: every key with a deadline D has a heap entry at a time <= D. A heartbeat only moves
a deadline later, which keeps the invariant with no heap work (O(1), a dict write). Setting a
new or earlier deadline pushes an entry. When an entry comes due, the scheduler compares it
with the key's current deadline: if that moved later, the entry is pushed again at the new
time; if it is gone, the entry is dropped; otherwise the key is due.
"""

from __future__ import annotations

import heapq


class DeadlineScheduler:
    def __init__(self) -> None:
        self._deadlines: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._deadlines)

    def set(self, key: str, deadline: float) -> None:
        """Set or move `key`'s deadline (monotonic seconds)."""
        previous = self._deadlines.get(key)
        self._deadlines[key] = deadline
        if previous is None or deadline < previous:
            heapq.heappush(self._heap, (deadline, key))

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
                if current is not None:
                    heapq.heappush(self._heap, (current, key))
                continue
            return at
        return None

    def pop_earliest(self) -> str | None:
        """Remove and return the key with the earliest deadline, due or not."""
        at = self.next_due()
        if at is None:
            return None
        _, key = heapq.heappop(self._heap)
        del self._deadlines[key]
        return key

    def pop_due(self, now: float) -> list[str]:
        """Remove and return every key whose deadline is at or before `now`."""
        due: list[str] = []
        while True:
            at = self.next_due()
            if at is None or at > now:
                return due
            _, key = heapq.heappop(self._heap)
            if self._deadlines.get(key) == at:
                del self._deadlines[key]
                due.append(key)
