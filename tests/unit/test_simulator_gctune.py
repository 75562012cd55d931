"""The opt-in garbage collector tuning freezes the heap while the fleet grows, then lets go."""

from __future__ import annotations

import gc

from opamp_operator.simulator import gctune


async def test_freeze_while_growing_then_unfreeze() -> None:
    calls = iter([True, False])
    kept = [[object()] for _ in range(100)]  # some tracked containers to freeze
    try:
        await gctune.freeze_while(lambda: next(calls), every=0.01)
        assert gc.get_freeze_count() >= len(kept)
    finally:
        gctune.unfreeze()
    assert gc.get_freeze_count() == 0
