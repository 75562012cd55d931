"""Jittered exponential backoff for reconnects, and reading Retry-After (pure)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime

# 2**64 overflows nothing in Python, but a float power that large is pointless work.
_MAX_EXPONENT = 63


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before attempt `failures` (1 = after the first failure), in seconds.

    The ceiling doubles per failure from `initial` up to `maximum`; the delay is
    drawn uniformly from [ceiling / 2, ceiling] ("equal jitter"), so a fleet that
    lost its server together spreads out, yet no agent retries in a hot loop.
    """

    initial: float = 0.5
    maximum: float = 30.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ValueError("backoff needs 0 < initial <= maximum")
        if not self.multiplier >= 1:
            raise ValueError("backoff multiplier must be at least 1")

    def ceiling(self, failures: int) -> float:
        exponent = min(max(failures, 1) - 1, _MAX_EXPONENT)
        return min(self.maximum, self.initial * self.multiplier**exponent)

    def delay(self, failures: int, rng: random.Random) -> float:
        ceiling = self.ceiling(failures)
        return rng.uniform(ceiling / 2, ceiling)


def parse_retry_after(value: str | None, now_wall: float) -> float | None:
    """An HTTP Retry-After header (delay seconds or an HTTP date) as seconds from now.

    None when absent or unreadable; never negative.
    """
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now_wall)
