"""One typed settings object, built from flags and environment in `cli`, passed everywhere."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Final


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names it."""


#: The heartbeat timeout should be at least this many offered heartbeat intervals.
SAFE_TIMEOUT_MULTIPLE = 2.0
#: The interval common agents use whatever is offered (the Collector's opamp extension).
COMMON_AGENT_INTERVAL_SECONDS = 30.0


@dataclass(frozen=True)
class FleetSettings:
    heartbeat_interval_seconds: float = 30.0
    heartbeat_timeout_seconds: float = 60.0
    error_after_offline_seconds: float = 300.0
    max_agents: int = 50_000
    registrations_per_second: float = 200.0
    registration_burst: int = 500
    # Agents Offline/Error this long are dropped from memory (CR and rows stay); they no
    # longer count anywhere here, and a reconnect registers them again.
    forget_after_seconds: float = 3600.0

    def __post_init__(self) -> None:
        if self.heartbeat_interval_seconds <= 0:
            raise ConfigError("heartbeat interval must be > 0 seconds")
        if self.heartbeat_timeout_seconds <= self.heartbeat_interval_seconds:
            raise ConfigError(
                f"heartbeat timeout ({self.heartbeat_timeout_seconds}s) must exceed the "
                f"heartbeat interval ({self.heartbeat_interval_seconds}s)"
            )
        if self.error_after_offline_seconds <= 0:
            raise ConfigError("error-after-offline threshold must be > 0 seconds")
        if self.max_agents < 1 or self.registrations_per_second <= 0:
            raise ConfigError("max agents and registrations per second must be positive")
        if self.forget_after_seconds <= 0:
            raise ConfigError("forget-after must be > 0 seconds")

    def warnings(self) -> list[str]:
        """Settings that work but make real agents flap; logged once at start."""
        found = []
        safe = SAFE_TIMEOUT_MULTIPLE * self.heartbeat_interval_seconds
        if self.heartbeat_timeout_seconds < safe:
            found.append(
                f"heartbeat timeout ({self.heartbeat_timeout_seconds:g}s) is below "
                f"{SAFE_TIMEOUT_MULTIPLE:g}x the offered heartbeat interval "
                f"({self.heartbeat_interval_seconds:g}s): one late heartbeat ends a session"
            )
        if self.heartbeat_timeout_seconds <= COMMON_AGENT_INTERVAL_SECONDS:
            found.append(
                f"heartbeat timeout ({self.heartbeat_timeout_seconds:g}s) is at most "
                f"{COMMON_AGENT_INTERVAL_SECONDS:g}s: HTTP agents that poll at their own "
                "interval (the Collector's opamp extension: 30s) will flap"
            )
        return found


#: `ListenerSettings.websocket_framing` choices; the first is the default.
WEBSOCKET_FRAMINGS: Final = ("own", "websockets")


