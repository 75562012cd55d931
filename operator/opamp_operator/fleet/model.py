"""Plain data about agents: phases, reasons, sessions and read-only snapshots."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from .components import AvailableComponents
from .offers import SettingsState
from .remoteconfig import ConfigState


class AgentPhase(StrEnum):
    ONLINE = "Online"
    OFFLINE = "Offline"
    ERROR = "Error"


class Reason(StrEnum):
    """Why a phase changed or a session ended; stable strings stored in history and CRs."""

    CONNECTED = "connected"
    HEARTBEAT_RESUMED = "heartbeat_resumed"
    HEARTBEAT_TIMEOUT = "heartbeat_timeout"
    CONNECTION_CLOSED = "connection_closed"
    AGENT_DISCONNECT = "agent_disconnect"
    OPERATOR_SHUTDOWN = "operator_shutdown"
    OPERATOR_RESTART = "operator_restart"
    OFFLINE_TOO_LONG = "offline_too_long"
    SUPERSEDED = "superseded"
    RECONNECT_REQUESTED = "reconnect_requested"
    RESTART_REQUESTED = "restart_requested"
    PROTOCOL_ERROR = "protocol_error"
    POD_DELETED = "pod_deleted"
    REPLICA_LOST = "replica_lost"  # the replica holding the session stopped renewing its Lease


# Deliberate departures: the agent said goodbye (AgentDisconnect) or its Pod was deleted.
# They end Offline and stay there: never escalated to Error (a scale-down is no failure).
DEPARTURES: frozenset[str] = frozenset({Reason.AGENT_DISCONNECT, Reason.POD_DELETED})


class Transport(StrEnum):
    WEBSOCKET = "websocket"
    HTTP = "http"


class Liveness(StrEnum):
    """Which signal tells that a connected agent is alive (see `liveness_rule`)."""

    HEARTBEAT = "heartbeat"  # its messages, within the heartbeat timeout
    CONNECTION = "connection"  # its WebSocket: ping/pong keep-alive and close


def liveness_rule(transport: Transport, reports_heartbeat: bool) -> Liveness:
    """Heartbeats are optional in OpAMP: over WebSocket an agent that does not claim
    ReportsHeartbeat is alive while its connection answers pings. Over plain HTTP the
    poll is the only signal, so the heartbeat deadline applies whatever it claims."""
    if transport is Transport.WEBSOCKET and not reports_heartbeat:
        return Liveness.CONNECTION
    return Liveness.HEARTBEAT


@dataclass(frozen=True, slots=True)
class SessionInfo:
    session_id: str
    transport: Transport
    remote_addr: str
    connected_at: datetime
    # The ServiceAccount (`namespace/name`) whose Pod-bound token the agent authenticated
    # with; None for static tokens, client certificates or no authentication.
    service_account: str | None = None


@dataclass(frozen=True, slots=True)
class AgentSnapshot:
    """What the rest of the operator may know about an agent, at one moment."""

    agent_id: str
    phase: AgentPhase
    phase_reason: str
    phase_since: datetime
    first_seen_at: datetime
    last_seen_at: datetime
    last_connected_at: datetime | None
    last_disconnected_at: datetime | None
    disconnect_reason: str | None
    session: SessionInfo | None
    identifying_attributes: dict[str, Any] = field(default_factory=dict)
    non_identifying_attributes: dict[str, Any] = field(default_factory=dict)
    capabilities: list[str] = field(default_factory=list)
    health: dict[str, Any] | None = None
    effective_config_hash: str | None = None
    remote_config_status: dict[str, Any] | None = None
    sequence_num: int = 0
    # The remote config the operator wants the agent to run (None: not managed), and how far
    # the agent got with it (see `fleet/remoteconfig.py`).
    desired_config_hash: str | None = None
    desired_config_source: str | None = None
    remote_config_state: ConfigState = ConfigState.NONE
    remote_config_message: str = ""
    liveness: Liveness | None = None  # None: not connected
    custom_capabilities: list[str] = field(default_factory=list)
    available_components: AvailableComponents | None = None
    # Connection settings offers (see `fleet/offers.py`); no header value is ever here.
    connection_settings_status: dict[str, Any] | None = None
    desired_settings_hash: str | None = None
    desired_settings_source: str | None = None
    settings_state: SettingsState = SettingsState.NONE
    settings_message: str = ""

    @property
    def connected(self) -> bool:
        return self.session is not None

    @property
    def service_name(self) -> str | None:
        return _str_or_none(self.identifying_attributes.get("service.name"))

    @property
    def service_version(self) -> str | None:
        return _str_or_none(self.identifying_attributes.get("service.version"))

    @property
    def host_name(self) -> str | None:
        value = self.non_identifying_attributes.get("host.name")
        return _str_or_none(value or self.identifying_attributes.get("host.name"))


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)
