"""Connection settings offers: what to send to whom, their hash, how far an agent got (pure).

The OpAMP specification gates each part of a ConnectionSettingsOffers on a capability:
`own_metrics` / `own_traces` / `own_logs` go to agents that report ReportsOwnMetrics /
ReportsOwnTraces / ReportsOwnLogs, the `opamp` settings (heartbeat interval) to every agent
(clients that report heartbeats apply it, as opamp-go does). The hash covers every declared
setting, whichever parts an agent is sent, so one hash names one declaration; the agent
echoes it in its ConnectionSettingsStatus, and an agent that reports another hash is sent
the offers again (once per session).

Header values usually carry tokens: `Telemetry.headers` is left out of every repr, and
nothing here puts a value into a status, a message or a log.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from opamp_operator.opamp.generated import opamp_pb2

REPORTS_OWN_METRICS = int(opamp_pb2.AgentCapabilities_ReportsOwnMetrics)
REPORTS_OWN_TRACES = int(opamp_pb2.AgentCapabilities_ReportsOwnTraces)
REPORTS_OWN_LOGS = int(opamp_pb2.AgentCapabilities_ReportsOwnLogs)
ACCEPTS_OPAMP_SETTINGS = int(opamp_pb2.AgentCapabilities_AcceptsOpAMPConnectionSettings)
REPORTS_SETTINGS_STATUS = int(opamp_pb2.AgentCapabilities_ReportsConnectionSettingsStatus)

# (CR field, proto field, capability) per kind of own telemetry.
SIGNALS: tuple[tuple[str, str, int], ...] = (
    ("ownMetrics", "own_metrics", REPORTS_OWN_METRICS),
    ("ownTraces", "own_traces", REPORTS_OWN_TRACES),
    ("ownLogs", "own_logs", REPORTS_OWN_LOGS),
)


@dataclass(frozen=True, slots=True)
class Telemetry:
    """Where an agent sends one kind of its own telemetry (an OTLP endpoint) and the headers."""

    endpoint: str
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # values are secrets


@dataclass(frozen=True, slots=True, eq=False)
class DesiredSettings:
    """The connection settings one agent should use; build with `DesiredSettings.of`.

    `heartbeat_interval_seconds` None: the operator's default. `source` says where they were
    declared, for people; it is not part of the hash.
    """

    telemetry: Mapping[str, Telemetry]  # by proto field (own_metrics, ...)
    heartbeat_interval_seconds: int | None
    hash: bytes
    source: str

    @classmethod
    def of(
        cls,
        telemetry: Mapping[str, Telemetry],
        heartbeat_interval_seconds: int | None = None,
        source: str = "",
    ) -> DesiredSettings:
        kept = {name: telemetry[name] for _, name, _ in SIGNALS if name in telemetry}
        digest = settings_digest(kept, heartbeat_interval_seconds)
        return cls(kept, heartbeat_interval_seconds, digest, source)

    @property
    def hash_hex(self) -> str:
        return self.hash.hex()

    def applies_to(self, capabilities: int) -> bool:
        """Whether the agent can use any declared part (a heartbeat: any agent)."""
        if self.heartbeat_interval_seconds is not None:
            return True
        return any(capabilities & flag for _, name, flag in SIGNALS if name in self.telemetry)

    def to_proto(
        self, capabilities: int, default_heartbeat: int
    ) -> opamp_pb2.ConnectionSettingsOffers:
        """The offers for an agent with `capabilities`: the parts it reports it can use."""
        offers = opamp_pb2.ConnectionSettingsOffers(hash=self.hash)
        heartbeat = self.heartbeat_interval_seconds
        offers.opamp.heartbeat_interval_seconds = (
            default_heartbeat if heartbeat is None else heartbeat
        )
        for _, name, flag in SIGNALS:
            wanted = self.telemetry.get(name)
            if wanted is None or not capabilities & flag:
                continue
            target = getattr(offers, name)
            target.destination_endpoint = wanted.endpoint
            for header, value in wanted.headers:
                target.headers.headers.add(key=header, value=value)
        return offers


def settings_digest(telemetry: Mapping[str, Telemetry], heartbeat: int | None) -> bytes:
    """sha256 over the heartbeat and each signal's endpoint and sorted headers; NUL-separated."""
    digest = hashlib.sha256(b"opamp-operator/connection-settings/1\0")
    digest.update(b"-" if heartbeat is None else str(heartbeat).encode())
    for name in sorted(telemetry):
        wanted = telemetry[name]
        digest.update(b"\0" + name.encode() + b"\0" + wanted.endpoint.encode())
        for header, value in sorted(wanted.headers):
            digest.update(b"\0" + header.encode() + b"\0" + value.encode())
    return digest.digest()


