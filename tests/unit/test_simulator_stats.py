"""The latency histogram, fleet counters and the report (backoff: tests/unit/test_backoff.py)."""

from __future__ import annotations

import json
import random

import pytest

from opamp_operator.simulator import SilentAgent, SimulationReport
from opamp_operator.simulator.stats import MAX_ERROR_KINDS, LatencyHistogram, Stats


def test_histogram_percentiles_are_within_two_percent() -> None:
    rng = random.Random(5)
    values = [rng.lognormvariate(-5, 1.5) for _ in range(20_000)]
    histogram = LatencyHistogram()
    for value in values:
        histogram.record(value)
    ordered = sorted(values)
    for q in (50, 90, 99, 99.9):
        exact = ordered[max(0, int(q / 100 * len(ordered)) - 1)]
        got = histogram.percentile(q)
        assert got is not None
        assert got == pytest.approx(exact, rel=0.02)
    assert histogram.max == max(values)
    assert histogram.count == len(values)
    assert histogram.mean == pytest.approx(sum(values) / len(values))


def test_histogram_edges() -> None:
    histogram = LatencyHistogram()
    assert histogram.percentile(50) is None
    assert histogram.mean is None
    histogram.record(-1.0)  # a clock quirk: counted as zero
    histogram.record(0.0)
    histogram.record(10_000.0)  # beyond the last bucket: still counted, max exact
    assert histogram.count == 3
    assert histogram.percentile(50) == pytest.approx(1e-5)
    assert histogram.percentile(100) == 10_000.0
    assert histogram.max == 10_000.0


def test_error_kinds_are_bounded() -> None:
    stats = Stats(target=1)
    for n in range(MAX_ERROR_KINDS + 10):
        stats.error(f"kind_{n}")
    stats.error("kind_0")
    assert len(stats.errors) == MAX_ERROR_KINDS + 1
    assert stats.errors["other"] == 10
    assert stats.errors["kind_0"] == 2


def test_peak_and_first_time_everyone_was_connected() -> None:
    stats = Stats(target=3)
    stats.agent_connected(1.0)
    stats.agent_connected(2.0)
    stats.agent_disconnected()
    stats.agent_connected(3.0)
    assert stats.first_all_connected is None
    stats.agent_connected(4.0)
    stats.agent_disconnected()
    stats.agent_connected(5.0)
    assert (stats.connected, stats.peak_connected) == (3, 3)
    assert stats.first_all_connected == 4.0  # the first time, not the latest


def sample_report() -> SimulationReport:
    silent = SilentAgent(
        instance_uid="0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
        went_silent_monotonic=105.0,
        went_silent_wall=1_760_000_005.0,
        last_message_monotonic=104.5,
        last_message_wall=1_760_000_004.5,
        server_closed_monotonic=None,
    )
    return SimulationReport(
        url="ws://127.0.0.1:4320/v1/opamp",
        transport="ws",
        agents=100,
        heartbeat="1s",
        duration_s=10,
        elapsed_s=10.4,
        peak_connected=100,
        connected_at_end=99,
        all_connected_after_s=1.2,
        messages_sent=1100,
        replies_received=1099,
        reconnects=1,
        churn_disconnects=1,
        full_state_requests=0,
        heartbeats_late=0,
        latency_p50_ms=1.5,
        latency_p99_ms=8.25,
        latency_max_ms=12.0,
        loop_lag_p99_ms=3.0,
        loop_lag_max_ms=4.0,
        errors={"connection_lost": 1},
        silent=(silent,),
        started_monotonic=100.0,
        started_wall=1_760_000_000.0,
    )


def test_report_table_shows_the_numbers_people_look_for() -> None:
    table = sample_report().to_table()
    for expected in (
        "peak connected       100",
        "messages sent        1100 (105.8/s)",
        "replies received     1099",
        "reply latency p50    1.50 ms",
        "reply latency p99    8.25 ms",
        "errors               connection_lost=1",
        "silent agents        1 from 2025-10-09T08:53:25+00:00; closed by server: 0",
    ):
        assert expected in table


def test_report_dict_is_json_and_keeps_silent_times() -> None:
    report = sample_report()
    data = json.loads(json.dumps(report.to_dict()))
    assert data["peak_connected"] == 100
    assert data["errors"] == {"connection_lost": 1}
    assert data["silent"][0]["last_message_monotonic"] == 104.5
    assert data["silent"][0]["went_silent_iso"] == "2025-10-09T08:53:25+00:00"
    with pytest.raises(TypeError):
        report.errors["x"] = 1  # type: ignore[index]
