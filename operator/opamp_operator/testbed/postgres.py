"""A throwaway PostgreSQL 15 server on loopback, run as an unprivileged user."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .processes import ManagedProcess, StartupError, free_port, wait_until

DEFAULT_BIN_DIR = Path("/usr/lib/postgresql/15/bin")
DATABASE = "opamp"
USER = "opamp"


@dataclass(frozen=True)
class PostgresEndpoint:
    host: str
    port: int
    database: str
    user: str
    password: str

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{self.database}"


def postgres_bin_dir() -> Path:
    configured = os.environ.get("OPAMP_OPERATOR_PG_BIN")
    candidates = [Path(configured)] if configured else []
    candidates.append(DEFAULT_BIN_DIR)
    found = shutil.which("pg_ctl")
    if found:
        candidates.append(Path(found).parent)
    for candidate in candidates:
        if (candidate / "postgres").exists() and (candidate / "initdb").exists():
            return candidate
    raise StartupError(
        "PostgreSQL server binaries not found (looked in "
        + ", ".join(str(c) for c in candidates)
        + "); install postgresql-15 or set OPAMP_OPERATOR_PG_BIN"
    )


def _unprivileged_user() -> tuple[int, int] | None:
    """Postgres refuses to run as root; under root we run it as `nobody`."""
    if os.geteuid() != 0:
        return None
    entry = pwd.getpwnam(os.environ.get("OPAMP_OPERATOR_PG_USER", "nobody"))
    return entry.pw_uid, entry.pw_gid


class PostgresServer:
    """initdb into `workdir`, start postgres on a free 127.0.0.1 port, create the database.

    Without a `workdir`, a fresh directory under the system temp dir is used and removed
    on `stop()`; it must be reachable by the unprivileged user, which /root is not.
    """

    def __init__(self, workdir: Path | None = None, port: int | None = None) -> None:
        self._owns_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="opamp-operator-pg-"))
        self.port = port
        self._process: ManagedProcess | None = None
        self.endpoint: PostgresEndpoint | None = None

    def start(self) -> PostgresEndpoint:
        bin_dir = postgres_bin_dir()
        run_as = _unprivileged_user()
        data_dir = self.workdir / "pgdata"
        if self.endpoint is None:
            self.endpoint = self._init(bin_dir, data_dir, run_as)
        argv = [
            str(bin_dir / "postgres"),
            "-D", str(data_dir),
            "-h", "127.0.0.1",
            "-p", str(self.endpoint.port),
            "-k", "",  # TCP only: no unix socket directory to own
            "-c", "fsync=off",  # throwaway data: durability buys nothing in tests
            "-c", "max_connections=200",
        ]  # fmt: skip
        self._process = ManagedProcess(
            "postgres", argv, self.workdir / "postgres.log", run_as=run_as
        )
        wait_until("accepting connections", self._accepting, 60, self._process)
        return self.endpoint

    def _init(
        self, bin_dir: Path, data_dir: Path, run_as: tuple[int, int] | None
    ) -> PostgresEndpoint:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if data_dir.exists():
            raise StartupError(f"{data_dir} already exists; pass a fresh workdir")
        password = secrets.token_urlsafe(18)
        pwfile = self.workdir / "pwfile"
        pwfile.write_text(password + "\n")
        if run_as:
            os.chown(self.workdir, *run_as)
            os.chown(pwfile, *run_as)
        initdb = [
            str(bin_dir / "initdb"), "-D", str(data_dir), "-U", USER, "--pwfile", str(pwfile),
            "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync",
        ]  # fmt: skip
        self._run_as(initdb, run_as, "initdb")
        pwfile.unlink()
        port = self.port or free_port()
        endpoint = PostgresEndpoint("127.0.0.1", port, "postgres", USER, password)
        self.endpoint = endpoint
        return endpoint

    def _run_as(self, argv: list[str], run_as: tuple[int, int] | None, what: str) -> None:
        def demote() -> None:
            if run_as:
                os.setgid(run_as[1])
                os.setgroups([])
                os.setuid(run_as[0])

        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            preexec_fn=demote,
            cwd=self.workdir,
        )
        if result.returncode != 0:
            raise StartupError(f"{what} failed ({result.returncode}): {result.stderr.strip()}")

    def _accepting(self) -> bool:
        assert self.endpoint is not None
        result = subprocess.run(
            [str(postgres_bin_dir() / "pg_isready"), "-h", "127.0.0.1", "-p",
             str(self.endpoint.port), "-q"],
            capture_output=True,
        )  # fmt: skip
        return result.returncode == 0

    def create_database(self, name: str = DATABASE) -> PostgresEndpoint:
        """Create `name` (if missing) and return an endpoint that points at it."""
        assert self.endpoint is not None, "start() first"
        env = {**os.environ, "PGPASSWORD": self.endpoint.password}
        psql = [
            str(postgres_bin_dir() / "psql"), "-h", "127.0.0.1", "-p", str(self.endpoint.port),
            "-U", USER, "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-tAc",
        ]  # fmt: skip
        exists = subprocess.run(
            [*psql, f"SELECT 1 FROM pg_database WHERE datname = '{name}'"],
            capture_output=True, text=True, env=env,
        )  # fmt: skip
        if exists.stdout.strip() != "1":
            created = subprocess.run(
                [*psql, f'CREATE DATABASE "{name}"'], capture_output=True, text=True, env=env
            )
            if created.returncode != 0:
                raise StartupError(f"CREATE DATABASE {name} failed: {created.stderr.strip()}")
        e = self.endpoint
        return PostgresEndpoint(e.host, e.port, name, e.user, e.password)

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop(timeout=20)

    def remove(self) -> None:
        """Stop and delete the data directory, if this server created it."""
        self.stop()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def kill(self) -> None:
        if self._process is not None:
            self._process.kill()
