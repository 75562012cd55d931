"""Jittered exponential backoff, and reading Retry-After (pure): the one retry delay of the
operator (API writes, watches, the Pod linker, the store writer) and of the simulator.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime

# 2**64 overflows nothing in Python, but a float power that large is pointless work.
_MAX_EXPONENT = 63
_SHARED = random.Random()  # for callers that do not need a repeatable sequence

EQUAL_JITTER = (0.5, 1.0)
NO_JITTER = (1.0, 1.0)
UP_TO_A_FIFTH_LATER = (1.0, 1.2)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before attempt `failures` (1 = after the first failure), in seconds.

    The ceiling doubles per failure from `initial` up to `maximum`; the delay is drawn
    uniformly from `jitter` (low, high) times the ceiling. The default, [ceiling / 2,
    ceiling] ("equal jitter"), spreads out a fleet that lost its server together, yet no
    client retries in a hot loop; (1.0, 1.0) is a plain doubling.
    """

    initial: float = 0.5
    maximum: float = 30.0
    multiplier: float = 2.0
    jitter: tuple[float, float] = EQUAL_JITTER

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ValueError("backoff needs 0 < initial <= maximum")
        if not self.multiplier >= 1:
            raise ValueError("backoff multiplier must be at least 1")
        low, high = self.jitter
        if not 0 < low <= high:
            raise ValueError("backoff jitter needs 0 < low <= high")

    @classmethod
    def up_to(
        cls, maximum: float, *, initial: float = 0.5, jitter: tuple[float, float] = NO_JITTER
    ) -> Backoff:
        """For a cap from settings: an initial delay above the cap starts at the cap."""
        return cls(min(initial, maximum), maximum, jitter=jitter)

    def ceiling(self, failures: int) -> float:
        exponent = min(max(failures, 1) - 1, _MAX_EXPONENT)
        return min(self.maximum, self.initial * self.multiplier**exponent)

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        ceiling = self.ceiling(failures)
        low, high = self.jitter
        if low == high:
            return ceiling * low
        return (rng or _SHARED).uniform(ceiling * low, ceiling * high)


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
