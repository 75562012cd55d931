from __future__ import annotations

import random

from opamp_operator.fleet.deadlines import DeadlineScheduler


def test_moved_deadline_is_not_fired_early() -> None:
    scheduler = DeadlineScheduler()
    scheduler.set("a", 10)
    scheduler.set("a", 20)
    assert scheduler.pop_due(15) == []
    assert scheduler.pop_due(20) == ["a"]
    assert scheduler.pop_due(100) == []


def test_earlier_deadline_fires_early_and_cancel_removes() -> None:
    scheduler = DeadlineScheduler()
    scheduler.set("a", 20)
    scheduler.set("a", 5)
    scheduler.set("b", 6)
    scheduler.cancel("b")
    assert scheduler.pop_due(5) == ["a"]
    assert scheduler.pop_due(50) == []


def test_matches_a_naive_model_under_random_operations() -> None:
    rng = random.Random(7)
    scheduler, model = DeadlineScheduler(), {}
    now = 0.0
    for _ in range(5000):
        key = f"k{rng.randrange(50)}"
        action = rng.random()
        if action < 0.6:
            model[key] = now + rng.uniform(0, 30)
            scheduler.set(key, model[key])
        elif action < 0.7:
            model.pop(key, None)
            scheduler.cancel(key)
        else:
            now += rng.uniform(0, 5)
            expected = sorted(k for k, d in model.items() if d <= now)
            assert sorted(scheduler.pop_due(now)) == expected
            for k in expected:
                del model[k]
    # Heap entries stay bounded by the number of keys (one live entry each, plus stale ones).
    assert len(scheduler._heap) <= 3 * 50
