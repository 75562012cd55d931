"""Every command-line flag and environment variable, in one table, and how they become Settings.

Precedence: flag, then environment variable, then the default in `config.py`.
`opamp-operator config-reference` prints this table as Markdown for the README.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import WEBSOCKET_FRAMINGS, ConfigError, Settings
from .eventloop import parse_loop


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _tokens_file(text: str) -> frozenset[str]:
    # Tokens come from a file (a mounted Secret), never from argv, where `ps` would show them.
    lines = Path(text).read_text().splitlines()
    return frozenset(line.strip() for line in lines if line.strip() and not line.startswith("#"))


def _framing(text: str) -> str:
    name = text.strip().lower()
    if name not in WEBSOCKET_FRAMINGS:
        raise ValueError(f"websocket framing must be one of {', '.join(WEBSOCKET_FRAMINGS)}")
    return name


def _optional_float(text: str) -> float | None:
    return None if text.strip().lower() in ("", "none", "off") else float(text)


@dataclass(frozen=True)
class Option:
    flag: str
    env: str
    section: str
    name: str
    parse: Callable[[str], Any]
    help: str


OPTIONS: tuple[Option, ...] = (
    Option("--listen-host", "OPAMP_LISTEN_HOST", "listener", "host", str, "OpAMP listener address"),
    Option("--listen-port", "OPAMP_LISTEN_PORT", "listener", "port", int,
           "OpAMP port: WebSocket and plain HTTP on the same port, path /v1/opamp"),
    Option("--max-message-bytes", "OPAMP_MAX_MESSAGE_BYTES", "listener", "max_message_bytes", int,
           "largest accepted AgentToServer (WebSocket frame or decompressed HTTP body)"),
    Option("--handshake-timeout", "OPAMP_HANDSHAKE_TIMEOUT", "listener",
           "handshake_timeout_seconds", float,
           "seconds a new connection may take to send its first message (and an HTTP "
           "request its head and body)"),
    Option("--ping-interval", "OPAMP_PING_INTERVAL", "listener", "ping_interval_seconds", float,
           "WebSocket ping interval for agents judged by their connection (seconds); agents "
           "claiming ReportsHeartbeat are pinged only once quiet for the heartbeat timeout"),
    Option("--ping-timeout", "OPAMP_PING_TIMEOUT", "listener", "ping_timeout_seconds", float,
           "WebSocket pong deadline; a silent peer is dropped after it (seconds)"),
    Option("--websocket-framing", "OPAMP_WEBSOCKET_FRAMING", "listener", "websocket_framing",
           _framing, "own: our RFC 6455 framing, or websockets: the websockets library, "
           "kept as the fallback for a release (measured in docs/framing.md)"),
    Option("--tls-cert-file", "OPAMP_TLS_CERT_FILE", "listener", "tls_cert_file", Path,
           "serve OpAMP over TLS with this certificate (PEM)"),
    Option("--tls-key-file", "OPAMP_TLS_KEY_FILE", "listener", "tls_key_file", Path,
           "private key for --tls-cert-file"),
    Option("--tls-client-ca-file", "OPAMP_TLS_CLIENT_CA_FILE", "listener", "tls_client_ca_file",
           Path, "require agent client certificates signed by this CA"),
    Option("--agent-tokens-file", "OPAMP_AGENT_TOKENS_FILE", "listener", "agent_tokens",
           _tokens_file, "file of accepted agent bearer tokens, one per line (off when unset)"),
    Option("--agent-serviceaccount-tokens", "OPAMP_AGENT_SERVICEACCOUNT_TOKENS", "listener",
           "agent_serviceaccount_tokens", _bool,
           "accept agents' projected ServiceAccount tokens, checked with TokenReview and bound "
           "to the Pod they name (needs create on tokenreviews)"),
    Option("--agent-token-audience", "OPAMP_AGENT_TOKEN_AUDIENCE", "listener",
           "agent_token_audience", str, "audience agents' ServiceAccount tokens must carry"),
    Option("--agent-token-cache", "OPAMP_AGENT_TOKEN_CACHE", "listener",
           "agent_token_cache_seconds", float,
           "how long a TokenReview of an agent's token is reused (seconds)"),
    Option("--heartbeat-interval", "OPAMP_HEARTBEAT_INTERVAL", "fleet",
           "heartbeat_interval_seconds", float, "heartbeat interval offered to agents (seconds)"),
    Option("--heartbeat-timeout", "OPAMP_HEARTBEAT_TIMEOUT", "fleet", "heartbeat_timeout_seconds",
           float, "silence after which an agent judged by heartbeats (plain HTTP, or claiming "
           "ReportsHeartbeat) is Offline; warned about below 2x the interval or at most 30s"),
    Option("--error-after-offline", "OPAMP_ERROR_AFTER_OFFLINE", "fleet",
           "error_after_offline_seconds", float, "time Offline after which an agent is Error"),
    Option("--max-agents", "OPAMP_MAX_AGENTS", "fleet", "max_agents", int,
           "Online agents one process accepts; beyond it new agents get UNAVAILABLE"),
    Option("--forget-after", "OPAMP_FORGET_AFTER", "fleet", "forget_after_seconds", float,
           "agents Offline/Error this long are dropped from memory; CR and history stay"),
    Option("--registrations-per-second", "OPAMP_REGISTRATIONS_PER_SECOND", "fleet",
           "registrations_per_second", float, "rate of new agents accepted"),
    Option("--registration-burst", "OPAMP_REGISTRATION_BURST", "fleet", "registration_burst", int,
           "new agents accepted at once above the rate"),
    Option("--database-dsn", "OPAMP_DATABASE_DSN", "store", "dsn", str,
           "PostgreSQL DSN (prefer the environment variable from a Secret)"),
    Option("--migrate-on-start", "OPAMP_MIGRATE_ON_START", "store", "migrate_on_start", _bool,
           "apply pending migrations at start"),
    Option("--pool-max-size", "OPAMP_DATABASE_POOL_MAX_SIZE", "store", "pool_max_size", int,
           "most PostgreSQL connections this process opens"),
    Option("--history-retention", "OPAMP_HISTORY_RETENTION", "store",
           "history_retention_seconds", _optional_float,
           "delete connection history and transitions older than this (seconds; off: keep)"),
    Option("--flush-interval", "OPAMP_FLUSH_INTERVAL", "store", "flush_interval_seconds", float,
           "seconds between batched database writes"),
    Option("--session-commit-wait", "OPAMP_SESSION_COMMIT_WAIT", "store",
           "session_commit_wait_seconds", float,
           "longest wait for a new session's history row before the agent's first reply"),
    Option("--namespace", "OPAMP_NAMESPACE", "kube", "namespace", str,
           "namespace of the OpAMPAgent resources"),
    Option("--kubeconfig", "KUBECONFIG", "kube", "kubeconfig", Path,
           "kubeconfig file (in-cluster config when unset)"),
    Option("--last-seen-refresh", "OPAMP_LAST_SEEN_REFRESH", "kube", "last_seen_refresh_seconds",
           _optional_float, "refresh status.lastSeenAt of steady agents this often (seconds; "
           "off: CRs are written on change only); costs N agents / this CR writes per second"),
    Option("--kube-writes-per-second", "OPAMP_KUBE_WRITES_PER_SECOND", "kube",
           "writes_per_second", float, "rate limit of CR writes"),
    Option("--gc-ttl", "OPAMP_GC_TTL", "kube", "gc_ttl_seconds", _optional_float,
           "delete CRs Offline/Error longer than this (seconds; `off`: keep them)"),
    Option("--liveness-check-interval", "OPAMP_LIVENESS_CHECK_INTERVAL", "kube",
           "liveness_check_interval_seconds", float,
           "how often CRs that no live session holds are checked for Offline/Error (seconds)"),
    Option("--lease-duration", "OPAMP_LEASE_DURATION", "kube", "lease_duration_seconds", float,
           "a replica whose Lease was not renewed this long is lost and adopted (seconds)"),
    Option("--lease-renew-interval", "OPAMP_LEASE_RENEW_INTERVAL", "kube",
           "lease_renew_interval_seconds", float,
           "how often this replica renews its Lease (seconds; at most half the duration)"),
    Option("--adoption-pause-limit", "OPAMP_ADOPTION_PAUSE_LIMIT", "kube",
           "adoption_pause_limit_seconds", float,
           "adoption pauses while more than half the Leases expired within one duration; "
           "it resumes after this long regardless (seconds)"),
    Option("--link-pods", "OPAMP_LINK_PODS", "kube", "link_pods", _bool,
           "link agents reporting k8s.pod.* attributes to their Pod; a deleted Pod ends its "
           "agent at once and removes its CR (needs get/list/watch on pods)"),
    Option("--post-events", "OPAMP_POST_EVENTS", "kube", "post_events", _bool,
           "post a Kubernetes Event on every phase transition"),
    Option("--replica-id", "OPAMP_REPLICA_ID", "kube", "replica_id", str,
           "this process's name in status.connection.replica (default: POD_NAME or hostname)"),
    Option("--api-host", "OPAMP_API_HOST", "api", "host", str, "REST API and metrics address"),
    Option("--api-port", "OPAMP_API_PORT", "api", "port", int,
           "REST API, /metrics, /healthz, /readyz"),
    Option("--api-auth", "OPAMP_API_AUTH", "api", "auth_enabled", _bool,
           "check REST callers with TokenReview + SubjectAccessReview (false: local dev only)"),
    Option("--api-auth-cache", "OPAMP_API_AUTH_CACHE", "api", "auth_cache_seconds", float,
           "how long a TokenReview/SubjectAccessReview decision is reused (seconds)"),
    Option("--event-loop", "OPAMP_EVENT_LOOP", "process", "event_loop", parse_loop,
           "asyncio, or uvloop (opt-in: pip install 'opamp-operator[uvloop]'; measured in "
           "docs/benchmarks.md)"),
    Option("--shutdown-timeout", "OPAMP_SHUTDOWN_TIMEOUT", "process", "shutdown_seconds", float,
           "SIGTERM to exit (seconds): sessions closed, history written, then CR writes until "
           "the budget is spent (the rest is left to the adopting replica or the next process)"),
    Option("--gc-freeze-settle", "OPAMP_GC_FREEZE_SETTLE", "gc", "freeze_settle_seconds",
           _optional_float, "once the fleet settled (fewer new sessions over this long than "
           "would thaw), freeze the heap out of garbage collection, then what survives young "
           "collections every few seconds: no full collection walks it (seconds; off: never)"),
    Option("--gc-thaw-churn", "OPAMP_GC_THAW_CHURN", "gc", "thaw_churn", float,
           "after this many sessions ended since the freeze, as a fraction of the agents then "
           "(at least 1,000), or memory in use grown by a quarter, unfreeze and collect once: "
           "frees what cyclic garbage the frozen heap kept (ended sessions leave none)"),
)  # fmt: skip


def add_options(parser: argparse.ArgumentParser) -> None:
    for option in OPTIONS:
        parser.add_argument(option.flag, dest=_dest(option), default=None, help=option.help)


def _dest(option: Option) -> str:
    return f"{option.section}__{option.name}"


def settings_from(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from parsed flags and the environment; ConfigError names a bad value."""
    environ = os.environ if environ is None else environ
    overrides: dict[str, dict[str, Any]] = {}
    for option in OPTIONS:
        raw = getattr(args, _dest(option), None)
        source = option.flag
        if raw is None and option.env in environ:
            raw, source = environ[option.env], option.env
        if raw is None:
            continue
        try:
            value = option.parse(raw)
        except (ValueError, OSError) as error:
            raise ConfigError(f"{source}: {error}") from error
        overrides.setdefault(option.section, {})[option.name] = value
    overrides.setdefault("kube", {}).setdefault("replica_id", _default_replica_id(environ))
    defaults = Settings()
    sections = {
        name: dataclasses.replace(getattr(defaults, name), **values)
        for name, values in overrides.items()
    }
    return dataclasses.replace(defaults, **sections)


def _default_replica_id(environ: Mapping[str, str]) -> str:
    return environ.get("POD_NAME") or socket.gethostname()


def reference_markdown() -> str:
    defaults = Settings()
    rows = ["| flag | environment | default | meaning |", "|---|---|---|---|"]
    for option in OPTIONS:
        default = getattr(getattr(defaults, option.section), option.name)
        shown = "(unset)" if default in (None, frozenset()) else f"`{default}`"
        rows.append(f"| `{option.flag}` | `{option.env}` | {shown} | {option.help} |")
    return "\n".join(rows)
