"""What a simulation run does: one frozen SimulationConfig, validated on construction.

Also the loopback rule: load is only ever aimed at this machine, so by default
every address the target host resolves to must be in 127.0.0.0/8 or ::1.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import urlsplit, urlunsplit

Transport = Literal["ws", "http"]

#: No run opens more connections than this, whatever max_connections says.
MAX_CONNECTIONS_CAP: Final = 20_000
#: Used when neither --heartbeat nor the server says how often to report.
DEFAULT_HEARTBEAT_S: Final = 30.0
#: A run longer than a day is a mistake, not a benchmark.
MAX_DURATION_S: Final = 86_400.0

_SCHEME_TRANSPORT: Final[dict[str, Transport]] = {
    "ws": "ws",
    "wss": "ws",
    "http": "http",
    "https": "http",
}
# Switching transport keeps TLS-ness: ws <-> http, wss <-> https.
_SWITCHED_SCHEME: Final = {"ws": "http", "wss": "https", "http": "ws", "https": "wss"}

#: (host, port) -> every address it resolves to.
Resolver = Callable[[str, int], Awaitable[list[str]]]


class SimulationConfigError(ValueError):
    """A simulation setting is out of range, inconsistent, or aims at a non-loopback host."""


@dataclass(frozen=True)
class SimulationConfig:
    """Settings of one simulator run. Times are seconds; rates are per second."""

    url: str
    agents: int = 10
    #: "ws" or "http"; None: from the URL scheme. A transport that disagrees with
    #: the scheme switches the scheme (ws:// <-> http://), host and path kept.
    transport: Transport | None = None
    #: Fixed heartbeat interval; None: the server's offer, else DEFAULT_HEARTBEAT_S.
    heartbeat: float | None = None
    #: Agents started per second; 0 starts them all at once.
    ramp: float = 100.0
    #: Length of the load phase; the run then stops within duration + stop_grace + 1.
    duration: float = 60.0
    #: Disconnects per second across the fleet (AgentDisconnect, close, come back).
    churn: float = 0.0
    #: Mean pause before a churned agent reconnects (jittered +-50 %).
    churn_delay: float = 1.0
    #: Agents that go silent (stop sending, keep the socket open); count or fraction.
    #: Over HTTP there is no socket to keep: a silent agent just stops polling.
    silent_count: int = 0
    silent_fraction: float = 0.0
    #: When they go silent, after the start; None: half the duration.
    silent_after: float | None = None
    #: Silent WebSocket agents also stop reading (no pongs), like a frozen process.
    silent_freeze: bool = False
    token: str | None = None
    max_connections: int = 10_000
    #: Size of the shared HTTP connection pool.
    http_connections: int = 100
    loopback_only: bool = True
    #: service.name is "<name_prefix>-<group>" with agents spread over `groups`.
    name_prefix: str = "sim"
    groups: int = 1
    service_version: str = "1.0.0"
    seed: int | None = None
    stop_grace: float = 5.0
    connect_timeout: float = 10.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    #: Freeze the garbage collector's view of the heap during the ramp (process-wide;
    #: see simulator.gctune). The `simulate` command turns it on.
    tune_gc: bool = False

    def __post_init__(self) -> None:
        _check_url(self.url)
        if self.transport not in (None, "ws", "http"):
            raise SimulationConfigError(f"transport must be ws or http, not {self.transport!r}")
        _positive("agents", self.agents)
        _positive("max_connections", self.max_connections)
        _positive("http_connections", self.http_connections)
        if self.max_connections > MAX_CONNECTIONS_CAP:
            raise SimulationConfigError(
                f"max_connections {self.max_connections} is over the cap of {MAX_CONNECTIONS_CAP}"
            )
        if self.agents > self.max_connections:
            raise SimulationConfigError(
                f"{self.agents} agents exceed max_connections {self.max_connections}"
            )
        if self.http_connections > self.max_connections:
            raise SimulationConfigError("http_connections exceeds max_connections")
        self._check_times()
        self._check_silent()
        if self.token is not None and (not self.token or not self.token.isprintable()):
            raise SimulationConfigError("token must be non-empty printable text")
        if not self.name_prefix or not self.name_prefix.isprintable():
            raise SimulationConfigError("name_prefix must be non-empty printable text")
        _positive("groups", self.groups)

    def _check_times(self) -> None:
        if not 0 < self.duration <= MAX_DURATION_S:
            raise SimulationConfigError(f"duration must be in (0, {MAX_DURATION_S:g}] seconds")
        if self.heartbeat is not None and not 0.05 <= self.heartbeat <= 86_400:
            raise SimulationConfigError("heartbeat must be between 0.05 and 86400 seconds")
        for name in ("ramp", "churn", "churn_delay"):
            if not getattr(self, name) >= 0:  # also rejects NaN
                raise SimulationConfigError(f"{name} must not be negative")
        for name in ("stop_grace", "connect_timeout", "backoff_initial", "backoff_max"):
            if not getattr(self, name) > 0:
                raise SimulationConfigError(f"{name} must be positive")
        if self.backoff_max < self.backoff_initial:
            raise SimulationConfigError("backoff_max must be at least backoff_initial")

    def _check_silent(self) -> None:
        if self.silent_count and self.silent_fraction:
            raise SimulationConfigError("give silent_count or silent_fraction, not both")
        if not 0 <= self.silent_count <= self.agents:
            raise SimulationConfigError("silent_count must be between 0 and agents")
        if not 0.0 <= self.silent_fraction <= 1.0:
            raise SimulationConfigError("silent_fraction must be between 0 and 1")
        if self.silent_after is not None and not 0 <= self.silent_after <= self.duration:
            raise SimulationConfigError("silent_after must be between 0 and duration")

    @property
    def effective_transport(self) -> Transport:
        """The transport in use: the explicit one, else the URL scheme's."""
        if self.transport is not None:
            return self.transport
        return _SCHEME_TRANSPORT[urlsplit(self.url).scheme.lower()]

    @property
    def effective_url(self) -> str:
        """The URL to dial, its scheme switched when `transport` disagrees with it."""
        parts = urlsplit(self.url)
        scheme = parts.scheme.lower()
        if _SCHEME_TRANSPORT[scheme] == self.effective_transport:
            return self.url
        return urlunsplit(parts._replace(scheme=_SWITCHED_SCHEME[scheme]))

    @property
    def silent_agents(self) -> int:
        """How many agents go silent."""
        if self.silent_count:
            return self.silent_count
        return round(self.silent_fraction * self.agents)

    @property
    def silent_at(self) -> float:
        """Seconds after the start at which the silent agents stop sending."""
        return self.duration / 2 if self.silent_after is None else self.silent_after


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise SimulationConfigError(f"{name} must be at least 1, not {value}")


