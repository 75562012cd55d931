"""The migration runner against a real PostgreSQL: up, down, status, dirty, the lock."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from opamp_operator.store.migrations import (
    MigrationError,
    advisory_lock_id,
    default_migrations_dir,
    force,
    load_migrations,
    migrate,
    status,
)

pytestmark = pytest.mark.integration

TABLES = {
    "agents",
    "agent_connection_history",
    "agent_state_transitions",
    "agent_available_components",
}


async def _tables(dsn: str) -> set[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {row["tablename"] for row in rows}
    finally:
        await conn.close()


async def _version_rows(dsn: str) -> list[tuple[int, bool]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT version, dirty FROM schema_migrations")
        return [(row["version"], row["dirty"]) for row in rows]
    finally:
        await conn.close()


def test_repository_migrations_are_complete_pairs() -> None:
    migrations = load_migrations(default_migrations_dir())
    assert [m.version for m in migrations] == [1, 2, 3, 4, 5]
    assert all(m.up.exists() and m.down.exists() for m in migrations)


async def test_up_all_down_all_up_again(postgres_dsn: str) -> None:
    before = await status(postgres_dsn)
    assert (before.current, before.dirty, before.pending) == (None, False, (1, 2, 3, 4, 5))

    assert await migrate(postgres_dsn, "up") == [1, 2, 3, 4, 5]
    assert await _tables(postgres_dsn) >= TABLES
    after_up = await status(postgres_dsn)
    assert (after_up.current, after_up.dirty, after_up.pending) == (5, False, ())
    # golang-migrate keeps exactly one row: the current version.
    assert await _version_rows(postgres_dsn) == [(5, False)]
    assert await migrate(postgres_dsn, "up") == []

    assert await migrate(postgres_dsn, "down") == [5, 4, 3, 2, 1]
    assert not TABLES & await _tables(postgres_dsn)
    assert await _version_rows(postgres_dsn) == []
    assert (await status(postgres_dsn)).current is None

    assert await migrate(postgres_dsn, "up") == [1, 2, 3, 4, 5]
    assert await _tables(postgres_dsn) >= TABLES


async def test_steps_move_one_version_at_a_time(postgres_dsn: str) -> None:
    assert await migrate(postgres_dsn, "up", 1) == [1]
    state = await status(postgres_dsn)
    assert (state.current, state.pending) == (1, (2, 3, 4, 5))
    assert await _tables(postgres_dsn) & TABLES == {"agents"}
    assert await migrate(postgres_dsn, "up", 2) == [2, 3]
    assert await migrate(postgres_dsn, "down", 1) == [3]
    assert (await status(postgres_dsn)).current == 2
    assert "agent_state_transitions" not in await _tables(postgres_dsn)
    assert await migrate(postgres_dsn, "down", 0) == []


async def test_dirty_database_stops_with_instructions(postgres_dsn: str) -> None:
    await migrate(postgres_dsn, "up", 2)
    conn = await asyncpg.connect(postgres_dsn)
    try:  # what golang-migrate leaves behind when a migration dies half-way
        await conn.execute("UPDATE schema_migrations SET version = 3, dirty = true")
    finally:
        await conn.close()

    state = await status(postgres_dsn)
    assert (state.current, state.dirty) == (3, True)
    for direction in ("up", "down"):
        with pytest.raises(MigrationError, match=r"dirty at version 3.*force <version>"):
            await migrate(postgres_dsn, direction)
    assert await _version_rows(postgres_dsn) == [(3, True)]

    # A person checked: migration 3 did not apply. Record 2 and go on.
    await force(postgres_dsn, 2)
    assert await migrate(postgres_dsn, "up") == [3, 4, 5]
    assert await _version_rows(postgres_dsn) == [(5, False)]


async def test_failing_migration_rolls_back_and_stays_clean(
    postgres_dsn: str, tmp_path: Path
) -> None:
    for source in default_migrations_dir().glob("000001_*"):
        (tmp_path / source.name).write_text(source.read_text())
    (tmp_path / "000002_broken.up.sql").write_text(
        "CREATE TABLE half_done (id int);\nSELECT no_such_function();\n"
    )
    (tmp_path / "000002_broken.down.sql").write_text("DROP TABLE half_done;\n")

    with pytest.raises(MigrationError, match=r"000002_broken.up.sql failed and was rolled back"):
        await migrate(postgres_dsn, "up", directory=tmp_path)
    state = await status(postgres_dsn, tmp_path)
    assert (state.current, state.dirty, state.pending) == (1, False, (2,))
    assert "half_done" not in await _tables(postgres_dsn)


async def test_concurrent_migrations_apply_each_version_once(postgres_dsn: str) -> None:
    results = await asyncio.gather(*(migrate(postgres_dsn, "up") for _ in range(4)))
    assert sorted(results, key=len) == [[], [], [], [1, 2, 3, 4, 5]]
    assert await _version_rows(postgres_dsn) == [(5, False)]


async def test_lock_is_golang_migrates_and_bounded(postgres_dsn: str) -> None:
    holder = await asyncpg.connect(postgres_dsn)
    try:
        database = await holder.fetchval("SELECT current_database()")
        # Held the way golang-migrate holds it: we must wait for it, then give up.
        await holder.execute("SELECT pg_advisory_lock($1)", advisory_lock_id(database))
        with pytest.raises(MigrationError, match="held the migration lock"):
            await migrate(postgres_dsn, "up", lock_timeout=0.5)
        assert (await status(postgres_dsn)).current is None
    finally:
        await holder.close()
    assert await migrate(postgres_dsn, "up") == [1, 2, 3, 4, 5]


def test_lock_id_matches_golang_migrate() -> None:
    # Computed with Go's hash/crc32 the way golang-migrate's postgres driver does for
    # database "opamp", schema "public", table "schema_migrations" (uint32 arithmetic).
    assert advisory_lock_id("opamp") == 2325472314


async def test_missing_directory_is_a_clear_error(postgres_dsn: str, tmp_path: Path) -> None:
    with pytest.raises(MigrationError, match="does not exist"):
        await migrate(postgres_dsn, "up", directory=tmp_path / "nope")


async def test_migrate_command(postgres_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    from opamp_operator.config import Settings, StoreSettings
    from opamp_operator.store.cli import run_migrate_command

    settings = Settings(store=StoreSettings(dsn=postgres_dsn))
    assert await run_migrate_command(settings, "status", None, None) == 0
    expected = "version: none\navailable: 1, 2, 3, 4, 5\npending: 1, 2, 3, 4, 5"
    assert expected in capsys.readouterr().out
    assert await run_migrate_command(settings, "up", 2, None) == 0
    assert "applied: 1, 2" in capsys.readouterr().out
    assert await run_migrate_command(settings, "down", None, None) == 0
    assert "reverted: 2, 1" in capsys.readouterr().out
    assert await run_migrate_command(settings, "force", 3, None) == 0
    assert await run_migrate_command(settings, "status", None, None) == 0
    assert "version: 3\n" in capsys.readouterr().out
    assert await run_migrate_command(settings, "force", -1, None) == 0
    assert await run_migrate_command(settings, "up", None, "/nonexistent") == 1
    assert "does not exist" in capsys.readouterr().out
    unreachable = Settings(store=StoreSettings(dsn="postgresql://u:hunter2@127.0.0.1:1/x"))
    assert await run_migrate_command(unreachable, "status", None, None) == 1
    out = capsys.readouterr().out
    assert "127.0.0.1:1/x as u" in out
    assert "hunter2" not in out
