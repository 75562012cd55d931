"""The writer's coalescing set of pending CR updates, and the write pacing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from opamp_operator.fleet.events import PhaseChanged
from opamp_operator.fleet.model import AgentPhase
from opamp_operator.kube.mirror.pending import MAX_TRANSITIONS_PER_AGENT, PendingUpdates
from opamp_operator.kube.writes.pace import WriteLimiter

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def change(agent: str, current: AgentPhase = AgentPhase.OFFLINE) -> PhaseChanged:
    return PhaseChanged(agent, AgentPhase.ONLINE, current, "heartbeat_timeout", T0)


def test_marks_coalesce_and_urgent_goes_first() -> None:
    pending = PendingUpdates(capacity=10)
    pending.mark("refresh-me", urgent=False)
    for _ in range(3):
        pending.mark("a")
    pending.mark("b")
    assert len(pending) == 3
    assert [pending.take(0.0), pending.take(0.0), pending.take(0.0)] == ["a", "b", "refresh-me"]
    assert pending.take(0.0) is None


def test_refresh_mark_is_promoted_by_an_urgent_one() -> None:
    pending = PendingUpdates(capacity=10)
    pending.mark("x", urgent=False)
    pending.mark("y")
    pending.mark("x")
    assert [pending.take(0.0), pending.take(0.0)] == ["y", "x"]


def test_full_set_drops_and_asks_for_a_resync() -> None:
    pending = PendingUpdates(capacity=2)
    assert pending.mark("a") and pending.mark("b")
    assert pending.mark("a")  # already there: coalesced, not dropped
    assert not pending.mark("c")
    assert (pending.dropped, pending.overflowed) == (1, True)


def test_an_agent_in_flight_is_not_taken_twice() -> None:
    pending = PendingUpdates(capacity=10)
    pending.mark("a")
    assert pending.take(0.0) == "a"
    pending.mark("a")  # changed again while being written
    assert pending.take(0.0) is None
    pending.succeeded("a")
    assert pending.take(0.0) == "a"


def test_failures_back_off_exponentially_up_to_the_cap() -> None:
    pending = PendingUpdates(capacity=10)
    pending.mark("a")
    delays = []
    now = 0.0
    for _ in range(8):
        assert pending.take(now) == "a"
        _, delay = pending.failed("a", now, max_delay=10.0)
        delays.append(delay)
        assert pending.take(now) is None  # waits for its turn...
        pending.mark("a")  # ...even when marked again
        assert pending.take(now) is None
        now += delay
    assert delays[0] < delays[1] < delays[2] < delays[3]
    assert all(delay <= 12.0 for delay in delays)
    assert pending.take(now) == "a"
    pending.succeeded("a")
    assert not pending.busy


def test_transitions_are_kept_per_agent_and_bounded() -> None:
    pending = PendingUpdates(capacity=10)
    events = [change("a") for _ in range(MAX_TRANSITIONS_PER_AGENT + 2)]
    for event in events:
        pending.add_transition(event)
    assert len(pending) == 1
    assert len(pending.transitions("a")) == MAX_TRANSITIONS_PER_AGENT
    assert pending.transitions_dropped == 2
    for event in pending.transitions("a"):
        pending.transition_done("a", event)
    assert pending.transitions("a") == []


async def test_write_limiter_paces_concurrent_callers() -> None:
    limiter = WriteLimiter(rate=50)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.gather(*(limiter.acquire() for _ in range(75)))
    # A burst of 50 is free, the other 25 come at 50/s: about half a second.
    assert 0.4 <= loop.time() - started < 1.0
