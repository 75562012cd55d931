"""Wait for what a test expects to become true: the one polling helper of the suite.

`eventually` polls a probe (sync or async) from async tests; `eventually_sync` polls a sync
probe from sync tests. Both return the first truthy value the probe gives, and fail after
`within` seconds with an AssertionError naming what was awaited and the last value seen, so a
timeout says what the system looked like, not only that it did not get there.

A probe that raises fails the wait at once (the exception is the answer), unless it is one of
`ignoring`: for a server that is still starting, say `ignoring=(aiohttp.ClientError,)`.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

T = TypeVar("T")

_NOTHING = object()  # "the probe has not answered yet", distinct from any value it returns


def _timed_out(what: str, within: float, last: object) -> AssertionError:
    seen = "no answer (every probe raised)" if last is _NOTHING else repr(last)
    if len(seen) > 2000:  # a whole CR or /metrics page: the start says enough
        seen = seen[:2000] + "..."
    return AssertionError(f"timed out after {within}s waiting for {what}; last seen: {seen}")


@overload
async def eventually(
    what: str,
    probe: Callable[[], Awaitable[T | None]],
    *,
    within: float = 30.0,
    every: float = 0.1,
    ignoring: tuple[type[BaseException], ...] = (),
) -> T: ...


@overload
async def eventually(
    what: str,
    probe: Callable[[], T | None],
    *,
    within: float = 30.0,
    every: float = 0.1,
    ignoring: tuple[type[BaseException], ...] = (),
) -> T: ...


async def eventually(
    what: str,
    probe: Callable[[], object],
    *,
    within: float = 30.0,
    every: float = 0.1,
    ignoring: tuple[type[BaseException], ...] = (),
) -> object:
    """Poll `probe` every `every` seconds until it returns something truthy; return that."""
    deadline = time.monotonic() + within
    last: object = _NOTHING
    while True:
        try:
            last = probe()
            if inspect.isawaitable(last):
                last = await last
        except ignoring as error:
            last = error
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            raise _timed_out(what, within, last)
        await asyncio.sleep(every)


def eventually_sync(
    what: str,
    probe: Callable[[], T | None],
    *,
    within: float = 30.0,
    every: float = 0.1,
    ignoring: tuple[type[BaseException], ...] = (),
) -> T:
    """`eventually` for sync tests: blocks the thread between probes."""
    deadline = time.monotonic() + within
    last: object = _NOTHING
    while True:
        try:
            result = probe()
        except ignoring as error:
            last = error
        else:
            if result:
                return result
            last = result
        if time.monotonic() >= deadline:
            raise _timed_out(what, within, last)
        time.sleep(every)


async def grows(
    what: str,
    read: Callable[[], Awaitable[float]],
    by: float = 1,
    *,
    since: float | None = None,
    within: float = 30.0,
) -> float:
    """Wait until the counter `read` returns grew by `by` from `since` (default: its value
    now; pass one read before causing what the counter counts); return it.

    For "the component looked": a counter it bumps on each look (a loop's passes, a
    failed attempt, a refusal) proves it ran, where a sleep only hopes it did."""
    start = await read() if since is None else since

    async def done() -> float | None:
        now = await read()
        return now if now >= start + by else None

    return await eventually(f"{what} (+{by:g} from {start:g})", done, within=within)


async def rounds_pass(
    loop: str, passes: Callable[[], Awaitable[float]], rounds: int, *, within: float = 60.0
) -> None:
    """Wait until the operator's periodic `loop` completed `rounds` more rounds
    (`opamp_loop_passes_total{loop}`, read by `passes`): instead of sleeping for "nothing
    happened", proof that the component looked and still did nothing."""
    await grows(f"rounds of the {loop} loop", passes, rounds, within=within)


def in_process_passes(loop: str) -> Callable[[], Awaitable[float]]:
    """`opamp_loop_passes_total{loop}` of this process (components run in-process)."""
    # Imported here, not at the top: the official Python client's child process imports
    # this module and must not load the operator's protobuf modules (both register
    # `anyvalue.proto` in protobuf's default pool).
    from opamp_operator.metrics import REGISTRY

    async def read() -> float:
        value = REGISTRY.get_sample_value("opamp_loop_passes_total", {"loop": loop})
        return value or 0.0

    return read
