"""The one backoff type (`opamp_operator.backoff`) and reading Retry-After.

Moved here from the simulator's tests when the simulator's backoff became the operator's.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from opamp_operator.backoff import NO_JITTER, UP_TO_A_FIFTH_LATER, Backoff, parse_retry_after


def test_backoff_ceiling_doubles_up_to_the_maximum() -> None:
    backoff = Backoff(initial=0.5, maximum=30.0)
    assert [backoff.ceiling(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert backoff.ceiling(0) == 0.5
    assert backoff.ceiling(10_000) == 30.0  # no overflow after a long outage


def test_backoff_delays_are_jittered_within_half_to_full_ceiling() -> None:
    backoff = Backoff(initial=1.0, maximum=8.0)
    rng = random.Random(3)
    for failures in range(1, 8):
        ceiling = backoff.ceiling(failures)
        delays = [backoff.delay(failures, rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > ceiling / 4  # actually spread out


def test_backoff_is_repeatable_with_a_seed() -> None:
    backoff = Backoff()
    first = [backoff.delay(n, random.Random(9)) for n in range(1, 6)]
    second = [backoff.delay(n, random.Random(9)) for n in range(1, 6)]
    assert first == second


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"initial": 0}, "initial"), ({"initial": 5, "maximum": 1}, "maximum"),
     ({"multiplier": 0.5}, "multiplier")],
)  # fmt: skip
def test_backoff_rejects_nonsense(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Backoff(**kwargs)  # type: ignore[arg-type]  # some cases pass a float where a tuple goes


def test_retry_after_seconds_or_http_date() -> None:
    now = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC).timestamp()
    later = format_datetime(datetime(2026, 3, 1, 12, 0, 7, tzinfo=UTC), usegmt=True)
    earlier = format_datetime(datetime(2026, 3, 1, 11, 0, 0, tzinfo=UTC), usegmt=True)
    assert parse_retry_after("12", now) == 12.0
    assert parse_retry_after(" 3 ", now) == 3.0
    assert parse_retry_after(later, now) == pytest.approx(7.0)
    assert parse_retry_after(earlier, now) == 0.0
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("", now) is None
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("-5", now) is None


def test_jitter_is_a_range_of_the_ceiling() -> None:
    later = Backoff(initial=0.5, maximum=10.0, jitter=UP_TO_A_FIFTH_LATER)
    rng = random.Random(4)
    for failures in range(1, 12):
        ceiling = later.ceiling(failures)
        delays = [later.delay(failures, rng) for _ in range(100)]
        assert all(ceiling <= d <= ceiling * 1.2 for d in delays)
    plain = Backoff(initial=1.0, maximum=8.0, jitter=NO_JITTER)
    assert [plain.delay(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 8.0, 8.0]


def test_up_to_starts_at_the_cap_when_the_cap_is_below_the_initial_delay() -> None:
    assert Backoff.up_to(0.2, initial=1.0).delay(1) == 0.2
    assert Backoff.up_to(30.0, initial=1.0).delay(3) == 4.0


@pytest.mark.parametrize("jitter", [(0.0, 1.0), (1.2, 1.0)])
def test_backoff_rejects_a_jitter_range_that_is_empty_or_reaches_zero(
    jitter: tuple[float, float],
) -> None:
    with pytest.raises(ValueError, match="jitter"):
        Backoff(jitter=jitter)
