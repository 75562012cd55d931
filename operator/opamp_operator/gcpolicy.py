"""The process's collector policy: freeze the long-lived heap once the fleet has settled.

A full collection walks every object the collector tracks: at 10,000 agents that took up
to 1.2 s, twice a minute (docs/benchmarks.md), stalling every agent and REST caller behind
it. Almost all of those objects live as long as their agent: records, sessions, sockets,
websockets protocol state. `gc.freeze()` moves everything alive into a generation the
collector never walks, so later collections see only what was allocated since.

How (each step measured, docs/benchmarks.md, "collector policy"):
- freeze once the fleet has settled (fewer sessions opened in the last settle window than
  would thaw a freeze: a ramp or reconnect storm is over, trickle churn does not hold it
  off), with a young collection first (`gc.collect(1)`: milliseconds), not a full one (its
  own full collection took 3.8 s at 10,000 agents);
- then freeze again every check (a young collection and a list splice), so what survives
  the young generations joins the frozen heap within seconds: no full collection ever walks
  more than a few seconds of growth. Freezing only after the collector's own full
  collections (the previous policy) left the first one after the settle at full cost: a
  498 ms pause during REST requests at 10,000 agents;
- thaw (unfreeze, one full collection) when the frozen heap may hold enough garbage: any
  cyclic garbage that outlived the young generations before a freeze stays until then.
  Bounded by the memory in use growing by a quarter since the freeze (CPython's own trigger
  for a full collection is the long-lived heap growing by a quarter) and, as a backstop, by
  sessions ended since it (`thaw_churn` of the fleet, at least `min_thaw_sessions`; new
  agents only grow the heap and refreezing takes them: counting them thawed at once when
  1,000 agents joined a frozen fleet). An ended session leaves nothing cyclic
  (transport/cycles.py); before that each left ~7 objects the frozen heap kept, and the
  default budget (0.1 of the fleet) thawed every 1,000 sessions at 10,000 agents, a full
  collection of 0.6-1.1 s each time (run H, docs/benchmarks.md).

Memory in use is pymalloc's count of allocated blocks (`sys.getallocatedblocks()`: it walks
the pools, 9 ms for 5 million blocks here), not RSS: RSS seldom shrinks after a collection,
so a baseline taken from it would ratchet up by a quarter each cycle. Nothing here calls
`gc.get_freeze_count()`: it walks the whole frozen list (17 ms for half a million objects
here; the first freeze that read it took 171 ms at 10,000 agents).

`GcPolicy` is the decision, pure and clock-driven (tested without a collector);
`run_gc_policy` applies it every few seconds and `install_pause_metrics` times collections.
"""

from __future__ import annotations

import asyncio
import enum
import gc
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import metrics
from .config import CollectorSettings

log = logging.getLogger(__name__)


THAW_GROWTH = 0.25  # memory in use grown by this much since the freeze: thaw


class Action(enum.Enum):
    NONE = "none"
    FREEZE = "freeze"  # the first after a settle: young collection, then freeze
    REFREEZE = "refreeze"  # frozen already: young collection, freeze the survivors
    THAW = "thaw"  # unfreeze and collect everything


@dataclass(frozen=True, slots=True)
class Reading:
    """What the policy looks at, read every check."""

    now: float
    opened: int  # sessions opened since start
    closed: int  # sessions ended since start
    agents: int  # known now
    blocks: int = 0  # memory blocks in use now (sys.getallocatedblocks); 0: no memory bound


