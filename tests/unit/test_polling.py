"""tests/support/polling.py: the first truthy answer wins; a timeout says what and what it saw."""

from __future__ import annotations

import itertools
import time
from collections.abc import Awaitable, Callable

import pytest

from tests.support.polling import eventually, eventually_sync, grows


async def test_returns_the_first_truthy_value_of_an_async_probe() -> None:
    answers = iter([None, {}, {"phase": "Online"}, {"phase": "later"}])

    async def probe() -> dict[str, str] | None:
        return next(answers)

    assert await eventually("the CR", probe, every=0) == {"phase": "Online"}


async def test_sync_probes_work_from_async_tests() -> None:
    counter = itertools.count()
    assert await eventually("three polls", lambda: next(counter) >= 3, every=0) is True
    assert next(counter) == 4  # polled 0..3, then stopped


async def test_timeout_names_what_and_the_last_value_seen() -> None:
    started = time.monotonic()
    with pytest.raises(AssertionError) as failure:
        await eventually("the agent Online", lambda: None, within=0.2)
    assert time.monotonic() - started >= 0.2
    assert "waiting for the agent Online; last seen: None" in str(failure.value)

    values = iter(range(100))
    with pytest.raises(AssertionError, match=r"waiting for a count; last seen: 0"):
        await eventually("a count", lambda: 0 * next(values), within=0.05, every=0.01)


async def test_a_probe_that_raises_fails_at_once_unless_ignored() -> None:
    calls = itertools.count()

    def refused() -> bool:
        next(calls)
        raise ConnectionRefusedError("not up yet")

    with pytest.raises(ConnectionRefusedError):
        await eventually("the server", refused)
    assert next(calls) == 1

    with pytest.raises(AssertionError, match=r"last seen: ConnectionRefusedError\('not up yet'\)"):
        await eventually("the server", refused, within=0.05, ignoring=(OSError,))

    flaky = iter(["starting", "starting", "up"])

    def starting() -> str:
        answer = next(flaky)
        if answer == "starting":
            raise OSError(answer)
        return answer

    assert await eventually("the server", starting, every=0, ignoring=(OSError,)) == "up"


def test_the_sync_variant_polls_and_times_out_the_same_way() -> None:
    answers = iter([0, 0, 7])
    assert eventually_sync("seven", lambda: next(answers), every=0) == 7
    with pytest.raises(AssertionError, match=r"waiting for Established; last seen: \[\]"):
        eventually_sync("Established", list, within=0.05, every=0.01)
    with pytest.raises(AssertionError) as cut:  # a long last value is cut short
        eventually_sync("a page", NotYet, within=0.01)
    message = str(cut.value)
    assert "last seen: <xxx" in message and len(message) < 2100 and message.endswith("...")


class NotYet:
    """A falsy answer with a long repr (as a whole CR or a /metrics page would have)."""

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "<" + "x" * 5000 + ">"


async def test_grows_waits_for_the_counter_to_move_from_where_it_was() -> None:
    readings = iter([5.0, 5.0, 6.0, 7.0])

    async def counter() -> float:
        return next(readings)

    # Counted from the first reading (5), not from zero: 7 is the first that is +2.
    assert await grows("passes", counter, 2, within=1) == 7.0
    with pytest.raises(AssertionError, match=r"waiting for flushes \(\+1 from 3\)"):
        await grows("flushes", _constant(3.0), within=0.05)


def _constant(value: float) -> Callable[[], Awaitable[float]]:
    async def read() -> float:
        return value

    return read
