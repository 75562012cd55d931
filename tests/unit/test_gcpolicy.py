"""The collector policy's decisions (freeze once settled, thaw after churn), and its metrics."""

from __future__ import annotations

import asyncio
import gc

import pytest

from opamp_operator import metrics
from opamp_operator.config import CollectorSettings, ConfigError
from opamp_operator.gcpolicy import (
    Action,
    GcPolicy,
    Reading,
    install_pause_metrics,
    pause_collector,
    read_blocks,
    remove_pause_metrics,
    run_gc_policy,
)

SETTINGS = CollectorSettings(freeze_settle_seconds=60.0, thaw_churn=0.1, min_thaw_sessions=100)


def at(now: float, opened: int, agents: int, blocks: int = 0, closed: int = 0) -> Reading:
    return Reading(now, opened, closed, agents, blocks)


def test_freezes_once_a_settle_window_opened_fewer_sessions_than_would_thaw() -> None:
    policy = GcPolicy(SETTINGS, at(0.0, 0, 0))
    assert policy.decide(at(30.0, 500, 500)) is Action.NONE  # inside the first window
    assert policy.decide(at(60.0, 500, 500)) is Action.NONE  # 500 opened >= 100: ramping
    assert policy.decide(at(100.0, 540, 540)) is Action.NONE  # a new window began at 60
    assert not policy.frozen
    assert policy.decide(at(120.0, 590, 590)) is Action.FREEZE  # 90 opened since 60 < 100
    assert policy.frozen


def test_frozen_it_refreezes_every_check_without_waiting_for_a_full_collection() -> None:
    policy = GcPolicy(SETTINGS, at(0.0, 0, 10))
    assert policy.decide(at(60.0, 0, 10)) is Action.FREEZE
    assert policy.decide(at(65.0, 5, 10)) is Action.REFREEZE
    assert policy.decide(at(70.0, 50, 10)) is Action.REFREEZE
    assert policy.frozen


def test_thaws_after_a_tenth_of_the_fleet_churned_then_freezes_again_a_window_later() -> None:
    policy = GcPolicy(SETTINGS, at(0.0, 10_000, 10_000))
    assert policy.decide(at(60.0, 10_000, 10_000)) is Action.FREEZE
    assert policy.decide(at(70.0, 10_999, 10_000, closed=999)) is Action.REFREEZE
    assert policy.decide(at(75.0, 11_000, 10_000, closed=1000)) is Action.THAW
    assert not policy.frozen and "1000 sessions ended" in policy.reason
    assert policy.decide(at(130.0, 11_500, 10_000, closed=1500)) is Action.NONE  # 60 s window
    # steady churn (500 a minute, below the 1,000 that thaw): frozen again
    assert policy.decide(at(135.0, 11_500, 10_000, closed=1500)) is Action.FREEZE


def test_new_agents_joining_a_frozen_fleet_are_refrozen_not_a_reason_to_thaw() -> None:
    policy = GcPolicy(SETTINGS, at(0.0, 8800, 8800))
    assert policy.decide(at(60.0, 8800, 8800)) is Action.FREEZE
    assert policy.decide(at(65.0, 9800, 9800)) is Action.REFREEZE  # 1,000 joined, none left
    assert policy.frozen


def test_a_reconnect_storm_holds_the_freeze_off_until_it_is_over() -> None:
    policy = GcPolicy(SETTINGS, at(0.0, 0, 10_000))
    for minute in range(1, 4):  # 2,000 sessions a minute: above the budget of 1,000
        assert policy.decide(at(60.0 * minute, 2000 * minute, 10_000)) is Action.NONE
    assert policy.decide(at(240.0, 6000, 10_000)) is Action.FREEZE