class GcPolicy:
    """When to freeze, refreeze and thaw, from readings of the fleet, the memory and a clock.

    - thawed: when fewer sessions opened over the last `freeze_settle_seconds` than the thaw
      budget (below), and there are agents, FREEZE;
    - frozen: THAW once the sessions ended since the freeze (agents that left or
      reconnected: what they leave is the garbage a frozen heap keeps) reach the budget,
      `max(thaw_churn * agents at the freeze, min_thaw_sessions)`, or the blocks in use
      grew by THAW_GROWTH since the freeze; else REFREEZE.
    A thaw starts a new settle window: under steady churn the heap is frozen again one window
    after each thaw. Invariant: `frozen` is true exactly from a FREEZE answer until the next
    THAW answer.
    """

    def __init__(self, settings: CollectorSettings, first: Reading) -> None:
        self.settings = settings
        self.frozen = False
        self.reason = ""  # why the last THAW
        self._window = first  # thawed: where the settle window began; frozen: the freeze
        self._budget = 0

    def decide(self, reading: Reading) -> Action:
        if self.frozen:
            return self._frozen(reading)
        settle = self.settings.freeze_settle_seconds
        if settle is None or reading.now - self._window.now < settle:
            return Action.NONE
        opened = reading.opened - self._window.opened
        budget = self._thaw_budget(reading.agents)
        if opened >= budget or reading.agents == 0:
            self._window = reading  # still ramping (or nothing to freeze): a new window
            return Action.NONE
        self.frozen, self._window, self._budget = True, reading, budget
        return Action.FREEZE

    def _frozen(self, reading: Reading) -> Action:
        at_freeze = self._window
        ended = reading.closed - at_freeze.closed
        if ended >= self._budget:
            self.reason = f"{ended} sessions ended since the freeze"
        elif at_freeze.blocks and reading.blocks > at_freeze.blocks * (1 + THAW_GROWTH):
            grown = reading.blocks / at_freeze.blocks - 1
            self.reason = f"memory in use {grown:+.0%} since the freeze"
        else:
            return Action.REFREEZE
        self.frozen, self._window = False, reading
        return Action.THAW

    def _thaw_budget(self, agents: int) -> int:
        return max(round(self.settings.thaw_churn * agents), self.settings.min_thaw_sessions)


def pause_collector() -> Callable[[], None]:
    """Turn automatic collection off; return what turns it back on as it was (the operator
    also runs in-process in tests, whose collector must be left as found)."""
    enabled = gc.isenabled()
    gc.disable()
    return gc.enable if enabled else _leave_disabled


def _leave_disabled() -> None:
    pass


def apply(action: Action) -> int:
    """Carry out one decision on the process's collector and count it; return how many
    objects the collection found unreachable."""
    if action in (Action.FREEZE, Action.REFREEZE):
        collected = gc.collect(1)  # the young garbage: freezing it would keep it
        gc.freeze()
    elif action is Action.THAW:
        gc.unfreeze()
        collected = gc.collect()
    else:
        return 0
    metrics.gc_policy_actions.labels(action.value).inc()
    metrics.gc_heap_frozen.set(action is not Action.THAW)
    return collected


def read_blocks() -> int:
    """Memory blocks pymalloc has allocated now (every live small object and buffer)."""
    return sys.getallocatedblocks()


async def run_gc_policy(
    policy: GcPolicy,
    read: Callable[[], Reading],
    *,
    interval: float = 5.0,
) -> None:
    """Ask `policy` every `interval` seconds and apply its answer; runs until cancelled."""
    try:
        while True:
            await asyncio.sleep(interval)
            reading = read()
            action = policy.decide(reading)
            if action is Action.NONE:
                continue
            started = time.perf_counter()
            collected = apply(action)
            if action is not Action.REFREEZE:
                log.info(
                    "collector: %s at %d agents in %.0f ms (%d memory blocks in use, %d "
                    "objects collected)%s",
                    action.value, reading.agents, (time.perf_counter() - started) * 1000,
                    reading.blocks, collected,
                    f": {policy.reason}" if action is Action.THAW else "",
                )  # fmt: skip
    finally:
        if policy.frozen:  # stopping (also in-process in tests): leave the heap as found
            gc.unfreeze()
            metrics.gc_heap_frozen.set(0)


class PauseTimer:
    """A `gc.callbacks` hook: every collection's pause into opamp_gc_pause_seconds."""

    def __init__(self) -> None:
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            elapsed = time.perf_counter() - self._started
            metrics.gc_pause_seconds.labels(str(info["generation"])).observe(elapsed)


def install_pause_metrics() -> PauseTimer:
    """Time every collection from now on (two perf_counter() calls per collection)."""
    timer = PauseTimer()
    gc.callbacks.append(timer)
    return timer


def remove_pause_metrics(timer: PauseTimer) -> None:
    if timer in gc.callbacks:
        gc.callbacks.remove(timer)
