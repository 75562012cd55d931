"""The mutable per-agent record the registry keeps, and how a report updates it."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from opamp_operator.opamp.generated import opamp_pb2
from opamp_operator.opamp.messages import AgentDescriptionView, AgentToServer, capability_names

from .channel import Channel
from .components import TOO_LARGE, AvailableComponents, Refused, read_report
from .identity import Identity
from .model import AgentPhase, AgentSnapshot, Liveness, SessionInfo, liveness_rule
from .offers import DesiredSettings, SettingsProgress, settings_progress, settings_status_to_dict
from .remoteconfig import ConfigProgress, DesiredConfig, config_progress
from .reports import effective_config_hash, health_to_dict, remote_config_status_to_dict
from .rollout import detect_self_rollback

REPORTS_HEARTBEAT = int(opamp_pb2.AgentCapabilities_ReportsHeartbeat)
# Custom capabilities kept per agent, and characters per name: the CR has to stay small.
MAX_CUSTOM_CAPABILITIES = 32
MAX_CUSTOM_CAPABILITY_CHARS = 253  # a reverse FQDN is at most a DNS name long
# What a full report carries for each capability that promises it (the spec's first message).
_PROMISED_FIELDS: tuple[tuple[int, Literal["health", "effective_config"]], ...] = (
    (int(opamp_pb2.AgentCapabilities_ReportsHealth), "health"),
    (int(opamp_pb2.AgentCapabilities_ReportsEffectiveConfig), "effective_config"),
)


@dataclass(slots=True)
class LiveSession:
    info: SessionInfo
    channel: Channel


@dataclass(slots=True)
class AgentRecord:
    agent_id: str
    uid_bytes: bytes
    phase: AgentPhase | None  # None until the first message has been applied
    phase_reason: str
    phase_since: datetime
    first_seen_at: datetime
    last_seen_at: datetime
    last_connected_at: datetime | None = None
    last_disconnected_at: datetime | None = None
    disconnect_reason: str | None = None
    session: LiveSession | None = None
    description: AgentDescriptionView | None = None
    capabilities: int = 0
    health: dict[str, Any] | None = None
    effective_config_hash: str | None = None
    remote_config_status: dict[str, Any] | None = None
    sequence_num: int | None = None
    # Things to tell the agent in the next reply (HTTP agents only hear us when they poll).
    pending_full_state: bool = False
    pending_reconnect: bool = False
    pending_restart: bool = False
    # Monotonic time a Restart command went out: the session end that follows is the restart.
    restart_sent_at: float | None = None
    custom_capabilities: tuple[str, ...] = ()
    available_components: AvailableComponents | None = None
    # The components hash the agent was asked (ReportAvailableComponents) to send in full
    # in this session: asked once per hash, not at every message that carries it.
    components_asked: bytes | None = None
    # Identity of a duplicate -> the uid assigned to it, so that a clone that has not switched
    # yet (or lost the reply) is told the same uid again, not a new one per message.
    reassigned: dict[Identity, str] = field(default_factory=dict)
    offered_settings: bool = False
    # Connection settings offers (fleet/offers.py): what is declared for the agent, the hash
    # sent in the current session, and the agent's last ConnectionSettingsStatus.
    desired_settings: DesiredSettings | None = None
    settings_sent_hash: bytes | None = None
    connection_settings_status: dict[str, Any] | None = None
    # Remote config: what the operator wants the agent to run; the hash sent to it in the
    # current session (sent again in a new session when the agent reports another hash).
    desired: DesiredConfig | None = None
    config_sent_hash: bytes | None = None
    # (hash, the agent's error) when it rolled itself back from that config: not sent again.
    rolled_back: tuple[bytes, str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # Monotonic time of the last message, and whether "slower than the timeout" was logged.
    last_message_monotonic: float | None = None
    warned_slow: bool = False

    def liveness(self) -> Liveness | None:
        """The rule judging this agent now (None: no session)."""
        if self.session is None:
            return None
        return liveness_rule(
            self.session.info.transport, bool(self.capabilities & REPORTS_HEARTBEAT)
        )

    def snapshot(self) -> AgentSnapshot:
        description = self.description
        progress = self.config_progress()
        settings, offered = self.desired_settings, self.settings_progress()
        return AgentSnapshot(
            agent_id=self.agent_id,
            phase=self.phase or AgentPhase.OFFLINE,
            phase_reason=self.phase_reason,
            phase_since=self.phase_since,
            first_seen_at=self.first_seen_at,
            last_seen_at=self.last_seen_at,
            last_connected_at=self.last_connected_at,
            last_disconnected_at=self.last_disconnected_at,
            disconnect_reason=self.disconnect_reason,
            session=self.session.info if self.session else None,
            identifying_attributes=dict(description.identifying) if description else {},
            non_identifying_attributes=dict(description.non_identifying) if description else {},
            capabilities=capability_names(self.capabilities),
            health=self.health,
            effective_config_hash=self.effective_config_hash,
            remote_config_status=self.remote_config_status,
            sequence_num=self.sequence_num or 0,
            desired_config_hash=self.desired.hash_hex if self.desired else None,
            desired_config_source=self.desired.source if self.desired else None,
            remote_config_state=progress.state,
            remote_config_message=progress.message,
            liveness=self.liveness(),
            custom_capabilities=list(self.custom_capabilities),
            available_components=self.available_components,
            connection_settings_status=self.connection_settings_status,
            desired_settings_hash=settings.hash_hex if settings else None,
            desired_settings_source=settings.source if settings else None,
            settings_state=offered.state,
            settings_message=offered.message,
        )

    def settings_progress(self) -> SettingsProgress:
        desired = self.desired_settings
        return settings_progress(
            desired,
            capabilities=self.capabilities,
            connected=self.session is not None,
            reported=self.connection_settings_status,
            sent=desired is not None and self.settings_sent_hash == desired.hash,
        )

    def config_progress(self) -> ConfigProgress:
        desired = self.desired
        return config_progress(
            desired,
            capabilities=self.capabilities,
            connected=self.session is not None,
            reported=self.remote_config_status,
            sent=desired is not None and self.config_sent_hash == desired.hash,
            rolled_back=self.rolled_back_from_desired(),
        )

    def rolled_back_from_desired(self) -> str | None:
        """The agent's error when it rolled itself back from the desired config, else None."""
        if self.desired is None or self.rolled_back is None:
            return None
        return self.rolled_back[1] if self.rolled_back[0] == self.desired.hash else None


