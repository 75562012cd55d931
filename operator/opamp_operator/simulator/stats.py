"""Counters shared by every simulated agent; fixed size whatever the run length."""

from __future__ import annotations

import math
from typing import Final

#: Error kinds beyond this many distinct names are counted under "other".
MAX_ERROR_KINDS: Final = 64


class LatencyHistogram:
    """Log-scale histogram of durations: constant memory, about 1 % relative error.

    Buckets grow by 2 % from 10 microseconds; values below fall in the first
    bucket, values above 120 s in the last. Percentiles return the bucket's
    geometric middle (the overflow bucket: the max); max and mean are exact.
    """

    __slots__ = ("_counts", "count", "max", "total")

    _LOW: Final = 1e-5
    _RATIO: Final = 1.02
    _BUCKETS: Final = math.ceil(math.log(120.0 / 1e-5) / math.log(1.02)) + 1
    _LOG_RATIO: Final = math.log(1.02)

    def __init__(self) -> None:
        self._counts = [0] * self._BUCKETS
        self.count = 0
        self.total = 0.0
        self.max = 0.0

    def record(self, seconds: float) -> None:
        seconds = max(seconds, 0.0)
        if seconds <= self._LOW:
            index = 0
        else:
            index = min(int(math.log(seconds / self._LOW) / self._LOG_RATIO) + 1, self._BUCKETS - 1)
        self._counts[index] += 1
        self.count += 1
        self.total += seconds
        self.max = max(self.max, seconds)

    def percentile(self, q: float) -> float | None:
        """The q-th percentile (0..100) in seconds, or None when nothing was recorded."""
        if not self.count:
            return None
        rank = max(1, math.ceil(q / 100 * self.count))
        seen = 0
        for index, bucket in enumerate(self._counts):
            seen += bucket
            if seen >= rank:
                if index == self._BUCKETS - 1:
                    return self.max  # the overflow bucket has no meaningful middle
                return min(self._middle(index), self.max)
        return self.max  # unreachable: the buckets sum to count

    def _middle(self, index: int) -> float:
        if index == 0:
            return self._LOW
        upper = self._LOW * self._RATIO**index
        return upper / math.sqrt(self._RATIO)

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None


class Stats:
    """Fleet-wide counters; agents update them in place (one event loop, no locks)."""

    __slots__ = (
        "churn_disconnects",
        "connected",
        "errors",
        "first_all_connected",
        "full_state_requests",
        "heartbeats_late",
        "latency",
        "loop_lag",
        "messages_sent",
        "peak_connected",
        "reconnects",
        "replies_received",
        "target",
    )

    def __init__(self, target: int) -> None:
        self.target = target  # agents that should end up connected
        self.messages_sent = 0
        self.replies_received = 0
        self.reconnects = 0
        self.churn_disconnects = 0
        self.full_state_requests = 0
        self.heartbeats_late = 0
        self.connected = 0
        self.peak_connected = 0
        #: Monotonic time when every agent was first connected at once, else None.
        self.first_all_connected: float | None = None
        self.errors: dict[str, int] = {}
        self.latency = LatencyHistogram()
        self.loop_lag = LatencyHistogram()

    def error(self, kind: str) -> None:
        if kind not in self.errors and len(self.errors) >= MAX_ERROR_KINDS:
            kind = "other"
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def agent_connected(self, now: float) -> None:
        self.connected += 1
        if self.connected > self.peak_connected:
            self.peak_connected = self.connected
            if self.connected >= self.target and self.first_all_connected is None:
                self.first_all_connected = now

    def agent_disconnected(self) -> None:
        self.connected -= 1
