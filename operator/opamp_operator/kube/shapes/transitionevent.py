"""The Kubernetes Event that tells a phase transition (what `kubectl describe` shows)."""

from __future__ import annotations

from opamp_operator.config import FleetSettings
from opamp_operator.fleet.events import PhaseChanged
from opamp_operator.fleet.model import DEPARTURES, AgentPhase, Reason


def event_type(phase: AgentPhase, reason: str) -> str:
    """Normal for Online and for a deliberate departure (a goodbye is not an error)."""
    return "Normal" if phase is AgentPhase.ONLINE or reason in DEPARTURES else "Warning"


def describe_transition(
    previous: AgentPhase | None,
    current: AgentPhase,
    reason: str,
    fleet: FleetSettings,
    replica: str,
) -> str:
    before = previous.value if previous else "new"
    text = f"{before} -> {current.value}: {reason}"
    if reason == Reason.HEARTBEAT_TIMEOUT:
        text += f" (no message for {fleet.heartbeat_timeout_seconds:g}s)"
    elif reason == Reason.OFFLINE_TOO_LONG:
        text += f" (Offline for {fleet.error_after_offline_seconds:g}s)"
    return f"{text}; seen by replica {replica}"


def describe(event: PhaseChanged, fleet: FleetSettings, replica: str) -> str:
    return describe_transition(event.previous, event.current, event.reason, fleet, replica)