def is_full_report(message: AgentToServer) -> bool:
    """The message carries the description and what each claimed capability promises.

    A client restarting from sequence 0 sends such a message first; asking it for
    ReportFullState again would only repeat it.
    """
    if not message.HasField("agent_description"):
        return False
    claimed = int(message.capabilities)
    return all(message.HasField(name) for flag, name in _PROMISED_FIELDS if claimed & flag)


def apply_report(record: AgentRecord, message: AgentToServer) -> frozenset[str]:
    """Copy what the message reports into `record`; return the names of what changed."""
    changed: set[str] = set()
    if message.HasField("agent_description"):
        view = AgentDescriptionView.from_proto(message.agent_description)
        if view != record.description:
            view = _kept_view(view)
            record.description = view
            changed.add("description")
    if message.capabilities and message.capabilities != record.capabilities:
        record.capabilities = int(message.capabilities)
        changed.add("capabilities")
    if message.HasField("health"):
        health = health_to_dict(message.health)
        if health != record.health:
            record.health = health
            changed.add("health")
    if message.HasField("effective_config"):
        config_hash = effective_config_hash(message.effective_config)
        if config_hash != record.effective_config_hash:
            record.effective_config_hash = config_hash
            changed.add("effective_config")
    if message.HasField("custom_capabilities"):
        custom = custom_capability_names(message.custom_capabilities.capabilities)
        if custom != record.custom_capabilities:
            record.custom_capabilities = custom
            changed.add("custom_capabilities")
    if message.HasField("remote_config_status"):
        status = remote_config_status_to_dict(message.remote_config_status)
        if status != record.remote_config_status:
            _note_self_rollback(record, record.remote_config_status, status)
            record.remote_config_status = status
            changed.add("remote_config_status")
    if _apply_settings_status(record, message):
        changed.add("connection_settings_status")
    return frozenset(changed)


def _kept_view(view: AgentDescriptionView) -> AgentDescriptionView:
    """The view with its attribute names interned: every agent of a fleet repeats the same
    names (service.name, os.type, ...), so the records share one copy of each. Not the
    values: many are unique per agent (host names, instance ids), and each interned string
    is an entry of Python's intern table (measured at 3,000 agents: values too cost 360 bytes
    per agent more than they saved)."""
    return AgentDescriptionView(_interned(view.identifying), _interned(view.non_identifying))


def _interned(attributes: Mapping[str, object]) -> dict[str, object]:
    return {sys.intern(key): value for key, value in attributes.items()}


def apply_components(record: AgentRecord, report: Any) -> tuple[bool, Refused | None]:
    """Take the message's AvailableComponents: (whether what we hold changed, a refusal).

    A hash alone keeps the full map held for that hash; a new hash drops it (stale). A map
    too large to keep is refused but its hash is taken (what we hold is no longer current).
    """
    read = read_report(report)
    refused = read if isinstance(read, Refused) else None
    if isinstance(read, Refused):
        if read.reason != TOO_LARGE:
            return False, read
        read = AvailableComponents(bytes(report.hash))
    held = record.available_components
    if not read.complete and held is not None and held.hash == read.hash:
        return False, refused
    if read == held:
        return False, refused
    record.available_components = read
    return True, refused


def _apply_settings_status(record: AgentRecord, message: AgentToServer) -> bool:
    if not message.HasField("connection_settings_status"):
        return False
    reported = settings_status_to_dict(message.connection_settings_status)
    if reported == record.connection_settings_status:
        return False
    record.connection_settings_status = reported
    return True


def custom_capability_names(names: Iterable[str]) -> tuple[str, ...]:
    """Sorted, de-duplicated, bounded: at most MAX_CUSTOM_CAPABILITIES names, each cut short.

    The list is the agent's (reverse-FQDN names); an agent sending thousands must not make
    its CR too large to write.
    """
    cut = {name[:MAX_CUSTOM_CAPABILITY_CHARS] for name in names if name}
    return tuple(sorted(cut)[:MAX_CUSTOM_CAPABILITIES])


def _note_self_rollback(
    record: AgentRecord, before: dict[str, Any] | None, after: dict[str, Any]
) -> None:
    if record.desired is None:
        return
    error = detect_self_rollback(before, after, record.desired.hash_hex)
    if error is not None:
        record.rolled_back = (record.desired.hash, error)
