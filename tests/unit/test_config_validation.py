"""Every settings group refuses values it cannot run with, with a message naming the setting.

The operator turns a ConfigError into one log line and exit code 2 at start-up (see
test_options.py for the flag and environment names); here: each check exists and says what.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from opamp_operator.config import (
    ApiSettings,
    ConfigError,
    FleetSettings,
    KubeSettings,
    ListenerSettings,
    StoreSettings,
)

DSN = "postgresql://opamp@127.0.0.1/opamp"

INVALID: list[tuple[str, Callable[[], object], str]] = [
    ("fleet interval", lambda: FleetSettings(heartbeat_interval_seconds=0), "interval must be > 0"),
    (
        "fleet timeout",
        lambda: FleetSettings(heartbeat_interval_seconds=30, heartbeat_timeout_seconds=30),
        r"timeout \(30s\) must exceed the heartbeat interval \(30s\)",
    ),
    ("fleet error", lambda: FleetSettings(error_after_offline_seconds=0), "error-after-offline"),
    ("fleet max agents", lambda: FleetSettings(max_agents=0), "max agents"),
    ("fleet rate", lambda: FleetSettings(registrations_per_second=0), "registrations per second"),
    ("fleet forget", lambda: FleetSettings(forget_after_seconds=-1), "forget-after"),
    ("listener port", lambda: ListenerSettings(port=70000), "port must be 0..65535.*70000"),
    ("listener path", lambda: ListenerSettings(path="v1/opamp"), "must start with '/'"),
    ("listener message", lambda: ListenerSettings(max_message_bytes=0), "max message bytes"),
    ("listener head", lambda: ListenerSettings(max_head_bytes=100), "max head bytes >= 1024"),
    ("listener ping", lambda: ListenerSettings(ping_interval_seconds=0), "listener timeouts"),
    ("listener close", lambda: ListenerSettings(close_timeout_seconds=-1), "listener timeouts"),
    (
        "listener half TLS",
        lambda: ListenerSettings(tls_cert_file=Path("cert.pem")),
        "both a certificate file and a key file",
    ),
    (
        "listener mTLS without TLS",
        lambda: ListenerSettings(tls_client_ca_file=Path("ca.pem")),
        "client CA .* needs a server certificate",
    ),
    ("listener token", lambda: ListenerSettings(agent_tokens=frozenset({""})), "empty strings"),
    ("token audience", lambda: ListenerSettings(agent_token_audience=" "), "audience"),
    ("token cache", lambda: ListenerSettings(agent_token_cache_seconds=-1), "token cache"),
    ("store flush", lambda: StoreSettings(dsn=DSN, flush_interval_seconds=0), "flush interval"),
    ("store queue", lambda: StoreSettings(dsn=DSN, queue_size=0), "queue size"),
    (
        "store pool",
        lambda: StoreSettings(dsn=DSN, pool_min_size=5, pool_max_size=2),
        r"min \(5\) <= max \(2\)",
    ),
    ("store timeout", lambda: StoreSettings(dsn=DSN, command_timeout_seconds=0), "store timeouts"),
    (
        "store retention",
        lambda: StoreSettings(dsn=DSN, history_retention_seconds=0),
        "retention must be > 0 seconds, or unset",
    ),
    ("store retention batch", lambda: StoreSettings(dsn=DSN, retention_batch=0), "batch"),
    ("kube rate", lambda: KubeSettings(writes_per_second=0), r"writes per second .*\(got 0\)"),
    ("kube sweep", lambda: KubeSettings(sweep_interval_seconds=-1), "sweep interval"),
    ("kube gc", lambda: KubeSettings(gc_ttl_seconds=0), "GC TTL"),
    ("kube stop", lambda: KubeSettings(stop_timeout_seconds=-1), "stop timeout must be >= 0"),
    ("api port", lambda: ApiSettings(port=-1), "api port must be 0..65535, got -1"),
    ("api cache", lambda: ApiSettings(auth_cache_size=-1), "cache seconds and size"),
    ("api workers", lambda: ApiSettings(auth_workers=0), "workers, max pending and timeout"),
    (
        "api page",
        lambda: ApiSettings(page_size=2000, max_page_size=1000),
        r"page size \(2000\) must be 1..max page size \(1000\)",
    ),
]


@pytest.mark.parametrize(("make", "message"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_settings_are_refused_naming_the_setting(
    make: Callable[[], object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        make()


def test_the_defaults_and_edge_values_are_accepted() -> None:
    FleetSettings()
    ListenerSettings(port=0)
    ListenerSettings(
        port=65535, tls_cert_file=Path("c"), tls_key_file=Path("k"), tls_client_ca_file=Path("a")
    )
    StoreSettings(dsn=DSN, pool_min_size=0, pool_max_size=1, history_retention_seconds=None)
    KubeSettings(gc_ttl_seconds=None, stop_timeout_seconds=0)
    ApiSettings(port=0, auth_cache_seconds=0, auth_cache_size=0, page_size=1000)
