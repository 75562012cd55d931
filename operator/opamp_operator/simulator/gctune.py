"""Keep Python's cyclic garbage collector from pausing a big fleet (opt-in, process-wide).

Two sources of pauses, both measured at a few thousand agents:

- while connections open, the heap grows by a quarter again and again, and
  each time a full collection rescans every long-lived connection object
  (100-300 ms). Freezing what is alive during the ramp (gc.freeze) takes those
  objects out of the collector's sight.
- in steady state every agent keeps a timer and a few futures alive for about
  a heartbeat, long enough to be promoted and to trigger full collections over
  and over (14 % of the time at 7,000 agents). A large first-generation
  threshold lets them die young: collections become rare (a few per minute).

Process-wide, so only for a process that does nothing else (the `simulate`
command): the few garbage cycles alive at a freeze are kept until the end of
the run, when everything is unfrozen and the thresholds are restored.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from typing import Final

_FREEZE_EVERY_S: Final = 1.0
#: Allocations (net of frees) between young collections; CPython's default is 700.
_THRESHOLDS: Final = (100_000, 10, 10)


def tune() -> tuple[int, int, int]:
    """Raise the collection thresholds; returns the old ones for restore()."""
    old = gc.get_threshold()
    gc.set_threshold(*_THRESHOLDS)
    return old


async def freeze_while(growing: Callable[[], bool], every: float = _FREEZE_EVERY_S) -> None:
    """Freeze the heap every `every` seconds while `growing()` holds, and once more after."""
    while growing():
        gc.freeze()
        await asyncio.sleep(every)
    gc.freeze()


def restore(thresholds: tuple[int, int, int]) -> None:
    """Give frozen objects back to the collector and restore the thresholds (end of run)."""
    gc.unfreeze()
    gc.set_threshold(*thresholds)
