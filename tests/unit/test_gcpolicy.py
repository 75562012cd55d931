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
    full_collections,
    install_pause_metrics,
    pause_collector,
    remove_pause_metrics,
    run_gc_policy,
)

SETTINGS = CollectorSettings(freeze_settle_seconds=60.0, thaw_churn=0.1, min_thaw_sessions=100)


def test_freezes_after_the_first_full_collection_once_no_session_opened_for_a_while() -> None:
    policy = GcPolicy(SETTINGS, now=0.0, sessions=0, full_collections=0)
    assert policy.decide(30.0, sessions=500, agents=500, full_collections=1) is Action.NONE
    assert policy.decide(80.0, sessions=500, agents=500, full_collections=2) is Action.NONE
    assert policy.decide(89.0, sessions=501, agents=501, full_collections=2) is Action.NONE
    assert policy.decide(149.0, sessions=501, agents=501, full_collections=2) is Action.NONE
    assert not policy.frozen  # settled, but no full collection since the last look
    assert policy.decide(154.0, sessions=501, agents=501, full_collections=3) is Action.FREEZE
    assert policy.frozen
    assert policy.decide(500.0, sessions=501, agents=501, full_collections=3) is Action.NONE


def test_frozen_it_freezes_again_after_each_full_collection() -> None:
    policy = GcPolicy(SETTINGS, now=0.0, sessions=0, full_collections=0)
    assert policy.decide(60.0, sessions=0, agents=10, full_collections=1) is Action.FREEZE
    assert policy.decide(65.0, sessions=5, agents=10, full_collections=1) is Action.NONE
    assert policy.decide(70.0, sessions=5, agents=10, full_collections=2) is Action.FREEZE
    assert policy.decide(75.0, sessions=5, agents=10, full_collections=2) is Action.NONE
    assert policy.frozen


def test_thaws_after_a_tenth_of_the_fleet_churned_then_freezes_again_when_quiet() -> None:
    policy = GcPolicy(SETTINGS, now=0.0, sessions=10_000, full_collections=0)
    assert policy.decide(60.0, sessions=10_000, agents=10_000, full_collections=1) is Action.FREEZE
    assert policy.decide(70.0, sessions=10_999, agents=10_000, full_collections=1) is Action.NONE
    assert policy.decide(75.0, sessions=11_000, agents=10_000, full_collections=1) is Action.THAW
    assert not policy.frozen
    assert policy.decide(100.0, sessions=11_000, agents=10_000, full_collections=2) is Action.NONE
    assert policy.decide(135.0, sessions=11_000, agents=10_000, full_collections=3) is Action.FREEZE


def test_small_fleets_thaw_after_the_minimum_and_empty_ones_never_freeze() -> None:
    policy = GcPolicy(SETTINGS, now=0.0, sessions=0, full_collections=0)
    assert policy.decide(100.0, sessions=0, agents=0, full_collections=1) is Action.NONE
    assert policy.decide(100.0, sessions=10, agents=10, full_collections=2) is Action.NONE
    assert policy.decide(160.0, sessions=10, agents=10, full_collections=3) is Action.FREEZE
    assert policy.decide(170.0, sessions=109, agents=10, full_collections=3) is Action.NONE
    assert policy.decide(171.0, sessions=110, agents=10, full_collections=3) is Action.THAW


def test_off_never_freezes() -> None:
    policy = GcPolicy(CollectorSettings(freeze_settle_seconds=None), now=0.0, sessions=0)
    assert policy.decide(10**6, sessions=0, agents=10_000, full_collections=5) is Action.NONE


def test_settings_are_validated() -> None:
    with pytest.raises(ConfigError):
        CollectorSettings(thaw_churn=0)
    with pytest.raises(ConfigError):
        CollectorSettings(freeze_settle_seconds=-1)


async def test_runner_freezes_the_heap_and_leaves_it_unfrozen_when_cancelled() -> None:
    quick = CollectorSettings(freeze_settle_seconds=0.0)
    clock = iter(float(i) for i in range(1000))
    policy = GcPolicy(quick, now=0.0, sessions=1, full_collections=full_collections())
    task = asyncio.create_task(
        run_gc_policy(policy, lambda: 1, lambda: 1, interval=0.001, clock=lambda: next(clock))
    )
    try:
        for _ in range(200):
            gc.collect()  # the full collection it freezes after
            await asyncio.sleep(0.005)
            if policy.frozen:
                break
        assert policy.frozen and gc.get_freeze_count() > 0
        assert (metrics.REGISTRY.get_sample_value("opamp_gc_frozen_objects") or 0) > 0
        assert metrics.REGISTRY.get_sample_value(
            "opamp_gc_policy_actions_total", {"action": "freeze"}
        )
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert gc.get_freeze_count() == 0


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
