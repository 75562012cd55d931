"""Plain data -> JSON-ready dicts for the REST answers (field names as in the OpenAPI doc)."""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from opamp_operator.fleet.components import AvailableComponents
from opamp_operator.fleet.model import AgentPhase, AgentSnapshot, Liveness, SessionInfo

# The store keeps statuses in lowercase; the API speaks in phase names.
_PHASES = {phase.value.lower(): phase.value for phase in AgentPhase}


def timestamp(value: datetime | None) -> str | None:
    """RFC 3339 in UTC with a `Z`, or None (a naive time is taken to be UTC)."""
    if value is None:
        return None
    utc = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return utc.isoformat().replace("+00:00", "Z")


def jsonable(value: object) -> Any:
    """Attribute values as JSON: bytes as base64 text, non-finite floats as text."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return str(value)


def agent_summary(snapshot: AgentSnapshot) -> dict[str, Any]:
    return {
        "id": snapshot.agent_id,
        "phase": snapshot.phase.value,
        "reason": snapshot.phase_reason,
        "phaseSince": timestamp(snapshot.phase_since),
        "lastSeen": timestamp(snapshot.last_seen_at),
        "connected": snapshot.connected,
        "transport": snapshot.session.transport.value if snapshot.session else None,
        "serviceName": snapshot.service_name,
        "serviceVersion": snapshot.service_version,
        "hostName": snapshot.host_name,
    }


def connection(session: SessionInfo | None, liveness: Liveness | None) -> dict[str, Any] | None:
    if session is None:
        return None
    return {
        "sessionId": session.session_id,
        "transport": session.transport.value,
        "remoteAddr": session.remote_addr,
        "connectedAt": timestamp(session.connected_at),
        "liveness": None if liveness is None else liveness.value,
        "serviceAccount": session.service_account,
    }


def agent_status(snapshot: AgentSnapshot) -> dict[str, Any]:
    return {
        "id": snapshot.agent_id,
        "phase": snapshot.phase.value,
        "reason": snapshot.phase_reason,
        "phaseSince": timestamp(snapshot.phase_since),
        "firstSeen": timestamp(snapshot.first_seen_at),
        "lastSeen": timestamp(snapshot.last_seen_at),
        "connected": snapshot.connected,
        "lastConnected": timestamp(snapshot.last_connected_at),
        "lastDisconnected": timestamp(snapshot.last_disconnected_at),
        "disconnectReason": snapshot.disconnect_reason,
        "connection": connection(snapshot.session, snapshot.liveness),
        "description": {
            "identifyingAttributes": jsonable(snapshot.identifying_attributes),
            "nonIdentifyingAttributes": jsonable(snapshot.non_identifying_attributes),
        },
        "capabilities": list(snapshot.capabilities),
        "customCapabilities": list(snapshot.custom_capabilities),
        "health": jsonable(snapshot.health),
        "effectiveConfigHash": snapshot.effective_config_hash,
        "remoteConfigStatus": jsonable(snapshot.remote_config_status),
        "sequenceNum": snapshot.sequence_num,
        "availableComponents": components_summary(snapshot.available_components),
    }


def components_summary(held: AvailableComponents | None) -> dict[str, Any] | None:
    return None if held is None else held.summary()


def agent_components(agent_id: str, held: AvailableComponents) -> dict[str, Any]:
    """The full list, as the fleet holds it now."""
    return {
        "id": agent_id,
        **held.summary(),
        "components": jsonable(held.components_json()),
        "source": "fleet",
        "storedAt": None,
    }


def stored_components(row: Mapping[str, Any]) -> dict[str, Any]:
    """The full list as PostgreSQL last stored it (the agent is not known in memory)."""
    components = row["components"]
    return {
        "id": row["agent_id"],
        "hash": row["hash"],
        "complete": components is not None,
        "counts": dict(row["counts"]),
        "total": row["total"],
        "components": components or {},
        "source": "database",
        "storedAt": timestamp(row["updated_at"]),
    }


def offline_agent(snapshot: AgentSnapshot, now: datetime) -> dict[str, Any]:
    return {
        "id": snapshot.agent_id,
        "phase": snapshot.phase.value,
        "reason": snapshot.phase_reason,
        "since": timestamp(snapshot.phase_since),
        "secondsInPhase": max(0.0, (now - snapshot.phase_since).total_seconds()),
        "lastSeen": timestamp(snapshot.last_seen_at),
        "serviceName": snapshot.service_name,
        "serviceVersion": snapshot.service_version,
        "hostName": snapshot.host_name,
    }


def history_entry(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "sessionId": row["session_id"],
        "connectedAt": timestamp(row["connected_at"]),
        "disconnectedAt": timestamp(row["disconnected_at"]),
        "durationSeconds": row["duration_seconds"],
        "disconnectReason": row["disconnect_reason"],
        "remoteAddr": row["remote_addr"],
        "transport": row["transport"],
    }


def transition_entry(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "from": _phase_name(row["from_status"]),
        "to": _phase_name(row["to_status"]),
        "reason": row["reason"],
        "at": timestamp(row["at"]),
    }


def _phase_name(status: str | None) -> str | None:
    return None if status is None else _PHASES.get(status, status)
