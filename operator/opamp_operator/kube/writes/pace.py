"""A shared pace for API writes: callers wait their turn instead of being refused."""

from __future__ import annotations

import asyncio


class WriteLimiter:
    """`rate` writes per second, with bursts of up to one second's worth.

    Each caller reserves the next free slot before it sleeps (virtual scheduling, as in the
    generic cell rate algorithm), so concurrent callers line up instead of racing for tokens.
    Paced on the event loop's clock, not the injected `Clock`: this limits real requests to
    a real API server, and a test's fake clock must not stall it.
    """

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._interval = 1.0 / rate
        self._tolerance = (max(1.0, rate) - 1.0) * self._interval
        self._next_slot = 0.0  # loop time at which the next write would be on schedule

    async def acquire(self) -> None:
        now = asyncio.get_running_loop().time()
        slot = max(self._next_slot, now)
        self._next_slot = slot + self._interval
        wait = slot - self._tolerance - now
        if wait > 0:
            await asyncio.sleep(wait)
