"""When a WebSocket is pinged next: the policy both framings share (see
`OpAMPConnection.start_keepalive` for why agents judged by their heartbeats are spared)."""

from __future__ import annotations

from opamp_operator.config import FleetSettings, ListenerSettings


def quiet_before_ping(fleet: FleetSettings, listener: ListenerSettings) -> float:
    """How long an agent judged by its heartbeats may be quiet before it is pinged."""
    return max(fleet.heartbeat_timeout_seconds, listener.ping_interval_seconds)


def ping_due(
    pinged_at: float, heard_at: float, quiet_seconds: float | None, interval: float
) -> float:
    """Loop time of the next ping. Judged by its connection (`quiet_seconds` None): every
    `interval` after the last pong. Judged by its heartbeats: once quiet that long, since its
    messages prove it alive as pongs do."""
    if quiet_seconds is None:
        return pinged_at + interval
    return max(pinged_at, heard_at) + quiet_seconds
