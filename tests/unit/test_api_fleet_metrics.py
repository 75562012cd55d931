"""Prometheus metrics move as agents connect, time out and disconnect (fake channels, clock)."""

from __future__ import annotations

import asyncio
import contextlib

from opamp_operator import metrics
from opamp_operator.fleet.model import Reason, Transport
from opamp_operator.fleet_metrics import FleetMetrics
from tests.support.api_fleet import (
    FakeChannel,
    disconnect,
    hello,
    make_fleet,
    new_agent_id,
    visit,
)


def _value(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def _drain(subscriber: FleetMetrics) -> None:
    while (event := subscriber.subscription.get_nowait()) is not None:
        subscriber.observe(event)
    subscriber.export_bus_state()


def test_sessions_transitions_and_missed_heartbeats() -> None:
    fleet, clock, bus = make_fleet()
    subscriber = FleetMetrics(bus.subscribe("metrics-test-1", 1000), bus)
    duration = "opamp_agent_connection_duration_seconds"
    timeout_sessions = _value(
        f"{duration}_count", transport="websocket", reason="heartbeat_timeout"
    )
    disconnects = _value(f"{duration}_count", transport="http", reason="agent_disconnect")
    went_online = _value("opamp_agent_phase_transitions_total", phase="Online", reason="connected")
    timed_out = _value(
        "opamp_agent_phase_transitions_total", phase="Offline", reason="heartbeat_timeout"
    )
    went_error = _value(
        "opamp_agent_phase_transitions_total", phase="Error", reason="offline_too_long"
    )
    missed = _value("opamp_agent_heartbeat_missed_total")
    detected = _value("opamp_agent_offline_detection_seconds_sum")

    quiet, polite = new_agent_id(), new_agent_id()
    fleet.handle_message(FakeChannel(), hello(quiet))
    fleet.handle_message(FakeChannel(Transport.HTTP), hello(polite))
    clock.advance(20)
    fleet.handle_message(FakeChannel(Transport.HTTP), disconnect(polite, 1))
    clock.advance(fleet.settings.heartbeat_timeout_seconds)
    assert fleet.check_deadlines() == 1  # quiet: Online -> Offline
    clock.advance(fleet.settings.error_after_offline_seconds)
    fleet.check_deadlines()  # quiet: Offline -> Error; polite said goodbye: stays Offline
    _drain(subscriber)

    assert _value("opamp_agent_heartbeat_missed_total") == missed + 1
    # quiet's last message came 20 s + the timeout before the check noticed the silence.
    silent = 20 + fleet.settings.heartbeat_timeout_seconds
    assert _value("opamp_agent_offline_detection_seconds_sum") == detected + silent
    assert (
        _value(f"{duration}_count", transport="websocket", reason="heartbeat_timeout")
        == timeout_sessions + 1
    )
    assert (
        _value(f"{duration}_count", transport="http", reason="agent_disconnect") == disconnects + 1
    )
    # The polite agent's session lasted the 20 seconds between its hello and its goodbye.
    assert _value(f"{duration}_bucket", transport="http", reason="agent_disconnect", le="15.0") == 0
    assert _value(f"{duration}_bucket", transport="http", reason="agent_disconnect", le="60.0") >= 1
    assert (
        _value("opamp_agent_phase_transitions_total", phase="Online", reason="connected")
        == went_online + 2
    )
    assert (
        _value("opamp_agent_phase_transitions_total", phase="Offline", reason="heartbeat_timeout")
        == timed_out + 1
    )
    assert (
        _value("opamp_agent_phase_transitions_total", phase="Error", reason="offline_too_long")
        == went_error + 1
    )


def test_drops_and_queue_depth_are_exported_per_subscription() -> None:
    fleet, _, bus = make_fleet()
    own = bus.subscribe("metrics-test-2", 100)
    slow = bus.subscribe("slow-test-2", 2)
    subscriber = FleetMetrics(own, bus)
    for _ in range(3):  # each new agent: SessionOpened, AgentChanged, PhaseChanged
        fleet.handle_message(FakeChannel(), hello(new_agent_id()))
    _drain(subscriber)
    assert slow.dropped == 7
    assert _value("opamp_fleet_events_dropped_total", subscriber="slow-test-2") == 7
    assert _value("opamp_fleet_event_queue_depth", subscriber="slow-test-2") == 2
    assert _value("opamp_fleet_event_queue_depth", subscriber="metrics-test-2") == 0
    _drain(subscriber)  # exporting again adds nothing new
    assert _value("opamp_fleet_events_dropped_total", subscriber="slow-test-2") == 7


async def test_run_loop_observes_until_cancelled() -> None:
    fleet, clock, bus = make_fleet()
    subscriber = FleetMetrics(bus.subscribe("metrics-test-3", 100), bus)
    before = _value(
        "opamp_agent_phase_transitions_total", phase="Offline", reason=Reason.AGENT_DISCONNECT
    )
    task = asyncio.create_task(subscriber.run())
    agent_id = new_agent_id()
    visit(fleet, agent_id, clock, 1)
    for _ in range(100):
        await asyncio.sleep(0.001)
        if subscriber.subscription.depth() == 0:
            break
    await asyncio.sleep(0)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    after = _value(
        "opamp_agent_phase_transitions_total", phase="Offline", reason=Reason.AGENT_DISCONNECT
    )
    assert after == before + 1
