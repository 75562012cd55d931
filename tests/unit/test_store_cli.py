"""`opamp-operator migrate`: usage errors are answered before any database is contacted.

The commands themselves run against PostgreSQL in tests/integration/test_store_migrations.py.
"""

from __future__ import annotations

import pytest

from opamp_operator.config import Settings, StoreSettings
from opamp_operator.store.cli import run_migrate_command

# Port 9 (discard) on loopback: nothing answers, so a test that reached the database would fail.
UNREACHABLE = Settings(store=StoreSettings(dsn="postgresql://x@127.0.0.1:9/none"))


async def test_no_dsn_is_exit_2_naming_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert await run_migrate_command(Settings(), "up", None, None) == 2
    assert "no database DSN configured (--database-dsn)" in capsys.readouterr().out


async def test_force_needs_a_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert await run_migrate_command(UNREACHABLE, "force", None, None) == 2
    assert "give the version (-1 for none)" in capsys.readouterr().out


async def test_an_unknown_command_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert await run_migrate_command(UNREACHABLE, "sideways", None, None) == 2
    assert "unknown command 'sideways'" in capsys.readouterr().out
