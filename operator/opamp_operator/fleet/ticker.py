"""The one task that fires every agent's deadlines, sleeping until the next is due."""

from __future__ import annotations

import asyncio
import logging

from .registry import Fleet

log = logging.getLogger(__name__)

MAX_SLEEP_SECONDS = 1.0  # wake at least this often: new deadlines may be earlier


async def run_deadline_ticker(fleet: Fleet) -> None:
    """Run until cancelled; never raises for a bad agent (logs and goes on)."""
    while True:
        try:
            fleet.check_deadlines()
        except Exception:
            log.exception("deadline check failed; retrying")
        due = fleet.next_deadline()
        now = fleet.clock.monotonic()
        delay = MAX_SLEEP_SECONDS if due is None else min(MAX_SLEEP_SECONDS, max(0.0, due - now))
        await asyncio.sleep(max(delay, 0.01))
