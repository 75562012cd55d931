"""DSNs in messages never show the password."""

from __future__ import annotations

import pytest

from opamp_operator.config import ConfigError, StoreSettings
from opamp_operator.store.pool import create_pool, describe_target, redact_dsn, scrub


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        (
            "postgresql://opamp:s3cr%40t@db.example:6432/fleet?sslmode=require",
            "postgresql://opamp:***@db.example:6432/fleet?sslmode=require",
        ),
        ("postgres://opamp@db/fleet", "postgres://opamp@db/fleet"),
        (
            "postgresql://db/fleet?user=opamp&password=hunter2",
            "postgresql://db/fleet?user=opamp&password=***",
        ),
        (
            "host=db port=5432 dbname=fleet user=opamp password='a b\\'c' sslmode=require",
            "host=db port=5432 dbname=fleet user=opamp password=*** sslmode=require",
        ),
        ("host=db password=hunter2", "host=db password=***"),
    ],
)
def test_redact_dsn_hides_passwords(dsn: str, expected: str) -> None:
    assert redact_dsn(dsn) == expected
    assert "hunter2" not in redact_dsn(dsn)
    assert "s3cr" not in redact_dsn(dsn)


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        ("postgresql://opamp:pw@db.example:6432/fleet", "db.example:6432/fleet as opamp"),
        ("postgresql://opamp:pw@db.example/fleet", "db.example:5432/fleet as opamp"),
        ("postgresql://[::1]:7000/fleet", "::1:7000/fleet as (default)"),
        ("postgresql://u:pw@db:notaport/x", "db:notaport/x as u"),
        ("host=db port=7 dbname=f user=u password=pw", "db:7/f as u"),
    ],
)
def test_describe_target_names_server_not_password(dsn: str, expected: str) -> None:
    assert describe_target(dsn) == expected


def test_scrub_removes_password_from_driver_messages() -> None:
    dsn = "postgresql://opamp:hunter2@db/fleet"
    assert scrub("auth failed for opamp:hunter2@db", dsn) == "auth failed for opamp:***@db"
    assert scrub("anything", None) == "anything"


async def test_create_pool_without_dsn_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="DSN is not set"):
        await create_pool(StoreSettings(dsn=None))


def test_store_settings_reject_nonsense() -> None:
    with pytest.raises(ConfigError, match="flush interval"):
        StoreSettings(flush_interval_seconds=0)
    with pytest.raises(ConfigError, match="pool sizes"):
        StoreSettings(pool_min_size=6, pool_max_size=5)
    with pytest.raises(ConfigError, match="timeouts"):
        StoreSettings(command_timeout_seconds=-1)
