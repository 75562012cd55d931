"""The fleet benchmark's pure helpers for issue 19: the churn window's flatness figures
(warm-up, least-squares RSS slope) and the split of a large fleet over simulators."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:  # bench/run puts it first; pytest does not
    sys.path.insert(0, str(BENCH))

from fleetbench.churn import (  # noqa: E402
    ChurnPlan,
    ChurnResult,
    ChurnSample,
    away_allowance,
    slope_per_10min,
    warmup_seconds,
)
from fleetbench.simfleet import member_plans, split  # noqa: E402
from fleetbench.stack import SimPlan  # noqa: E402

MIB = 1024 * 1024


def test_warmup_is_a_fifth_of_a_short_window_and_five_minutes_of_a_long_one() -> None:
    assert warmup_seconds(120) == 24
    assert warmup_seconds(1800) == 300


def test_slope_is_per_ten_minutes_and_exact_on_a_line() -> None:
    line = [(t, 100 + 0.01 * t) for t in range(0, 1200, 10)]  # 0.01 per second
    slope = slope_per_10min(line)
    assert slope == pytest.approx(6.0)
    assert slope_per_10min([(0, 5.0), (600, 5.0)]) == 0.0


def test_slope_needs_two_distinct_times() -> None:
    assert slope_per_10min([]) is None
    assert slope_per_10min([(10, 1.0), (10, 2.0)]) is None


def _sample(seconds: float, rss_mib: float, opened: float) -> ChurnSample:
    return ChurnSample(seconds, int(rss_mib * MIB), opened, opened - 5, 1, 0, 0.0, 0)


def test_result_leaves_the_warm_up_out_of_the_slope_and_counts_over_the_whole_window() -> None:
    # RSS climbs for the warm-up (a fifth of 100 s) and is flat after.
    samples = [_sample(t, 200 + (20 - t if t < 20 else 0), 10 * t) for t in range(0, 101, 10)]
    result = ChurnResult(ChurnPlan(window=100), main_agents=8800, samples=samples)
    result.window_seconds = 100
    assert result.settled[0].seconds == 20
    assert result.rss_slope_mib == pytest.approx(0.0)
    assert result.delta("sessions_opened") == 1000
    summary = result.summary()
    assert (summary["rss_start_mib"], summary["rss_max_mib"]) == (200, 200)
    assert summary["pauses_50ms"] is None  # no gcwatch window recorded


def test_connected_allows_for_the_agents_away_at_a_time() -> None:
    # 5 goodbyes/s, each away 1 to 3 s: about 10 away, never near 35.
    assert away_allowance(ChurnPlan(window=60, rate=5, delay=2)) == 35


def test_split_uses_as_few_simulators_as_fit_with_even_shares() -> None:
    assert split(9800, 20_000) == [9800]
    assert split(1000, 500) == [500, 500]
    assert split(1001, 500) == [334, 334, 333]
    assert split(49_800, 20_000) == [16_600, 16_600, 16_600]
    with pytest.raises(ValueError):
        split(0, 10)


def test_split_plans_differ_by_prefix_and_seed_and_share_the_ramp() -> None:
    plan = SimPlan(agents=1001, duration=60, ramp=200)
    members = member_plans(plan, 500)
    assert [m.agents for m in members] == [334, 334, 333]
    assert sum(m.ramp for m in members) == pytest.approx(200)
    assert len({m.name_prefix for m in members}) == 3
    assert len({m.seed for m in members} | {2, 3}) == 5  # apart from the silent and churn runs
    assert all(m.duration == 60 for m in members)
    assert member_plans(SimPlan(agents=10, duration=60), 500) == [SimPlan(agents=10, duration=60)]


def test_churn_plan_passes_churn_to_the_simulator() -> None:
    argv = SimPlan(agents=5, duration=60, churn=5, churn_delay=2).argv("ws://x", Path("r.json"))
    assert argv[argv.index("--churn") + 1] == "5"
    assert argv[argv.index("--churn-delay") + 1] == "2"
    assert "--churn" not in SimPlan(agents=5, duration=60).argv("ws://x", Path("r.json"))
