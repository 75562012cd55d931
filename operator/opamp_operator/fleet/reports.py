"""What an AgentToServer message reports, turned into plain data (no state, no I/O)."""

from __future__ import annotations

from typing import Any

from opamp_operator.opamp.generated import opamp_pb2

from .remoteconfig import EFFECTIVE_HASH_CHARS, config_digest

_MAX_HEALTH_DEPTH = 4  # deeper component trees are cut: the CR has to stay small


def health_to_dict(health: Any, depth: int = 0) -> dict[str, Any]:
    result: dict[str, Any] = {"healthy": bool(health.healthy)}
    if health.status:
        result["status"] = health.status
    if health.last_error:
        result["lastError"] = health.last_error
    if health.start_time_unix_nano:
        result["startTimeUnixNano"] = str(health.start_time_unix_nano)
    if depth < _MAX_HEALTH_DEPTH and health.component_health_map:
        result["components"] = {
            name: health_to_dict(child, depth + 1)
            for name, child in sorted(health.component_health_map.items())
        }
    return result


def remote_config_status_to_dict(status: Any) -> dict[str, Any]:
    return {
        "lastRemoteConfigHash": bytes(status.last_remote_config_hash).hex(),
        "status": _remote_config_status_name(status.status),
        "errorMessage": status.error_message,
    }


def _remote_config_status_name(number: opamp_pb2.RemoteConfigStatuses.ValueType) -> str:
    # Enums are open on the wire: a value we do not know (a newer agent, a broken one) is
    # shown as such; Name() would raise and fail the agent's whole message.
    names = opamp_pb2.RemoteConfigStatuses
    if number not in names.values():
        return f"UNKNOWN_{number}"
    return names.Name(number).removeprefix("RemoteConfigStatuses_")


def effective_config_hash(effective_config: Any) -> str:
    """A stable hash of the agent's effective config (the protocol carries no hash of it).

    The same digest as a `DesiredConfig` of the same files, cut to 16 hex digits.
    """
    files = effective_config.config_map.config_map.items()
    digest = config_digest((name, file.content_type, bytes(file.body)) for name, file in files)
    return digest.hex()[:EFFECTIVE_HASH_CHARS]