@dataclass(frozen=True)
class ListenerSettings:
    """The OpAMP listener: one port for WebSocket and plain HTTP on `path`."""

    host: str = "0.0.0.0"
    port: int = 4320
    path: str = "/v1/opamp"
    #: Largest message accepted, in bytes: a WebSocket message, an HTTP body (after gunzip).
    max_message_bytes: int = 4 * 1024 * 1024
    #: Largest HTTP request head (request line + headers) read before routing; else 431.
    max_head_bytes: int = 16 * 1024
    #: A new connection must have sent its first OpAMP message (WebSocket) or its whole
    #: request (HTTP) within this many seconds of being accepted.
    handshake_timeout_seconds: float = 10.0
    ping_interval_seconds: float = 20.0
    ping_timeout_seconds: float = 20.0
    #: How long a WebSocket closing handshake may take before the TCP connection is dropped.
    close_timeout_seconds: float = 5.0
    #: Idle HTTP keep-alive connections are closed after this long.
    http_keepalive_seconds: float = 75.0
    #: Agent connections at once (WebSocket sessions, HTTP connections, heads being read);
    #: past it new ones get 503 and Retry-After. None: from the open-files limit at start
    #: (fdlimit.py), which the operator raises to its hard limit.
    max_connections: int | None = None
    #: `OpAMPListener.stop` waits at most this long for connections to close.
    stop_timeout_seconds: float = 10.0
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    agent_tokens: frozenset[str] = frozenset()
    #: Accept agents' projected ServiceAccount tokens (TokenReview), bound to their Pod.
    agent_serviceaccount_tokens: bool = False
    #: The audience those tokens must be issued for (the projected volume's `audience`).
    agent_token_audience: str = "opamp-operator"
    #: How long a TokenReview of an agent's token is reused (seconds; 0: every time).
    agent_token_cache_seconds: float = 60.0
    #: Who frames WebSocket messages: our own RFC 6455 server (transport/ownws.py: 1.6x
    #: less CPU per message, docs/framing.md), or the websockets library (the fallback).
    websocket_framing: str = "own"

    def __post_init__(self) -> None:
        if self.websocket_framing not in WEBSOCKET_FRAMINGS:
            choices = ", ".join(WEBSOCKET_FRAMINGS)
            raise ConfigError(
                f"websocket framing must be one of {choices}: {self.websocket_framing!r}"
            )
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"listener port must be 0..65535 (0: any free port), got {self.port}")
        if not self.path.startswith("/"):
            raise ConfigError(f"listener path must start with '/': {self.path!r}")
        if self.max_message_bytes < 1 or self.max_head_bytes < 1024:
            raise ConfigError("max message bytes must be >= 1 and max head bytes >= 1024")
        if self.max_connections is not None and self.max_connections < 1:
            raise ConfigError(f"max connections must be >= 1, got {self.max_connections}")
        timeouts = (
            self.handshake_timeout_seconds,
            self.ping_interval_seconds,
            self.ping_timeout_seconds,
            self.close_timeout_seconds,
            self.http_keepalive_seconds,
            self.stop_timeout_seconds,
        )
        if any(t <= 0 for t in timeouts):
            raise ConfigError("listener timeouts and intervals must be > 0 seconds")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ConfigError("TLS needs both a certificate file and a key file")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ConfigError("a TLS client CA (mTLS) needs a server certificate and key")
        if any(not token for token in self.agent_tokens):
            raise ConfigError("agent tokens must not be empty strings")
        if not self.agent_token_audience.strip():
            raise ConfigError("the agent token audience must not be empty")
        if not 0 <= self.agent_token_cache_seconds <= 3600:
            raise ConfigError("the agent token cache must be 0..3600 seconds")

    @property
    def tls(self) -> bool:
        return self.tls_cert_file is not None


@dataclass(frozen=True)
class StoreSettings:
    dsn: str | None = None
    migrate_on_start: bool = True
    # None: $OPAMP_OPERATOR_MIGRATIONS, else the repository's migrations/ directory.
    migrations_dir: Path | None = None
    migration_lock_timeout_seconds: float = 120.0
    flush_interval_seconds: float = 1.0
    # A new session's row is committed before the agent's first reply: the writer commits
    # what waits within `commit_window_seconds` in one transaction, and a reply waits at
    # most `session_commit_wait_seconds` (then it goes out, counted as unconfirmed).
    commit_window_seconds: float = 0.005
    session_commit_wait_seconds: float = 2.0
    # Bound of the writer's in-memory buffer (history events + agents with a last_seen
    # waiting); beyond it last_seen updates are shed first, then history events.
    queue_size: int = 200_000
    pool_min_size: int = 1
    pool_max_size: int = 5
    connect_timeout_seconds: float = 5.0
    command_timeout_seconds: float = 15.0
    max_backoff_seconds: float = 10.0
    # Without writes, the writer pings this often so `ready` stays meaningful.
    ping_interval_seconds: float = 5.0
    # `ready` is False once no write or ping has succeeded for this long.
    ready_window_seconds: float = 30.0
    # How long `stop()` may spend writing what is still pending.
    stop_timeout_seconds: float = 10.0
    # Connection history and transitions older than this are deleted (None: kept forever),
    # `retention_batch` rows per statement, a pass every `retention_interval_seconds`.
    history_retention_seconds: float | None = 30 * 86400.0
    retention_batch: int = 5000
    retention_interval_seconds: float = 600.0

    def __post_init__(self) -> None:
        if self.flush_interval_seconds <= 0:
            raise ConfigError("store flush interval must be > 0 seconds")
        if self.queue_size < 1:
            raise ConfigError("store queue size must be >= 1")
        if not 0 <= self.pool_min_size <= self.pool_max_size or self.pool_max_size < 1:
            raise ConfigError(
                f"store pool sizes must satisfy 0 <= min ({self.pool_min_size}) "
                f"<= max ({self.pool_max_size}), max >= 1"
            )
        timeouts = (
            self.connect_timeout_seconds, self.command_timeout_seconds,
            self.max_backoff_seconds, self.ping_interval_seconds,
            self.ready_window_seconds, self.stop_timeout_seconds,
            self.migration_lock_timeout_seconds, self.commit_window_seconds,
            self.session_commit_wait_seconds,
        )  # fmt: skip
        if min(timeouts) <= 0:
            raise ConfigError("store timeouts, backoff and intervals must be > 0 seconds")
        retention = self.history_retention_seconds
        if retention is not None and retention <= 0:
            raise ConfigError("history retention must be > 0 seconds, or unset to keep history")
        if self.retention_batch < 1 or self.retention_interval_seconds <= 0:
            raise ConfigError("retention batch and interval must be positive")


