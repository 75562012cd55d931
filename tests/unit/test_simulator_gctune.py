"""The opt-in garbage collector tuning: freeze while the fleet grows, then put it all back."""

from __future__ import annotations

import gc

from opamp_operator.simulator import gctune


async def test_tune_freeze_and_restore() -> None:
    before = gc.get_threshold()
    calls = iter([True, False])
    kept = [[object()] for _ in range(100)]  # some tracked containers to freeze
    old = gctune.tune()
    try:
        assert old == before
        assert gc.get_threshold()[0] > before[0]
        await gctune.freeze_while(lambda: next(calls), every=0.01)
        assert gc.get_freeze_count() >= len(kept)
    finally:
        gctune.restore(old)
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before
