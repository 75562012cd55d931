"""What a simulated agent says and how it reads the server's answers (pure, no I/O).

Messages follow the OpAMP rules for a status-reporting agent: instance_uid,
sequence_num and capabilities on every message; the description, health,
effective config and remote config status on the first message of a
connection and whenever the server sets ServerToAgentFlags_ReportFullState.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from typing import Final

from opamp_operator.opamp.generated import opamp_pb2
from opamp_operator.opamp.generated.anyvalue_pb2 import AnyValue, KeyValue
from opamp_operator.opamp.generated.opamp_pb2 import (
    AgentConfigFile,
    AgentConfigMap,
    AgentDescription,
    AgentDisconnect,
    AgentToServer,
    ComponentHealth,
    EffectiveConfig,
    RemoteConfigStatus,
    ServerToAgent,
)

#: What every simulated agent declares.
CAPABILITIES: Final = (
    int(opamp_pb2.AgentCapabilities_ReportsStatus)
    | int(opamp_pb2.AgentCapabilities_AcceptsRemoteConfig)
    | int(opamp_pb2.AgentCapabilities_ReportsEffectiveConfig)
    | int(opamp_pb2.AgentCapabilities_ReportsHealth)
    | int(opamp_pb2.AgentCapabilities_ReportsRemoteConfig)
    | int(opamp_pb2.AgentCapabilities_ReportsHeartbeat)
)

_REPORT_FULL_STATE: Final = int(opamp_pb2.ServerToAgentFlags_ReportFullState)
_ERROR_KINDS: Final = {
    int(opamp_pb2.ServerErrorResponseType_Unknown): "server_error_unknown",
    int(opamp_pb2.ServerErrorResponseType_BadRequest): "server_bad_request",
    int(opamp_pb2.ServerErrorResponseType_Unavailable): "server_unavailable",
}

#: The configuration an agent runs before the server sends one (shared, never mutated).
DEFAULT_CONFIG: Final = AgentConfigMap(
    config_map={
        "": AgentConfigFile(
            body=b"receivers:\n  otlp: {}\nexporters:\n  debug: {}\n", content_type="text/yaml"
        )
    }
)


def new_instance_uid(unix_ms: int, rng: random.Random) -> bytes:
    """A UUIDv7 (RFC 9562): 48-bit Unix milliseconds, version 7, variant 10, 74 random bits."""
    value = (unix_ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= rng.getrandbits(12) << 64
    value |= 0b10 << 62
    value |= rng.getrandbits(62)
    return value.to_bytes(16, "big")


def _kv(key: str, text: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=text))


@dataclass(frozen=True, slots=True)
class Identity:
    """The fleet-wide facts each agent's description is built from."""

    name_prefix: str = "sim"
    groups: int = 1
    service_version: str = "1.0.0"
    #: Unix nanoseconds the simulated agents "started" (health start time).
    start_time_ns: int = 0

    def service_name(self, index: int) -> str:
        return f"{self.name_prefix}-{index % self.groups}"

    def host_name(self, index: int) -> str:
        return f"{self.name_prefix}-host-{index:05d}"

    def description(self, index: int, uid: bytes) -> AgentDescription:
        return AgentDescription(
            identifying_attributes=[
                _kv("service.name", self.service_name(index)),
                _kv("service.version", self.service_version),
                _kv("service.instance.id", str(uuid.UUID(bytes=uid))),
            ],
            non_identifying_attributes=[
                _kv("host.name", self.host_name(index)),
                _kv("os.type", "linux"),
            ],
        )


def heartbeat_message(uid: bytes, seq: int) -> AgentToServer:
    """The smallest valid message: it says 'still here' and nothing changed."""
    return AgentToServer(instance_uid=uid, sequence_num=seq, capabilities=CAPABILITIES)