def test_thaws_when_memory_in_use_grew_by_a_quarter_since_the_freeze() -> None:
    policy = GcPolicy(SETTINGS, at(0.0, 0, 10, blocks=1000))
    assert policy.decide(at(60.0, 0, 10, blocks=1000)) is Action.FREEZE
    assert policy.decide(at(65.0, 0, 10, blocks=1250)) is Action.REFREEZE
    assert policy.decide(at(70.0, 0, 10, blocks=1251)) is Action.THAW
    assert "+25%" in policy.reason
    # the next freeze measures from its own reading: a thaw does not ratchet the bound
    assert policy.decide(at(130.0, 0, 10, blocks=1100)) is Action.FREEZE
    assert policy.decide(at(135.0, 0, 10, blocks=1300)) is Action.REFREEZE


def test_small_fleets_thaw_after_the_minimum_and_empty_ones_never_freeze() -> None:
    policy = GcPolicy(SETTINGS, at(0.0, 0, 0))
    assert policy.decide(at(100.0, 0, 0)) is Action.NONE
    assert policy.decide(at(160.0, 10, 10)) is Action.FREEZE
    assert policy.decide(at(170.0, 109, 10, closed=99)) is Action.REFREEZE
    assert policy.decide(at(171.0, 110, 10, closed=100)) is Action.THAW


def test_off_never_freezes() -> None:
    policy = GcPolicy(CollectorSettings(freeze_settle_seconds=None), at(0.0, 0, 0))
    assert policy.decide(at(10.0**6, 0, 10_000)) is Action.NONE


def test_settings_are_validated() -> None:
    with pytest.raises(ConfigError):
        CollectorSettings(thaw_churn=0)
    with pytest.raises(ConfigError):
        CollectorSettings(freeze_settle_seconds=-1)


def action_count(action: str) -> float:
    labels = {"action": action}
    return metrics.REGISTRY.get_sample_value("opamp_gc_policy_actions_total", labels) or 0


async def test_runner_freezes_then_refreezes_survivors_without_a_full_collection() -> None:
    quick = CollectorSettings(freeze_settle_seconds=0.0)
    clock = iter(float(i) for i in range(10_000))
    policy = GcPolicy(quick, Reading(next(clock), 1, 0, 1, read_blocks()))

    def reading() -> Reading:
        return Reading(next(clock), 1, 0, 1, read_blocks())

    async def next_refreeze() -> None:
        before = action_count("refreeze")
        for _ in range(400):
            await asyncio.sleep(0.005)
            if action_count("refreeze") > before:
                return
        raise AssertionError("no refreeze")

    resume = pause_collector()  # only the policy's own collections from here
    task = asyncio.create_task(run_gc_policy(policy, reading, interval=0.001))
    try:
        await next_refreeze()
        assert policy.frozen and action_count("freeze") >= 1
        assert metrics.REGISTRY.get_sample_value("opamp_gc_heap_frozen") == 1
        frozen, full = gc.get_freeze_count(), gc.get_stats()[2]["collections"]
        survivors = [[n] for n in range(1000)]  # young, alive: the next refreeze takes them
        await next_refreeze()
        assert gc.get_freeze_count() >= frozen + len(survivors)
        assert gc.get_stats()[2]["collections"] == full
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        resume()
    assert gc.get_freeze_count() == 0
    assert metrics.REGISTRY.get_sample_value("opamp_gc_heap_frozen") == 0


def test_the_stop_pauses_automatic_collection_and_leaves_the_collector_as_found() -> None:
    assert gc.isenabled()
    resume = pause_collector()
    try:
        assert not gc.isenabled()
    finally:
        resume()
    assert gc.isenabled()
    gc.disable()  # a process that had it off keeps it off
    try:
        pause_collector()()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_pause_metrics_observe_every_collection_by_generation() -> None:
    def count(generation: str) -> float:
        labels = {"generation": generation}
        return metrics.REGISTRY.get_sample_value("opamp_gc_pause_seconds_count", labels) or 0

    before = count("2")
    timer = install_pause_metrics()
    try:
        gc.collect()
        gc.collect()
    finally:
        remove_pause_metrics(timer)
    gc.collect()  # not counted any more
    assert count("2") == before + 2