@dataclass(frozen=True)
class KubeSettings:
    namespace: str = "opamp-system"
    kubeconfig: Path | None = None  # None: in-cluster credentials, else the default kubeconfig
    # Periodic status.lastSeenAt refresh of steady agents (None: off, CRs are written on
    # change only; a replica's Lease proves its agents alive). On: N / this writes per second.
    last_seen_refresh_seconds: float | None = None
    writes_per_second: float = 20.0  # every API write (create, patch, event, delete)
    write_queue_size: int = 50_000  # agents waiting for a CR write; when full: resync later
    # Delete CRs Offline/Error this long (None: keep). 14 days: when Elastic Fleet calls
    # agents inactive; their history stays in PostgreSQL for its own retention.
    gc_ttl_seconds: float | None = 14 * 86400.0
    replica_id: str = "local"
    api_threads: int = 4  # API requests at once in a batch (liveness reads, adoption writes)
    request_timeout_seconds: float = 15.0
    sweep_interval_seconds: float = 5.0  # how often stale lastSeenAt values are looked for
    liveness_check_interval_seconds: float = 5.0  # how often due CRs are re-checked
    retry_max_seconds: float = 30.0  # backoff cap for failed writes
    stop_timeout_seconds: float = 10.0  # how long stop() flushes pending writes
    post_events: bool = True
    # Link agents that report k8s.pod.* attributes to their Pod (needs read access to Pods
    # where they run); a deleted Pod makes its agent Offline and removes its CR.
    link_pods: bool = True
    # This replica's Lease (docs/reliability.md, "Replica Leases"): renewed this often, and
    # its replica counts as lost when it was not renewed for `lease_duration_seconds`.
    lease_duration_seconds: float = 40.0
    lease_renew_interval_seconds: float = 10.0
    # Adoption pauses while more than half of the replicas' Leases expired within one Lease
    # duration (a disruption, not lost replicas); it resumes after this long regardless.
    adoption_pause_limit_seconds: float = 600.0

    def __post_init__(self) -> None:
        refresh = self.last_seen_refresh_seconds
        positive = {
            "last-seen refresh": 1.0 if refresh is None else refresh,
            "lease duration": self.lease_duration_seconds,
            "lease renew interval": self.lease_renew_interval_seconds,
            "adoption pause limit": self.adoption_pause_limit_seconds,
            "writes per second": self.writes_per_second,
            "write queue size": self.write_queue_size,
            "api threads": self.api_threads,
            "request timeout": self.request_timeout_seconds,
            "sweep interval": self.sweep_interval_seconds,
            "liveness check interval": self.liveness_check_interval_seconds,
            "retry backoff cap": self.retry_max_seconds,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ConfigError(f"kube {name} must be > 0 (got {value})")
        if self.gc_ttl_seconds is not None and self.gc_ttl_seconds <= 0:
            raise ConfigError("kube GC TTL must be > 0 seconds, or unset to keep CRs")
        if self.stop_timeout_seconds < 0:
            raise ConfigError("kube stop timeout must be >= 0 seconds")
        if self.lease_renew_interval_seconds * 2 > self.lease_duration_seconds:
            raise ConfigError(
                f"lease renew interval ({self.lease_renew_interval_seconds}s) must be at most "
                f"half the lease duration ({self.lease_duration_seconds}s)"
            )


@dataclass(frozen=True)
class ApiSettings:
    host: str = "0.0.0.0"
    port: int = 8080  # 0: any free port (tests)
    auth_enabled: bool = True
    auth_cache_seconds: float = 10.0  # how long a TokenReview/SubjectAccessReview answer is kept
    auth_cache_size: int = 4096  # cached (token, verb) decisions; least recently used go first
    auth_workers: int = 4  # threads calling the (synchronous) Kubernetes client for reviews
    auth_max_pending: int = 64  # reviews waiting for a thread; beyond that: 503 + Retry-After
    auth_timeout_seconds: float = 5.0  # per review request to the Kubernetes API
    page_size: int = 100  # default `limit` of paged lists
    max_page_size: int = 1000

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"api port must be 0..65535, got {self.port}")
        if self.auth_cache_seconds < 0 or self.auth_cache_size < 0:
            raise ConfigError("api auth cache seconds and size must be >= 0")
        if self.auth_workers < 1 or self.auth_max_pending < 1 or self.auth_timeout_seconds <= 0:
            raise ConfigError("api auth workers, max pending and timeout must be positive")
        if not 1 <= self.page_size <= self.max_page_size:
            raise ConfigError(
                f"api page size ({self.page_size}) must be 1..max page size ({self.max_page_size})"
            )


