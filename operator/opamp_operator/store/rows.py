"""Plain rows the store writes and reads, and making agent-reported values storable."""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from opamp_operator.fleet.model import AgentPhase, AgentSnapshot

# -- written -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgentStateRow:
    """An agent's latest state as a batch of events left it (None: leave the stored value)."""

    agent_id: str
    status: str
    first_at: datetime  # created_at when the row is new
    last_connected_at: datetime | None = None
    last_disconnected_at: datetime | None = None
    disconnect_reason: str | None = None


@dataclass(frozen=True, slots=True)
class DescriptionRow:
    agent_id: str
    status: str  # used only when the row is new
    description_json: str
    capabilities_json: str
    first_at: datetime


@dataclass(frozen=True, slots=True)
class SnapshotRow:
    """Everything the fleet knows about an agent: used to resynchronise after drops."""

    agent_id: str
    status: str
    last_seen_at: datetime
    last_connected_at: datetime | None
    last_disconnected_at: datetime | None
    disconnect_reason: str | None
    description_json: str
    capabilities_json: str
    first_at: datetime


@dataclass(frozen=True, slots=True)
class ComponentsRow:
    """An agent's AvailableComponents: the hash, and the full map once known (else None)."""

    agent_id: str
    hash: str
    components_json: str | None
    counts_json: str
    total: int


def status_of(phase: AgentPhase) -> str:
    """The stored status ('online', 'offline', 'error') of a fleet phase."""
    return phase.value.lower()


def description_row(snapshot: AgentSnapshot) -> DescriptionRow:
    return DescriptionRow(
        snapshot.agent_id,
        status_of(snapshot.phase),
        description_json(snapshot),
        to_json(snapshot.capabilities),
        snapshot.first_seen_at,
    )


def components_row(snapshot: AgentSnapshot) -> ComponentsRow | None:
    held = snapshot.available_components
    if held is None:
        return None
    components = to_json(held.components_json()) if held.complete else None
    counts = to_json(dict(held.counts))
    return ComponentsRow(snapshot.agent_id, held.hash_hex, components, counts, held.total)


def snapshot_row(snapshot: AgentSnapshot) -> SnapshotRow:
    return SnapshotRow(
        agent_id=snapshot.agent_id,
        status=status_of(snapshot.phase),
        last_seen_at=snapshot.last_seen_at,
        last_connected_at=snapshot.last_connected_at,
        last_disconnected_at=snapshot.last_disconnected_at,
        disconnect_reason=snapshot.disconnect_reason,
        description_json=description_json(snapshot),
        capabilities_json=to_json(snapshot.capabilities),
        first_at=snapshot.first_seen_at,
    )


def description_json(snapshot: AgentSnapshot) -> str:
    return to_json(
        {
            "identifying": snapshot.identifying_attributes,
            "non_identifying": snapshot.non_identifying_attributes,
        }
    )


def to_json(value: object) -> str:
    """JSON that PostgreSQL's jsonb accepts, whatever an agent reported."""
    return json.dumps(storable(value), separators=(",", ":"), allow_nan=False)


def storable(value: object) -> Any:
    """Agent attributes made JSON-safe: bytes as base64, NaN/inf as text, no NUL characters.

    jsonb rejects NaN and the \\u0000 escape; one bad attribute must not make a whole
    batch of history fail.
    """
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, bool | int) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, dict):
        return {storable(str(key)): storable(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [storable(item) for item in value]
    if hasattr(value, "items"):  # read-only mappings
        return storable(dict(value.items()))
    return storable(str(value))


def clean_text(value: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL characters."""
    return None if value is None else value.replace("\x00", "\ufffd")


# -- read --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgentRow:
    agent_id: str
    status: str
    last_seen_at: datetime | None
    last_connected_at: datetime | None
    last_disconnected_at: datetime | None
    disconnect_reason: str | None
    description: dict[str, Any] | None
    capabilities: list[str] | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class StoredComponents:
    agent_id: str
    hash: str
    components: dict[str, Any] | None
    counts: dict[str, int]
    total: int
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class HistoryRow:
    id: int
    agent_id: str
    session_id: str
    replica_id: str
    connected_at: datetime
    disconnected_at: datetime | None
    duration_seconds: float | None
    disconnect_reason: str | None
    remote_addr: str | None
    transport: str


@dataclass(frozen=True, slots=True)
class HistoryCursor:
    """Where the previous page of an agent's history ended (keyset paging)."""

    connected_at: datetime
    id: int


@dataclass(frozen=True, slots=True)
class TransitionRow:
    id: int
    agent_id: str
    from_status: str | None
    to_status: str
    reason: str
    at: datetime
