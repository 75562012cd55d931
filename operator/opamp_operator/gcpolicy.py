"""The process's collector policy: freeze the long-lived heap once the fleet has settled.

A full collection walks every object the collector tracks: at 10,000 agents that took up
to 1.2 s, twice a minute (docs/benchmarks.md), stalling every agent and REST caller behind
it. Almost all of those objects live as long as their agent: records, sessions, sockets,
websockets protocol state. `gc.freeze()` moves everything alive into a generation the
collector never walks, so later collections see only what was allocated since.

The price: cyclic garbage among frozen objects is not freed until an unfreeze. Objects
without cycles still go at once (reference counting ignores the freeze); what leaks are the
cycles of agents that leave (a closed connection's protocol, tasks and futures). So after a
bounded amount of churn (sessions opened since the freeze, a fraction of the fleet frozen
with) the policy unfreezes and collects once, and freezes again when the fleet is quiet.
The first freeze at 10,000 agents, done with its own `gc.collect()`, took 3.8 s on a busy
machine, and a heap frozen before the CRs were all written kept growing into full
collections of 1.8 s (docs/benchmarks.md): hence freezing right after the collector's own
full collections, again after each one.

`GcPolicy` is the decision, pure and clock-driven (tested without a collector);
`run_gc_policy` applies it every few seconds and `install_pause_metrics` times collections.
"""

from __future__ import annotations

import asyncio
import enum
import gc
import logging
import time
from collections.abc import Callable
from typing import Any

from . import metrics
from .config import CollectorSettings

log = logging.getLogger(__name__)


class Action(enum.Enum):
    NONE = "none"
    FREEZE = "freeze"  # collect, then freeze what survived
    THAW = "thaw"  # unfreeze and collect everything


class GcPolicy:
    """When to freeze and when to thaw, from the fleet's session counter, the count of full
    collections so far, and a clock.

    Freezing rides on the collector's own full collections, so the policy adds no pause of
    its own but the thaw: right after a full collection nothing long-lived is garbage, and
    freezing then (after a young collection) takes the survivors out of every later one.
    - thawed: once no session opened for `freeze_settle_seconds` (a ramp or a reconnect
      storm is over), FREEZE after the next full collection;
    - frozen: FREEZE again after each full collection (what the fleet grew since, e.g. its
      CRs' bodies, joins the frozen heap, so no full collection walks more than the growth
      since the last one); THAW after `max(thaw_churn * agents at the first freeze,
      min_thaw_sessions)` sessions opened since it.
    Invariant: `frozen` is true exactly from a FREEZE answer until the next THAW answer.
    """

    def __init__(
        self, settings: CollectorSettings, now: float, sessions: int, full_collections: int = 0
    ) -> None:
        self.settings = settings
        self.frozen = False
        self._quiet_since = now
        self._sessions = sessions  # the counter when it last moved (thawed) or at the freeze
        self._full = full_collections
        self._thaw_after = 0

    def decide(self, now: float, sessions: int, agents: int, full_collections: int) -> Action:
        """`sessions`: opened since start; `agents`: known now; `full_collections`: so far."""
        collected, self._full = full_collections != self._full, full_collections
        if self.frozen:
            if sessions - self._sessions >= self._thaw_after:
                self.frozen = False
                self._sessions, self._quiet_since = sessions, now
                return Action.THAW
            return Action.FREEZE if collected else Action.NONE
        if sessions != self._sessions:
            self._sessions, self._quiet_since = sessions, now
            return Action.NONE
        settle = self.settings.freeze_settle_seconds
        if settle is None or now - self._quiet_since < settle or agents == 0 or not collected:
            return Action.NONE
        self.frozen = True
        minimum = self.settings.min_thaw_sessions
        self._thaw_after = max(round(self.settings.thaw_churn * agents), minimum)
        return Action.FREEZE


def pause_collector() -> Callable[[], None]:
    """Turn automatic collection off; return what turns it back on as it was (the operator
    also runs in-process in tests, whose collector must be left as found)."""
    enabled = gc.isenabled()
    gc.disable()
    return gc.enable if enabled else _leave_disabled


def _leave_disabled() -> None:
    pass


def full_collections() -> int:
    """Full (generation 2) collections in this process so far."""
    return int(gc.get_stats()[2]["collections"])


def apply(action: Action) -> int:
    """Carry out one decision on the process's collector, count it; return how many objects
    are frozen now (gc.get_freeze_count() walks the frozen list: called once per action)."""
    if action is Action.FREEZE:
        gc.collect(1)  # the young garbage since the full collection: freezing it would keep it
        gc.freeze()
    elif action is Action.THAW:
        gc.unfreeze()
        gc.collect()
    else:
        return 0
    metrics.gc_policy_actions.labels(action.value).inc()
    frozen = gc.get_freeze_count()
    metrics.gc_frozen_objects.set(frozen)
    return frozen


async def run_gc_policy(
    policy: GcPolicy,
    sessions: Callable[[], int],
    agents: Callable[[], int],
    *,
    interval: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Ask `policy` every `interval` seconds and apply its answer; runs until cancelled."""
    try:
        while True:
            await asyncio.sleep(interval)
            action = policy.decide(clock(), sessions(), agents(), full_collections())
            if action is not Action.NONE:
                started = time.perf_counter()
                frozen = apply(action)
                log.info(
                    "collector: %s at %d agents in %.0f ms (%d objects frozen)",
                    action.value, agents(), (time.perf_counter() - started) * 1000, frozen,
                )  # fmt: skip
    finally:
        if policy.frozen:  # stopping (also in-process in tests): leave the heap as found
            gc.unfreeze()
            metrics.gc_frozen_objects.set(0)


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
