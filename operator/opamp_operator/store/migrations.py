"""Schema migrations: numbered up/down SQL files, applied under an advisory lock.

Compatible with golang-migrate: files are `<version>_<name>.up.sql` / `.down.sql`, the
current version is the one row of `schema_migrations(version bigint, dirty boolean)`, and
the advisory lock id is computed the way golang-migrate's PostgreSQL driver does, so the
two tools never migrate the same database at the same time.

Each migration runs in its own transaction together with the version update: a failing
migration rolls back completely and leaves the previous version clean. A `dirty` row can
only come from another tool (or a migration that commits by itself) and stops us until a
person has checked the schema and run `force`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeAlias

import asyncpg

from .pool import describe_target, scrub

log = logging.getLogger(__name__)

MIGRATIONS_ENV = "OPAMP_OPERATOR_MIGRATIONS"
VERSION_TABLE = "schema_migrations"
_FILE = re.compile(r"^(\d+)_(.+)\.(up|down)\.sql$")
_LOCK_SALT = 1486364155  # golang-migrate's advisory lock salt
_LOCK_POLL_SECONDS = 0.2
_STATEMENT_TIMEOUT = 3600.0  # a migration may legitimately take long on a big table

Target: TypeAlias = "str | asyncpg.Connection | asyncpg.Pool"
Direction: TypeAlias = Literal["up", "down"]


class MigrationError(RuntimeError):
    """Migrations cannot proceed; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    up: Path
    down: Path


@dataclass(frozen=True, slots=True)
class MigrationStatus:
    current: int | None  # None: no migration applied
    dirty: bool
    pending: tuple[int, ...]  # versions `migrate up` would apply, in order
    available: tuple[int, ...]


def default_migrations_dir() -> Path:
    """$OPAMP_OPERATOR_MIGRATIONS, else `migrations/` at the root of this repository."""
    configured = os.environ.get(MIGRATIONS_ENV)
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[3] / "migrations"


def load_migrations(directory: Path | None = None) -> list[Migration]:
    """Every migration in `directory`, by version; each must have an up and a down file."""
    directory = directory or default_migrations_dir()
    if not directory.is_dir():
        raise MigrationError(
            f"migrations directory {directory} does not exist: set {MIGRATIONS_ENV} "
            "or store.migrations_dir to the directory holding the *.up.sql files"
        )
    found: dict[int, dict[str, Path]] = {}
    names: dict[int, str] = {}
    for path in sorted(directory.iterdir()):
        match = _FILE.match(path.name)
        if match is None:
            continue
        version, name, direction = int(match[1]), match[2], match[3]
        if names.setdefault(version, name) != name or direction in found.get(version, {}):
            raise MigrationError(f"two migrations with version {version} in {directory}")
        found.setdefault(version, {})[direction] = path
    migrations = []
    for version in sorted(found):
        files = found[version]
        if set(files) != {"up", "down"}:
            missing = ({"up", "down"} - set(files)).pop()
            raise MigrationError(f"migration {version} in {directory} has no {missing} file")
        migrations.append(Migration(version, names[version], files["up"], files["down"]))
    return migrations


def advisory_lock_id(database: str, schema: str = "public", table: str = VERSION_TABLE) -> int:
    """The lock golang-migrate takes for this database's version table."""
    key = "\x00".join((schema, table, database)).encode()
    return (zlib.crc32(key) * _LOCK_SALT) % (1 << 32)


async def status(target: Target, directory: Path | None = None) -> MigrationStatus:
    """The database's version, whether it is dirty, and what `migrate up` would apply."""
    migrations = load_migrations(directory)
    async with _connection(target) as conn:
        current, dirty = await _read_version(conn)
    available = tuple(m.version for m in migrations)
    pending = tuple(v for v in available if current is None or v > current)
    return MigrationStatus(current, dirty, pending, available)


async def migrate(
    target: Target,
    direction: Direction = "up",
    steps: int | None = None,
    *,
    directory: Path | None = None,
    lock_timeout: float = 120.0,
) -> list[int]:
    """Apply up to `steps` migrations (all when None); return the versions applied or undone.

    `target` is a DSN, a connection or a pool. Prefer a DSN or a plain connection for
    long migrations: a pool's per-statement timeout may be shorter than they need.
    """
    if direction not in ("up", "down"):
        raise ValueError(f"direction must be 'up' or 'down', not {direction!r}")
    if steps is not None and steps < 0:
        raise ValueError("steps must be >= 0")
    migrations = load_migrations(directory)
    async with _connection(target) as conn, _locked(conn, lock_timeout):
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} "
            "(version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL)"
        )
        current, dirty = await _read_version(conn)
        if dirty:
            raise MigrationError(_dirty_message(current))
        if direction == "up":
            return await _up(conn, migrations, current, steps)
        return await _down(conn, migrations, current, steps)


async def force(target: Target, version: int | None) -> None:
    """Record `version` (None: nothing applied) as current and clean, without running SQL.

    For after a person has repaired a dirty database by hand, like golang-migrate's force.
    """
    async with _connection(target) as conn, _locked(conn, 120.0):
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} "
            "(version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL)"
        )
        async with conn.transaction():
            await _set_version(conn, version, dirty=False)