def full_state_message(
    identity: Identity,
    index: int,
    uid: bytes,
    seq: int,
    *,
    config_hash: bytes = b"",
    config: AgentConfigMap | None = None,
) -> AgentToServer:
    """Everything the agent can report: description, health, effective config, config status."""
    message = heartbeat_message(uid, seq)
    message.agent_description.CopyFrom(identity.description(index, uid))
    message.health.CopyFrom(
        ComponentHealth(healthy=True, status="running", start_time_unix_nano=identity.start_time_ns)
    )
    add_config_status(message, config_hash, config)
    return message


def add_config_status(
    message: AgentToServer, config_hash: bytes, config: AgentConfigMap | None
) -> None:
    """Report the running config and, once a remote config was applied, its status."""
    message.effective_config.CopyFrom(EffectiveConfig(config_map=config or DEFAULT_CONFIG))
    status = opamp_pb2.RemoteConfigStatuses_APPLIED if config_hash else None
    if status is None:
        message.remote_config_status.CopyFrom(RemoteConfigStatus())
    else:
        message.remote_config_status.CopyFrom(
            RemoteConfigStatus(last_remote_config_hash=config_hash, status=status)
        )


def config_status_message(
    uid: bytes, seq: int, config_hash: bytes, config: AgentConfigMap | None
) -> AgentToServer:
    """The answer to an applied remote config: new effective config and APPLIED."""
    message = heartbeat_message(uid, seq)
    add_config_status(message, config_hash, config)
    return message


def disconnect_message(uid: bytes, seq: int) -> AgentToServer:
    """The last message before a graceful goodbye."""
    message = heartbeat_message(uid, seq)
    message.agent_disconnect.CopyFrom(AgentDisconnect())
    return message


@dataclass(frozen=True, slots=True)
class Reply:
    """What a ServerToAgent asks of the agent."""

    report_full_state: bool = False
    #: Offered heartbeat interval in seconds; None: no offer; 0: heartbeats off.
    heartbeat_s: float | None = None
    #: "server_unavailable", "server_bad_request", "server_error_unknown" or None.
    error: str | None = None
    #: Seconds to wait before retrying (Unavailable with RetryInfo).
    retry_after_s: float | None = None
    #: A remote config whose hash differs from the agent's current one: (hash, config).
    remote_config: tuple[bytes, AgentConfigMap] | None = None
    new_instance_uid: bytes | None = None


def read_reply(message: ServerToAgent, current_config_hash: bytes = b"") -> Reply:
    """Turn a ServerToAgent into the few decisions the simulator acts on."""
    heartbeat: float | None = None
    if message.HasField("connection_settings") and message.connection_settings.HasField("opamp"):
        # As opamp-go does: present OpAMP settings always set the interval, 0 meaning off.
        heartbeat = float(message.connection_settings.opamp.heartbeat_interval_seconds)
    error: str | None = None
    retry_after: float | None = None
    if message.HasField("error_response"):
        response = message.error_response
        error = _ERROR_KINDS.get(int(response.type), "server_error_unknown")
        if response.HasField("retry_info"):
            retry_after = response.retry_info.retry_after_nanoseconds / 1e9
    remote: tuple[bytes, AgentConfigMap] | None = None
    if message.HasField("remote_config"):
        offered = message.remote_config
        # The body is left out when unchanged; without it there is nothing to apply.
        fresh = offered.config_hash and offered.config_hash != current_config_hash
        if fresh and offered.HasField("config"):
            remote = (bytes(offered.config_hash), offered.config)
    new_uid: bytes | None = None
    if message.HasField("agent_identification"):
        candidate = bytes(message.agent_identification.new_instance_uid)
        new_uid = candidate if len(candidate) == 16 else None
    return Reply(
        report_full_state=bool(message.flags & _REPORT_FULL_STATE),
        heartbeat_s=heartbeat,
        error=error,
        retry_after_s=retry_after,
        remote_config=remote,
        new_instance_uid=new_uid,
    )