@dataclass(frozen=True)
class CollectorSettings:
    """The collector policy (gcpolicy.py): freeze the settled heap, thaw after churn."""

    #: freeze once fewer sessions opened over this long than would thaw (None: never)
    freeze_settle_seconds: float | None = 60.0
    # Sessions ended since the freeze, as a fraction of the fleet. A backstop: an ended
    # session leaves nothing cyclic (transport/cycles.py); it was 0.1 while each left ~7
    # objects in cycles, and thawed every 1,000 sessions at 10,000 agents (0.6-1.1 s each).
    thaw_churn: float = 1.0
    min_thaw_sessions: int = 1000  # ... but at least this many (small fleets churn freely)
    check_interval_seconds: float = 5.0

    def __post_init__(self) -> None:
        if self.freeze_settle_seconds is not None and self.freeze_settle_seconds < 0:
            raise ConfigError("gc freeze settle time must be >= 0 seconds (or off)")
        if self.thaw_churn <= 0 or self.min_thaw_sessions < 1:
            raise ConfigError("gc thaw churn and its minimum must be positive")
        if self.check_interval_seconds <= 0:
            raise ConfigError("gc check interval must be > 0 seconds")


@dataclass(frozen=True)
class ProcessSettings:
    event_loop: str = "asyncio"  # or "uvloop", when installed (eventloop.py)
    #: SIGTERM to exit: closing sessions takes at most half of it, the history flush what it
    #: needs (bounded by the store's own stop timeout: history first), the CR writer the
    #: rest. What the CR writer leaves is written by the replica that adopts our Lease, or
    #: by the next process. 8 s leaves room in a Deployment's default 30 s grace period.
    shutdown_seconds: float = 8.0

    def __post_init__(self) -> None:
        if self.shutdown_seconds <= 0:
            raise ConfigError("shutdown timeout must be > 0 seconds")


@dataclass(frozen=True)
class Settings:
    fleet: FleetSettings = field(default_factory=FleetSettings)
    listener: ListenerSettings = field(default_factory=ListenerSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    kube: KubeSettings = field(default_factory=KubeSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    gc: CollectorSettings = field(default_factory=CollectorSettings)
    process: ProcessSettings = field(default_factory=ProcessSettings)
