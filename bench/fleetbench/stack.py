"""The real stack on loopback: control plane, PostgreSQL, the operator, the simulator, the peer.

Everything is a child process of the benchmark and is stopped when it ends. PostgreSQL
gets pg_stat_statements preloaded so the benchmark can count statements per database.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import asyncpg
from prometheus_client.parser import text_string_to_metric_families

from opamp_operator.devmode import install_crds
from opamp_operator.testbed.binaries import ensure_binaries
from opamp_operator.testbed.controlplane import ControlPlane, ControlPlaneEndpoints
from opamp_operator.testbed.postgres import PostgresEndpoint, PostgresServer
from tests.support.operator_process import OperatorConfig, OperatorProcess, kubectl

from . import gcwatch

REPO_ROOT = Path(__file__).resolve().parents[2]


class TestBed:
    """etcd + kube-apiserver + PostgreSQL, started once per benchmark run."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.plane = ControlPlane(workdir / "controlplane", ensure_binaries(progress=True))
        self.postgres = PostgresServer()
        self.endpoints: ControlPlaneEndpoints | None = None
        self.pg: PostgresEndpoint | None = None

    def start(self) -> None:
        self.endpoints = self.plane.start()
        self.pg = self.postgres.start()
        # Preloading needs a restart; ALTER SYSTEM survives it (postgresql.auto.conf).
        asyncio.run(
            _sql(self.pg, "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
        )
        self.postgres.stop()
        self.pg = self.postgres.start()
        asyncio.run(_sql(self.pg, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"))
        install_crds(self.endpoints.kubeconfig, "fleetbench-crds")

    def stop(self) -> None:
        self.postgres.remove()
        self.plane.stop()

    @property
    def kubeconfig(self) -> Path:
        assert self.endpoints is not None
        return self.endpoints.kubeconfig

    def new_target(self, label: str) -> tuple[str, PostgresEndpoint]:
        """A fresh namespace and database for one operator instance."""
        name = f"fb-{label}-{uuid.uuid4().hex[:6]}"
        kubectl(self.kubeconfig, "create", "namespace", name)
        return name, self.postgres.create_database(name.replace("-", "_"))


async def _sql(endpoint: PostgresEndpoint, statement: str) -> None:
    connection = await asyncpg.connect(endpoint.dsn)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


# -- the operator -----------------------------------------------------------------------


@dataclass(frozen=True)
class OperatorOptions:
    """Flags that differ from the operator's defaults, and why (see docs/benchmarks.md)."""

    heartbeat_interval: float = 30.0
    heartbeat_timeout: float = 60.0
    kube_writes_per_second: float = 500.0
    last_seen_refresh: float | None = None  # off: the operator's default
    gc_stats: bool = True  # run it under fleetbench.gcwatch (collector pauses recorded)

    def extra_args(self) -> list[str]:
        return [
            "--kube-writes-per-second", str(self.kube_writes_per_second),
            "--flush-interval", "1",  # the default; the e2e helper sets 0.2
        ]  # fmt: skip


@dataclass
class BenchOperatorConfig(OperatorConfig):
    """The tests' operator command line, optionally under fleetbench.gcwatch."""

    gc_stats_path: Path | None = None

    def argv(self) -> list[str]:
        argv = super().argv()
        if self.gc_stats_path is None:
            return argv
        assert argv[1:3] == ["-m", "opamp_operator"]
        return [argv[0], "-m", "fleetbench.gcwatch", str(self.gc_stats_path), *argv[3:]]


def operator_process(
    bed: TestBed,
    namespace: str,
    database: PostgresEndpoint,
    options: OperatorOptions,
    log: Path,
    *,
    replica_id: str = "bench",
) -> OperatorProcess:
    """The operator on free ports; a second replica of the same fleet differs by `replica_id`."""
    config = BenchOperatorConfig(
        bed.kubeconfig,
        namespace,
        database.dsn,
        heartbeat_interval=options.heartbeat_interval,
        heartbeat_timeout=options.heartbeat_timeout,
        error_after_offline=300.0,
        last_seen_refresh=options.last_seen_refresh,
        replica_id=replica_id,
        extra_args=options.extra_args(),
        gc_stats_path=log.with_suffix(".gc.json") if options.gc_stats else None,
    )
    return OperatorProcess(config, log)


def gc_stats_path(process: OperatorProcess) -> Path | None:
    config = process.config
    return config.gc_stats_path if isinstance(config, BenchOperatorConfig) else None


def gc_totals(process: OperatorProcess) -> dict[str, Any] | None:
    """gcwatch's latest totals for the operator (None when not run under it, or not yet)."""
    path = gc_stats_path(process)
    return None if path is None else gcwatch.read(path)


def operator_pid(process: OperatorProcess) -> int:
    inner = process._process  # the tests' helper keeps it private; the bench needs its pid
    assert inner is not None
    return inner.pid


class Metrics:
    """One scrape of a Prometheus endpoint: samples summed over the labels asked for."""

    def __init__(self, text: str) -> None:
        self.samples: list[tuple[str, dict[str, str], float]] = []
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                self.samples.append((s.name, dict(s.labels), float(s.value)))

    def value(self, name: str, **labels: str) -> float:
        return sum(
            v
            for n, sample_labels, v in self.samples
            if n == name and all(sample_labels.get(k) == w for k, w in labels.items())
        )


async def scrape(api_url: str) -> Metrics:
    timeout = aiohttp.ClientTimeout(total=30)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(f"{api_url}/metrics") as response,
    ):
        response.raise_for_status()
        return Metrics(await response.text())


async def wait_metrics(
    api_url: str, check: Callable[[Metrics], bool], within: float, interval: float = 1.0
) -> float | None:
    """Scrape until `check` holds; the monotonic time it did, or None after `within` s."""
    deadline = time.monotonic() + within
    while True:
        metrics = await scrape(api_url)
        if check(metrics):
            return time.monotonic()
        if time.monotonic() >= deadline:
            return None
        await asyncio.sleep(interval)


def idle_queues(metrics: Metrics) -> bool:
    return (
        metrics.value("opamp_kube_write_queue_depth") == 0
        and metrics.value("opamp_db_queue_depth") == 0
    )


def connections(metrics: Metrics) -> float:
    return metrics.value("opamp_connections_open")


def agents_held(metrics: Metrics, transport: str) -> float:
    """Agents the operator holds: open WebSockets, or over plain HTTP (no connection lasts
    beyond one poll: the gauge counts requests in flight) agents Online."""
    if transport == "http":
        return metrics.value("opamp_agents_online_total")
    return connections(metrics)


class OpampServer(Protocol):
    """The operator's process or the opamp-go peer: one OpAMP endpoint per transport."""

    @property
    def ws_url(self) -> str: ...

    @property
    def http_url(self) -> str: ...


def fleet_label(agents: int, transport: str) -> str:
    """Names a fleet's namespace, logs and results: "10000" over WebSocket, "10000-http"."""
    return str(agents) if transport == "ws" else f"{agents}-{transport}"


def opamp_url(server: OpampServer, transport: str) -> str:
    """Where the simulator dials `server` over `transport` ("ws" or "http")."""
    return server.http_url if transport == "http" else server.ws_url


def writes_by_kind(metrics: Metrics) -> dict[str, float]:
    """opamp_kube_writes_total as {"kind/outcome": count}."""
    found: dict[str, float] = {}
    for name, labels, value in metrics.samples:
        if name == "opamp_kube_writes_total" and value:
            key = f"{labels.get('kind')}/{labels.get('outcome')}"
            found[key] = found.get(key, 0.0) + value
    return found


@dataclass(frozen=True)
class LeaseFigures:
    """How the operator's Lease renewals fared up to a scrape (issue 19, run I)."""

    renewed: float
    failed: float
    longest_gap_seconds: float  # between two successful renewals
    slowest_seconds: float  # upper bound of the bucket of the slowest successful renewal

    def describe(self) -> str:
        return (
            f"{self.renewed:,.0f} / {self.failed:,.0f}; longest gap "
            f"{self.longest_gap_seconds:.1f} s; slowest <= {self.slowest_seconds:g} s"
        )


def lease_figures(metrics: Metrics) -> LeaseFigures:
    total = metrics.value("opamp_replica_lease_renewals_total")
    renewed = metrics.value("opamp_replica_lease_renewals_total", outcome="ok")
    buckets = sorted(
        (float(labels["le"]), value)
        for name, labels, value in metrics.samples
        if name == "opamp_replica_lease_renewal_seconds_bucket"
    )
    count = buckets[-1][1] if buckets else 0.0
    slowest = next((le for le, value in buckets if value >= count), 0.0) if count else 0.0
    return LeaseFigures(
        renewed, total - renewed,
        metrics.value("opamp_replica_lease_longest_gap_seconds"), slowest,
    )  # fmt: skip


# -- the simulator ----------------------------------------------------------------------


@dataclass(frozen=True)
class SimPlan:
    agents: int
    duration: float
    heartbeat: float | None = None  # None: the server's offer
    ramp: float = 200.0
    silent: int = 0
    silent_after: float | None = None
    name_prefix: str = "sim"
    groups: int = 10
    seed: int = 1
    churn: float = 0.0  # disconnects per second across the run's agents (goodbye, back later)
    churn_delay: float = 2.0  # mean pause before a churned agent reconnects

    def argv(self, url: str, report: Path) -> list[str]:
        args = [
            sys.executable, "-m", "opamp_operator", "--log-level", "WARNING", "simulate",
            "--url", url, "--agents", str(self.agents), "--ramp", f"{self.ramp:g}",
            "--duration", f"{self.duration:g}", "--name-prefix", self.name_prefix,
            "--groups", str(self.groups), "--seed", str(self.seed),
            "--max-connections", str(max(self.agents, 100)), "--report-json", str(report),
        ]  # fmt: skip
        if self.heartbeat is not None:
            args += ["--heartbeat", f"{self.heartbeat:g}"]
        if self.churn:
            args += ["--churn", f"{self.churn:g}", "--churn-delay", f"{self.churn_delay:g}"]
        if self.silent:
            args += ["--silent", str(self.silent)]
            if self.silent_after is not None:
                args += ["--silent-after", f"{self.silent_after:g}"]
        return args


class Simulator:
    """`opamp-operator simulate` in a child process; its JSON report when it ends."""

    def __init__(self, plan: SimPlan, url: str, workdir: Path, name: str) -> None:
        self.plan = plan
        self.url = url
        self.report_path = workdir / f"{name}.json"
        self.log_path = workdir / f"{name}.log"
        self._process: asyncio.subprocess.Process | None = None
        self.started = 0.0

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    @property
    def pids(self) -> list[int]:
        """As `SimulatorGroup.pids` (simfleet.py): one process here."""
        return [self.pid]

    async def start(self) -> None:
        with self.log_path.open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                *self.plan.argv(self.url, self.report_path),
                stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        self.started = time.monotonic()

    async def wait(self) -> dict[str, Any]:
        """Wait for the planned end (bounded) and return the report."""
        assert self._process is not None
        limit = self.plan.duration + 60 - (time.monotonic() - self.started)
        try:
            await asyncio.wait_for(self._process.wait(), max(limit, 1))
        except TimeoutError:
            self._process.kill()
            await self._process.wait()
            raise RuntimeError(f"simulator overran its duration; see {self.log_path}") from None
        report: dict[str, Any] = json.loads(self.report_path.read_text())
        return report

    async def kill(self) -> None:
        """End the run now (no goodbyes: as if the agents' host went away)."""
        if self._process is not None and self._process.returncode is None:
            self._process.send_signal(signal.SIGKILL)
            await self._process.wait()
