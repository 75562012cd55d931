"""How messages and peers are named in metrics and logs."""

from __future__ import annotations

from typing import Final

from opamp_operator.opamp.messages import AgentToServer

# Fields that make a message more than a heartbeat (flags too: a request is a report).
_REPORT_FIELDS: Final = frozenset(
    {
        "flags",
        "agent_description",
        "health",
        "effective_config",
        "remote_config_status",
        "package_statuses",
        "connection_settings_request",
        "custom_capabilities",
        "custom_message",
        "available_components",
        "connection_settings_status",
    }
)


def message_kind(message: AgentToServer) -> str:
    """ "disconnect", "report" (it carries state), or "heartbeat" (it carries none)."""
    # One walk over the fields set (two for a heartbeat) instead of a HasField per name.
    kind = "heartbeat"
    for field, _ in message.ListFields():
        name = field.name
        if name == "agent_disconnect":
            return "disconnect"
        if name in _REPORT_FIELDS:
            kind = "report"
    return kind


def remote_addr(peername: object) -> str:
    """`host:port` (`[v6]:port`) from a socket's peername; `unknown` when there is none."""
    if isinstance(peername, tuple) and len(peername) >= 2:
        host, port = peername[0], peername[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    if isinstance(peername, str) and peername:
        return peername
    return "unknown"