def default_offers(heartbeat: int) -> opamp_pb2.ConnectionSettingsOffers:
    """What an agent without declared settings is offered: the operator's heartbeat."""
    offers = opamp_pb2.ConnectionSettingsOffers(hash=b"heartbeat-%d" % heartbeat)
    offers.opamp.heartbeat_interval_seconds = heartbeat
    return offers


def settings_status_to_dict(status: Any) -> dict[str, Any]:
    """An AgentToServer.connection_settings_status as plain data (the CR's shape)."""
    names = opamp_pb2.ConnectionSettingsStatuses
    number = status.status
    name = (
        names.Name(number).removeprefix("ConnectionSettingsStatuses_")
        if number in names.values()
        else f"UNKNOWN_{number}"  # open enums: a newer agent must not fail the message
    )
    return {
        "lastConnectionSettingsHash": bytes(status.last_connection_settings_hash).hex(),
        "status": name,
        "errorMessage": status.error_message,
    }


class SettingsState(StrEnum):
    """How far an agent got with its desired settings (what ConnectionSettingsApplied shows)."""

    NONE = "None"  # nothing declared for the agent
    UNSUPPORTED = "NotSupported"  # it reports none of the capabilities the settings need
    PENDING = "Pending"
    APPLYING = "Applying"
    APPLIED = "Applied"
    FAILED = "Failed"


@dataclass(frozen=True, slots=True)
class SettingsProgress:
    state: SettingsState
    message: str


def settings_progress(
    desired: DesiredSettings | None,
    *,
    capabilities: int,
    connected: bool,
    reported: Mapping[str, Any] | None,
    sent: bool,
) -> SettingsProgress:
    """Where `desired` stands for one agent (`reported`: `settings_status_to_dict`'s shape)."""
    if desired is None:
        return SettingsProgress(SettingsState.NONE, "no connection settings are declared")
    if capabilities and not desired.applies_to(capabilities):
        return SettingsProgress(
            SettingsState.UNSUPPORTED,
            "the agent reports none of the ReportsOwnMetrics/Traces/Logs capabilities declared",
        )
    short = desired.hash_hex[:12]
    reported = reported or {}
    if reported.get("lastConnectionSettingsHash") == desired.hash_hex:
        status = reported.get("status")
        if status == "FAILED":
            text = str(reported.get("errorMessage") or "the agent reports FAILED")
            return SettingsProgress(SettingsState.FAILED, text)
        if status == "APPLIED":
            return SettingsProgress(SettingsState.APPLIED, f"the agent applied settings {short}")
        return SettingsProgress(SettingsState.APPLYING, f"the agent is applying settings {short}")
    if not connected:
        return SettingsProgress(
            SettingsState.PENDING, f"settings {short} are sent when it connects"
        )
    if sent:
        if capabilities and not capabilities & REPORTS_SETTINGS_STATUS:
            text = f"settings {short} sent; the agent does not report ConnectionSettingsStatus"
            return SettingsProgress(SettingsState.APPLYING, text)
        return SettingsProgress(SettingsState.APPLYING, f"settings {short} sent; waiting for it")
    return SettingsProgress(SettingsState.PENDING, f"settings {short} are sent with the next reply")
