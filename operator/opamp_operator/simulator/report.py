"""The outcome of a simulator run: plain data, a text table and a JSON-ready dict."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType


@dataclass(frozen=True)
class SilentAgent:
    """One agent that went silent, with the times a benchmark needs.

    Monotonic times are CLOCK_MONOTONIC seconds (time.monotonic() in any process
    on this host); wall times are Unix seconds. Offline detection delay is the
    server's offline timestamp minus `last_message_*` (or `went_silent_*`).
    """

    instance_uid: str  # canonical UUID text
    went_silent_monotonic: float
    went_silent_wall: float
    #: When its last message was sent (None: it never sent one).
    last_message_monotonic: float | None
    last_message_wall: float | None
    #: When the server closed its silent connection (None: still open at the end).
    server_closed_monotonic: float | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "instance_uid": self.instance_uid,
            "went_silent_monotonic": self.went_silent_monotonic,
            "went_silent_wall": self.went_silent_wall,
            "went_silent_iso": _iso(self.went_silent_wall),
            "last_message_monotonic": self.last_message_monotonic,
            "last_message_wall": self.last_message_wall,
            "server_closed_monotonic": self.server_closed_monotonic,
        }


def _iso(wall: float | None) -> str | None:
    return None if wall is None else datetime.fromtimestamp(wall, UTC).isoformat()


@dataclass(frozen=True)
class SimulationReport:
    """Counts and latencies of one run. Latencies are milliseconds (None: no reply seen)."""

    url: str
    transport: str
    agents: int
    heartbeat: str  # "1s" or "server offer (default 30s)"
    duration_s: float  # configured load phase
    elapsed_s: float  # start to fully stopped
    peak_connected: int
    connected_at_end: int
    #: Seconds from the start until all agents were connected at once (None: never).
    all_connected_after_s: float | None
    messages_sent: int
    replies_received: int
    reconnects: int
    churn_disconnects: int
    full_state_requests: int
    heartbeats_late: int
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    latency_max_ms: float | None
    #: How late the simulator's own event loop woke up (its saturation).
    loop_lag_p99_ms: float | None
    loop_lag_max_ms: float | None
    errors: Mapping[str, int] = field(default_factory=dict)
    silent: tuple[SilentAgent, ...] = ()
    #: Monotonic and wall time of the start, to line the run up with server logs.
    started_monotonic: float = 0.0
    started_wall: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "errors", MappingProxyType(dict(self.errors)))

    @property
    def messages_per_second(self) -> float:
        return self.messages_sent / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict[str, object]:
        """Every field, JSON-serialisable."""
        return {
            "url": self.url,
            "transport": self.transport,
            "agents": self.agents,
            "heartbeat": self.heartbeat,
            "duration_s": self.duration_s,
            "elapsed_s": self.elapsed_s,
            "peak_connected": self.peak_connected,
            "connected_at_end": self.connected_at_end,
            "all_connected_after_s": self.all_connected_after_s,
            "messages_sent": self.messages_sent,
            "messages_per_second": round(self.messages_per_second, 1),
            "replies_received": self.replies_received,
            "reconnects": self.reconnects,
            "churn_disconnects": self.churn_disconnects,
            "full_state_requests": self.full_state_requests,
            "heartbeats_late": self.heartbeats_late,
            "latency_p50_ms": self.latency_p50_ms,
            "latency_p99_ms": self.latency_p99_ms,
            "latency_max_ms": self.latency_max_ms,
            "loop_lag_p99_ms": self.loop_lag_p99_ms,
            "loop_lag_max_ms": self.loop_lag_max_ms,
            "errors": dict(self.errors),
            "silent": [agent.to_dict() for agent in self.silent],
            "started_monotonic": self.started_monotonic,
            "started_wall": self.started_wall,
            "started_iso": _iso(self.started_wall),
        }

    def to_table(self) -> str:
        """A two-column text table for people; silent agents summarised, not listed."""
        errors = ", ".join(f"{k}={v}" for k, v in sorted(self.errors.items())) or "none"
        rows: list[tuple[str, str]] = [
            ("url", self.url),
            ("transport", self.transport),
            ("agents", str(self.agents)),
            ("heartbeat", self.heartbeat),
            ("duration / elapsed", f"{self.duration_s:g} s / {self.elapsed_s:.2f} s"),
            ("peak connected", str(self.peak_connected)),
            ("connected at end", str(self.connected_at_end)),
            ("all connected after", _seconds(self.all_connected_after_s)),
            ("messages sent", f"{self.messages_sent} ({self.messages_per_second:.1f}/s)"),
            ("replies received", str(self.replies_received)),
            ("reconnects", str(self.reconnects)),
            ("churn disconnects", str(self.churn_disconnects)),
            ("full state requests", str(self.full_state_requests)),
            ("late heartbeats", str(self.heartbeats_late)),
            ("reply latency p50", _millis(self.latency_p50_ms)),
            ("reply latency p99", _millis(self.latency_p99_ms)),
            ("reply latency max", _millis(self.latency_max_ms)),
            (
                "loop lag p99 / max",
                f"{_millis(self.loop_lag_p99_ms)} / {_millis(self.loop_lag_max_ms)}",
            ),
            ("errors", errors),
            ("silent agents", self._silent_summary()),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)

    def _silent_summary(self) -> str:
        if not self.silent:
            return "0"
        first = min(agent.went_silent_wall for agent in self.silent)
        closed = sum(agent.server_closed_monotonic is not None for agent in self.silent)
        return f"{len(self.silent)} from {_iso(first)}; closed by server: {closed}"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _millis(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} ms"
