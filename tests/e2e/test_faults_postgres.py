"""PostgreSQL stopped under traffic, then started again, with the whole operator.

The operator runs against a PostgreSQL server of this test's own (the session's shared
server must stay up for everyone else). Traffic: opamp-go agents whose lifecycle the test
drives (connect, disconnect, die, freeze during the outage) and the simulator with churn
(agents saying goodbye and coming back all the time). During the outage the OpAMP side must
keep serving and /readyz must say the database is down; afterwards every session that opened
or closed during the outage must have its row.

OPAMP_FAULT_PG_OUTAGE_SECONDS sets the outage (default 30, as in the issue).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from opamp_operator.kube.shapes.naming import resource_name
from opamp_operator.testbed.postgres import PostgresServer
from tests.e2e.conftest import OperatorFactory
from tests.e2e.helpers import get_agent_cr
from tests.support.faults import fetch, hello, history, post_opamp, readyz
from tests.support.goagent import GoAgent
from tests.support.operator_process import REPO_ROOT, OperatorProcess, metric_value
from tests.support.polling import eventually
from tests.support.store import stop_postgres

OUTAGE_SECONDS = float(os.environ.get("OPAMP_FAULT_PG_OUTAGE_SECONDS", "30"))
SIMULATED_AGENTS = 20

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(OUTAGE_SECONDS + 180)]


@pytest.fixture
def private_postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.remove()


async def online(operator: OperatorProcess, agent_id: str) -> dict[str, Any] | None:
    async with aiohttp.ClientSession() as session:
        url = f"{operator.api_url}/api/v1/agents/{agent_id}/status"
        async with session.get(url) as response:
            if response.status != 200:
                return None
            body: dict[str, Any] = await response.json()
            return body if body["phase"] == "Online" else None


async def probe_serving(operator: OperatorProcess, stop: asyncio.Event) -> list[float]:
    """An HTTP agent polling every 0.25 s until `stop`; fails on any non-answer.

    Returns the reply latencies, and checks /readyz keeps saying the database is down.
    """
    uid = uuid.uuid4()
    latencies: list[float] = []
    sequence = 0
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            started = time.perf_counter()
            message = hello(uid, "probe", sequence)
            status, reply = await post_opamp(session, operator.http_url, message)
            latencies.append(time.perf_counter() - started)
            assert status == 200 and reply is not None and reply.instance_uid == uid.bytes
            assert not reply.HasField("error_response"), reply.error_response
            sequence += 1
            ready_status, body = await readyz(operator)
            assert ready_status == 503 and body["checks"]["database"] is False, body
            await asyncio.sleep(0.25)
    return latencies


NAMES = ("steady_ws", "steady_http", "leaves", "dies", "freezes", "new_ws", "new_http")
#: The one closed row each scripted agent must end with, and its reason.
EXPECTED_REASONS = {
    "leaves": "agent_disconnect", "dies": "connection_closed", "freezes": "heartbeat_timeout",
    "new_ws": "agent_disconnect", "new_http": "agent_disconnect",
    "steady_ws": "agent_disconnect", "steady_http": "agent_disconnect",
}  # fmt: skip


@dataclass
class Traffic:
    """The scripted agents, the simulator, and when the outage was."""

    operator: OperatorProcess
    ids: dict[str, str] = field(default_factory=lambda: {n: str(uuid.uuid4()) for n in NAMES})
    agents: dict[str, GoAgent] = field(default_factory=lambda: {n: GoAgent() for n in NAMES})
    simulator: asyncio.subprocess.Process | None = None
    outage: tuple[datetime, datetime] | None = None

    async def start_agent(self, name: str) -> None:
        operator, agent = self.operator, self.agents[name]
        if name.endswith("http"):
            await agent.start(url=operator.http_url, instance_uid=self.ids[name],
                              service_name=name, heartbeat=1, http_disconnect=True)  # fmt: skip
        else:
            await agent.start(url=operator.ws_url, instance_uid=self.ids[name],
                              service_name=name, heartbeat=1)  # fmt: skip
        await eventually(f"{name} Online", lambda: online(operator, self.ids[name]), within=20)

    async def start_simulator(self, report: Path) -> None:
        self.simulator = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "opamp_operator", "simulate", "--url", self.operator.ws_url,
            "--agents", str(SIMULATED_AGENTS), "--heartbeat", "1", "--churn", "2",
            "--churn-delay", "0.5", "--duration", str(OUTAGE_SECONDS + 15), "--seed", "9",
            "--report-json", str(report), "--no-gc-tuning",
            stdout=asyncio.subprocess.DEVNULL, cwd=REPO_ROOT,
        )  # fmt: skip

    async def cleanup(self) -> None:
        if self.simulator is not None and self.simulator.returncode is None:
            self.simulator.kill()
            await self.simulator.wait()
        for agent in self.agents.values():
            if agent.running:
                await agent.kill()


async def test_postgres_outage_under_traffic_keeps_serving_and_loses_no_history(
    private_postgres: PostgresServer,  # first: set up before the operator, removed after it
    operator_factory: OperatorFactory,
    kubeconfig: Path,
    namespace: str,
    tmp_path: Path,
) -> None:
    dsn = private_postgres.create_database("opamp").dsn
    operator = operator_factory(dsn=dsn)
    await operator.start()
    traffic = Traffic(operator)
    try:
        await traffic.start_simulator(tmp_path / "simulator.json")
        for name in ("steady_ws", "steady_http", "leaves", "dies", "freezes"):
            await traffic.start_agent(name)
        # Everything so far is in the database before it goes.
        first = 5 + SIMULATED_AGENTS
        await eventually("the first sessions written", lambda: _row_count(dsn, first), within=20)
        await run_outage(traffic, private_postgres, kubeconfig, namespace)
        assert traffic.simulator is not None
        async with asyncio.timeout(OUTAGE_SECONDS + 60):
            assert await traffic.simulator.wait() == 0
        for name in ("steady_ws", "steady_http", "new_ws", "new_http"):
            assert await traffic.agents[name].stop() == 0
        await traffic.agents["freezes"].kill()
    finally:
        await traffic.cleanup()

    report = json.loads((tmp_path / "simulator.json").read_text())
    assert report["errors"] == {}, report["errors"]
    assert report["churn_disconnects"] >= OUTAGE_SECONDS  # ~2 a second, half in the outage
    await check_history(traffic, dsn)


async def run_outage(
    traffic: Traffic, server: PostgresServer, kubeconfig: Path, namespace: str
) -> None:
    """Stop PostgreSQL for OUTAGE_SECONDS while agents come, go, die and freeze."""
    operator, ids, agents = traffic.operator, traffic.ids, traffic.agents
    started = datetime.now(UTC)
    assert server.endpoint is not None
    await stop_postgres(server, server.endpoint.dsn)
    _, body = await eventually(
        "/readyz 503 (database down)", lambda: _not_ready(operator), within=10
    )
    assert body["checks"] == {
        "listener": True,
        "database": False,
        "kubernetes": True,
        "lease": True,
    }

    stop_probe = asyncio.Event()
    probe = asyncio.create_task(probe_serving(operator, stop_probe))
    for name in ("new_ws", "new_http"):  # sessions that open while the database is away
        await traffic.start_agent(name)
        # The Kubernetes mirror does not depend on the database.
        await eventually(
            f"{name}'s CR during the outage",
            partial(_cr_online, kubeconfig, namespace, ids[name]),
            within=10,
        )
    assert await agents["leaves"].stop() == 0
    await agents["dies"].kill()
    agents["freezes"].freeze()
    frozen = ids["freezes"]
    await eventually(
        "the frozen agent timed out", lambda: _phase_is(operator, frozen, "Offline"), within=3 + 2
    )
    remaining = OUTAGE_SECONDS - (datetime.now(UTC) - started).total_seconds()
    assert remaining > 0, f"the outage script took longer than {OUTAGE_SECONDS}s"
    await asyncio.sleep(remaining)
    stop_probe.set()
    latencies = await probe
    traffic.outage = (started, datetime.now(UTC))
    await asyncio.to_thread(server.start)

    # Back: the writer's backoff is capped at 10 s.
    _, body = await eventually("/readyz 200 again", lambda: _ready(operator), within=20)
    assert body["checks"]["database"] is True
    assert len(latencies) >= OUTAGE_SECONDS  # ~3 polls a second, every one answered
    assert max(latencies) < 1.0, f"slowest OpAMP reply during the outage: {max(latencies)}s"


async def check_history(traffic: Traffic, dsn: str) -> None:
    """Every session the fleet ended has its closed row, with the right reason and times."""

    async def all_closed() -> list[Any] | None:
        rows = await history(dsn)
        return rows if rows and all(r["disconnected_at"] is not None for r in rows) else None

    rows = await eventually("every session closed in the history", all_closed, within=20)
    metrics = await traffic.operator.metrics_text()
    ended = metric_value(metrics, "opamp_agent_connection_duration_seconds_count")
    assert len(rows) == ended, f"{len(rows)} history rows for {ended} ended sessions"
    assert metric_value(metrics, "opamp_db_dropped_total") == 0
    assert metric_value(metrics, "opamp_db_errors_total") > 0  # the outage was noticed

    assert traffic.outage is not None
    slack = timedelta(seconds=1)
    low, high = traffic.outage[0] - slack, traffic.outage[1] + slack
    opened = [r for r in rows if low <= r["connected_at"] <= high]
    closed = [r for r in rows if low <= r["disconnected_at"] <= high]
    assert len(opened) >= OUTAGE_SECONDS / 2, len(opened)  # the simulator's churn
    assert len(closed) >= OUTAGE_SECONDS / 2, len(closed)

    ids = traffic.ids
    by_agent = {name: [r for r in rows if r["agent_id"] == ids[name]] for name in NAMES}
    for name, reason in EXPECTED_REASONS.items():
        assert [r["disconnect_reason"] for r in by_agent[name]] == [reason], (name, by_agent[name])
    for name in ("leaves", "dies", "freezes"):
        assert low <= by_agent[name][0]["disconnected_at"] <= high, name
    for name in ("new_ws", "new_http"):
        assert low <= by_agent[name][0]["connected_at"] <= high, name
    transitions = await fetch(
        dsn,
        "SELECT to_status, reason FROM agent_state_transitions WHERE agent_id = $1 ORDER BY id",
        ids["freezes"],
    )
    # Error 6 s after going Offline, all while the database was away.
    assert [tuple(t) for t in transitions] == [
        ("online", "connected"), ("offline", "heartbeat_timeout"), ("error", "offline_too_long"),
    ]  # fmt: skip


async def _row_count(dsn: str, minimum: int) -> int | None:
    count = len(await history(dsn))
    return count if count >= minimum else None


async def _not_ready(operator: OperatorProcess) -> tuple[int, dict[str, Any]] | None:
    status, body = await readyz(operator)
    return (status, body) if status == 503 and body["checks"]["database"] is False else None


async def _ready(operator: OperatorProcess) -> tuple[int, dict[str, Any]] | None:
    status, body = await readyz(operator)
    return (status, body) if status == 200 else None


async def _phase_is(operator: OperatorProcess, agent_id: str, phase: str) -> bool:
    async with aiohttp.ClientSession() as session:
        url = f"{operator.api_url}/api/v1/agents/{agent_id}/status"
        async with session.get(url) as response:
            return response.status == 200 and (await response.json())["phase"] == phase


async def _cr_online(kubeconfig: Path, namespace: str, agent_id: str) -> bool:
    cr = await asyncio.to_thread(get_agent_cr, kubeconfig, namespace, resource_name(agent_id))
    return cr is not None and cr.get("status", {}).get("phase") == "Online"
