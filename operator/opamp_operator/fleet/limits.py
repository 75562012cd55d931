"""Admission limits for new agents: a cap on how many, and a rate of new registrations."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Rejection:
    kind: str  # "agent_limit" or "rate_limit": the metric label
    reason: str  # what the agent is told
    retry_after_seconds: float


class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up; time is passed in."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._updated = now

    def take(self, now: float) -> float:
        """Take one token; return 0 on success, or seconds until one is available."""
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
        self._updated = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate if self.rate > 0 else 60.0
