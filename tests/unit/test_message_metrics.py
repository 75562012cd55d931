"""The per-transport message metrics kept as children (no `labels()` per message)."""

from __future__ import annotations

from opamp_operator import metrics


def _sample(name: str, **labels: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(name, labels)


def test_counts_by_kind_and_observes_handling_time_under_the_transport_label() -> None:
    counted = metrics.MessageMetrics("unit-test")
    assert _sample("opamp_messages_received_total", transport="unit-test", kind="report") is None
    assert _sample("opamp_message_handling_seconds_count", transport="unit-test") is None
    counted.received("heartbeat")
    counted.received("heartbeat")
    counted.received("report")
    counted.handled(0.002)
    received = "opamp_messages_received_total"
    assert _sample(received, transport="unit-test", kind="heartbeat") == 2
    assert _sample(received, transport="unit-test", kind="report") == 1
    assert _sample(received, transport="unit-test", kind="disconnect") is None  # none came
    assert _sample("opamp_message_handling_seconds_count", transport="unit-test") == 1
    assert _sample("opamp_message_handling_seconds_sum", transport="unit-test") == 0.002