async def _up(
    conn: asyncpg.Connection, migrations: list[Migration], current: int | None, steps: int | None
) -> list[int]:
    if migrations and current is not None and current > migrations[-1].version:
        log.warning(
            "database schema is at version %d, newer than the newest migration here (%d); "
            "leaving it as it is",
            current,
            migrations[-1].version,
        )
        return []
    todo = [m for m in migrations if current is None or m.version > current]
    applied: list[int] = []
    for migration in todo[:steps] if steps is not None else todo:
        await _apply(conn, migration, migration.up, migration.version)
        applied.append(migration.version)
    return applied


async def _down(
    conn: asyncpg.Connection, migrations: list[Migration], current: int | None, steps: int | None
) -> list[int]:
    by_version = {m.version: m for m in migrations}
    versions = [m.version for m in migrations]
    undone: list[int] = []
    while current is not None and (steps is None or len(undone) < steps):
        migration = by_version.get(current)
        if migration is None:
            raise MigrationError(
                f"database is at version {current} but there is no migration {current} to "
                "undo here: run the down migrations of the newer operator version first"
            )
        below = [v for v in versions if v < current]
        previous = below[-1] if below else None
        await _apply(conn, migration, migration.down, previous)
        undone.append(current)
        current = previous
    return undone


async def _apply(
    conn: asyncpg.Connection, migration: Migration, path: Path, new_version: int | None
) -> None:
    sql = await asyncio.to_thread(path.read_text)
    log.info("applying migration %s", path.name)
    try:
        # One transaction: a failure leaves no trace. The dirty mark first is what
        # golang-migrate does; here it is only visible if the SQL commits by itself.
        async with conn.transaction():
            await _set_version(conn, new_version, dirty=True)
            await conn.execute(sql, timeout=_STATEMENT_TIMEOUT)
            await _set_version(conn, new_version, dirty=False)
    except asyncpg.PostgresError as error:
        raise MigrationError(
            f"migration {path.name} failed and was rolled back: {type(error).__name__}: {error}"
        ) from error


async def _set_version(conn: asyncpg.Connection, version: int | None, *, dirty: bool) -> None:
    # golang-migrate keeps exactly one row (none for "no version"), or (-1, dirty)
    # while undoing the first migration.
    await conn.execute(f"TRUNCATE {VERSION_TABLE}")
    if version is not None or dirty:
        await conn.execute(
            f"INSERT INTO {VERSION_TABLE} (version, dirty) VALUES ($1, $2)",
            -1 if version is None else version,
            dirty,
        )


async def _read_version(conn: asyncpg.Connection) -> tuple[int | None, bool]:
    exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", VERSION_TABLE)
    if not exists:
        return None, False
    row = await conn.fetchrow(
        f"SELECT version, dirty FROM {VERSION_TABLE} ORDER BY version DESC LIMIT 1"
    )
    if row is None:
        return None, False
    version = int(row["version"])
    return (None if version < 0 else version), bool(row["dirty"])


def _dirty_message(version: int | None) -> str:
    shown = "none" if version is None else str(version)
    return (
        f"database schema is dirty at version {shown}: a migration failed part-way "
        "(outside a transaction, e.g. run by another tool). Check the schema by hand and "
        "complete or revert that migration, then record the version whose changes are "
        "fully present with `opamp-operator migrate force <version>` (or golang-migrate's "
        "`migrate -path migrations -database <dsn> force <version>`), and migrate again."
    )


@asynccontextmanager
async def _connection(target: Target) -> AsyncIterator[asyncpg.Connection]:
    if isinstance(target, str):
        try:
            conn = await asyncpg.connect(target, timeout=10.0)
        except (OSError, TimeoutError, asyncpg.PostgresError) as error:
            raise MigrationError(
                f"cannot connect to PostgreSQL at {describe_target(target)}: "
                f"{type(error).__name__}: {scrub(str(error), target)}"
            ) from None
        try:
            yield conn
        finally:
            await conn.close()
    elif isinstance(target, asyncpg.Pool):
        async with target.acquire() as conn:
            yield conn
    else:
        yield target


@asynccontextmanager
async def _locked(conn: asyncpg.Connection, wait_seconds: float) -> AsyncIterator[None]:
    """Hold golang-migrate's session advisory lock; waits at most `wait_seconds`."""
    lock_id = advisory_lock_id(await conn.fetchval("SELECT current_database()"))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    # try-lock in a loop rather than pg_advisory_lock: the wait stays bounded and
    # cancellable, and no server-side waiter is left behind.
    while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", lock_id):
        if loop.time() >= deadline:
            raise MigrationError(
                f"another process has held the migration lock (advisory lock {lock_id}) "
                f"for over {wait_seconds:.0f}s; is a migration stuck? see pg_locks"
            )
        await asyncio.sleep(_LOCK_POLL_SECONDS)
    try:
        yield
    finally:
        try:
            await conn.execute("SELECT pg_advisory_unlock($1)", lock_id)
        except (OSError, asyncpg.InterfaceError, asyncpg.PostgresError):
            # A broken connection released the lock with its session.
            log.debug("could not release migration lock %d", lock_id, exc_info=True)
