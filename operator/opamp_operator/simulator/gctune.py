"""Keep Python's cyclic garbage collector from pausing a big fleet (opt-in, process-wide).

While thousands of connections open, the heap grows by a quarter again and
again, and each time the collector rescans every long-lived object: pauses of
hundreds of milliseconds that show up as late heartbeats. Freezing what is
alive while the fleet ramps up moves those objects out of the collector's
sight (gc.freeze); afterwards the heap is steady and collections are cheap.

Process-wide, so only for a process that does nothing else (the `simulate`
command): the few garbage cycles alive at a freeze are kept until the end of
the run, when everything is unfrozen again.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from typing import Final

_FREEZE_EVERY_S: Final = 1.0


async def freeze_while(growing: Callable[[], bool], every: float = _FREEZE_EVERY_S) -> None:
    """Freeze the heap every `every` seconds while `growing()` holds, and once more after."""
    while growing():
        gc.freeze()
        await asyncio.sleep(every)
    gc.freeze()


def unfreeze() -> None:
    """Give frozen objects back to the collector (end of the run)."""
    gc.unfreeze()