def _check_url(url: str) -> None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise SimulationConfigError(f"not a valid URL: {url!r} ({exc})") from None
    if parts.scheme.lower() not in _SCHEME_TRANSPORT:
        raise SimulationConfigError(f"URL scheme must be ws, wss, http or https: {url!r}")
    if not parts.hostname:
        raise SimulationConfigError(f"URL has no host: {url!r}")
    del port  # parsed only to reject a malformed port early


# ---------------------------------------------------------------------------
# Loopback rule
# ---------------------------------------------------------------------------


def is_loopback_address(address: str) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped 127.x; False for anything else or junk."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


async def resolve_host(host: str, port: int) -> list[str]:
    """Every address `host` resolves to, without blocking the event loop."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def ensure_loopback(url: str, resolve: Resolver = resolve_host) -> None:
    """Raise SimulationConfigError unless every address of the URL's host is loopback."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme.lower() in ("wss", "https") else 80)
    try:
        addresses = await resolve(host, port)
    except OSError as exc:
        raise SimulationConfigError(f"cannot resolve {host!r}: {exc}") from None
    if not addresses:
        raise SimulationConfigError(f"{host!r} resolves to no address")
    remote = sorted({a for a in addresses if not is_loopback_address(a)})
    if remote:
        raise SimulationConfigError(
            f"refusing to load {host!r}: it resolves to non-loopback {', '.join(remote)}; "
            "the simulator only targets 127.0.0.0/8 or ::1"
        )
