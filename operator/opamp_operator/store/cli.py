"""`opamp-operator migrate up|down|status|force`: the migration runner from the command line."""

from __future__ import annotations

import logging
from pathlib import Path

from opamp_operator.config import Settings

from .migrations import MigrationError, default_migrations_dir, force, migrate, status

log = logging.getLogger(__name__)


async def run_migrate_command(
    settings: Settings, direction: str, steps: int | None, migrations_dir: str | None
) -> int:
    """Run one migrate command; print what happened; return the process exit code.

    `steps` is the count for up/down (all when None) and the version for `force`
    (-1: no version).
    """
    dsn = settings.store.dsn
    if not dsn:
        print("opamp-operator migrate: no database DSN configured (--database-dsn)")
        return 2
    directory = (
        Path(migrations_dir)
        if migrations_dir
        else settings.store.migrations_dir or default_migrations_dir()
    )
    try:
        if direction == "status":
            state = await status(dsn, directory)
            print(
                f"version: {'none' if state.current is None else state.current}"
                f"{' (dirty)' if state.dirty else ''}\n"
                f"available: {', '.join(map(str, state.available)) or 'none'}\n"
                f"pending: {', '.join(map(str, state.pending)) or 'none'}"
            )
        elif direction == "force":
            if steps is None:
                print("opamp-operator migrate force: give the version (-1 for none)")
                return 2
            await force(dsn, None if steps < 0 else steps)
            print(f"version forced to {steps if steps >= 0 else 'none'} (clean)")
        elif direction in ("up", "down"):
            done = await migrate(
                dsn,
                "up" if direction == "up" else "down",
                steps,
                directory=directory,
                lock_timeout=settings.store.migration_lock_timeout_seconds,
            )
            verb = "applied" if direction == "up" else "reverted"
            print(f"{verb}: {', '.join(map(str, done)) or 'nothing to do'}")
        else:
            print(f"opamp-operator migrate: unknown command {direction!r}")
            return 2
    except MigrationError as error:
        print(f"opamp-operator migrate: {error}")
        return 1
    return 0
