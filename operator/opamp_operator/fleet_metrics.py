"""The metrics subscriber: turns fleet events into Prometheus observations.

It reads its own bounded subscription on the fleet's `EventBus`; when that queue overflows
the bus drops events for it only (counted in `opamp_fleet_events_dropped_total`), so these
counters may then undercount, while the agent-count gauges (`FleetCollector`) stay exact
because they are read from the registry at scrape time.
"""

from __future__ import annotations

import logging

from opamp_operator import metrics
from opamp_operator.fleet.events import (
    AgentForgotten,
    EventBus,
    FleetEvent,
    PhaseChanged,
    SessionClosed,
    Subscription,
)
from opamp_operator.fleet.identity import DuplicateUid
from opamp_operator.fleet.model import AgentPhase, Reason

log = logging.getLogger(__name__)

BATCH = 1000  # events handled before the per-subscriber gauges are refreshed
_KNOWN_REASONS = frozenset(reason.value for reason in Reason)


class FleetMetrics:
    """Observes session durations and phase transitions; exports the bus's drop counts."""

    def __init__(self, subscription: Subscription, bus: EventBus | None = None) -> None:
        self.subscription = subscription
        self.bus = bus
        self._dropped_exported: dict[str, int] = {}

    async def run(self) -> None:
        """Handle events until cancelled."""
        while True:
            self.observe(await self.subscription.get())
            for _ in range(BATCH - 1):
                event = self.subscription.get_nowait()
                if event is None:
                    break
                self.observe(event)
            self.export_bus_state()

    def observe(self, event: FleetEvent) -> None:
        """Update the metrics for one event (other event kinds are ignored)."""
        if isinstance(event, SessionClosed):
            metrics.connection_duration_seconds.labels(
                transport=event.transport.value, reason=_reason_label(event.reason)
            ).observe(event.duration_seconds)
        elif isinstance(event, PhaseChanged):
            reason = _reason_label(event.reason)
            metrics.phase_transitions.labels(phase=event.current.value, reason=reason).inc()
            if event.current is AgentPhase.OFFLINE and event.reason == Reason.HEARTBEAT_TIMEOUT:
                metrics.heartbeat_missed.inc()
                if event.last_seen_at is not None:
                    silent = (event.at - event.last_seen_at).total_seconds()
                    metrics.offline_detection_seconds.observe(silent)
        elif isinstance(event, AgentForgotten):
            metrics.agents_forgotten.inc()

    def export_bus_state(self) -> None:
        """Copy each subscription's drop count and queue depth into the metrics."""
        subscriptions = self.bus.subscriptions if self.bus is not None else (self.subscription,)
        for subscription in subscriptions:
            exported = self._dropped_exported.get(subscription.name, 0)
            if subscription.dropped > exported:
                metrics.events_dropped.labels(subscriber=subscription.name).inc(
                    subscription.dropped - exported
                )
                self._dropped_exported[subscription.name] = subscription.dropped
            metrics.events_queue_depth.labels(subscriber=subscription.name).set(
                subscription.depth()
            )
        if self.subscription.needs_resync:
            # Counters cannot be rebuilt from the registry: note the gap once and go on.
            log.warning("metrics subscriber dropped events; counters undercount since then")
            self.subscription.needs_resync = False


def count_rejected_registration(kind: str) -> None:
    """The fleet's `on_rejected` hook: a new agent refused by the cap or the rate limit."""
    metrics.registrations_rejected.labels(reason=kind).inc()


def count_slow_agent() -> None:
    """The fleet's `on_slow_agent` hook: an agent sends slower than the heartbeat timeout."""
    metrics.agents_slower_than_timeout.inc()


def count_bad_input(transport: str, reason: str) -> None:
    """The fleet's `on_bad_input` hook: reported data refused (too large, invalid)."""
    metrics.bad_input.labels(transport, reason).inc()


def count_components_request() -> None:
    """The fleet's `on_components_requested` hook: a ReportAvailableComponents flag sent."""
    metrics.available_components_requests.inc()


def _reason_label(reason: str) -> str:
    # Reasons are free strings on the events; keep the label set bounded.
    return reason if reason in _KNOWN_REASONS else "other"


def count_duplicate(found: DuplicateUid) -> None:
    """The fleet's `on_duplicate` hook (via the app): one more duplicate instance uid."""
    metrics.duplicate_instance_uids.labels(found.transport).inc()
