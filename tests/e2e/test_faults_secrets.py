"""No token and no database password ever reaches a log line, even at DEBUG.

The operator runs at DEBUG with a DSN password, an agent tokens file and REST
authentication on; the test makes it meet right and wrong agent tokens (WebSocket and
HTTP), REST calls with a token Kubernetes does not know, and a database outage; then the
whole log is searched for every secret. The `migrate` command, which reports connection
errors on its own, is run with a wrong password too.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from opamp_operator.testbed.postgres import PostgresServer
from tests.e2e.conftest import OperatorFactory
from tests.support.faults import PROTOBUF, hello, readyz
from tests.support.goagent import GoAgent
from tests.support.operator_process import REPO_ROOT, OperatorProcess
from tests.support.polling import eventually, grows
from tests.support.store import stop_postgres

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


@pytest.fixture
def private_postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.remove()


def token() -> str:
    return "tok-" + secrets.token_urlsafe(24)


async def post_with(operator: OperatorProcess, authorization: str) -> int:
    headers = {**PROTOBUF, "Authorization": authorization}
    body = hello(uuid.uuid4()).SerializeToString()
    async with (
        aiohttp.ClientSession() as session,
        session.post(operator.http_url, data=body, headers=headers) as response,
    ):
        return response.status


async def rest_with(operator: OperatorProcess, bearer: str) -> int:
    headers = {"Authorization": f"Bearer {bearer}"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{operator.api_url}/api/v1/agents", headers=headers) as response,
    ):
        return response.status


async def test_no_secret_in_any_log_line(
    private_postgres: PostgresServer,  # first: removed after the operator is gone
    operator_factory: OperatorFactory,
    tmp_path: Path,
) -> None:
    endpoint = private_postgres.create_database("opamp")
    good = [token(), token()]
    wrong = {"ws": token(), "http": token(), "raw": token(), "rest": token()}
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text("# agent tokens\n" + "\n".join(good) + "\n")
    operator = operator_factory(
        dsn=endpoint.dsn,
        log_level="DEBUG",
        api_auth=True,
        extra_args=("--agent-tokens-file", str(tokens_file)),
    )
    await operator.start()
    agents = [GoAgent() for _ in range(4)]
    try:
        ok_ws, ok_http, bad_ws, bad_http = agents
        await ok_ws.start(url=operator.ws_url, token=good[0], heartbeat=1)
        await ok_http.start(url=operator.http_url, token=good[1], heartbeat=1)
        await bad_ws.start(url=operator.ws_url, token=wrong["ws"], heartbeat=1)
        await bad_http.start(url=operator.http_url, token=wrong["http"], heartbeat=1)
        await ok_ws.wait_for_event("connected", timeout=20)
        await ok_http.wait_for_event("connected", timeout=20)
        assert await post_with(operator, f"Bearer {wrong['raw']}") == 401
        assert await post_with(operator, wrong["raw"]) == 401  # no scheme
        assert await post_with(operator, f"Basic {wrong['raw']}") == 401
        assert await rest_with(operator, wrong["rest"]) == 401  # TokenReview: unknown

        assert private_postgres.endpoint is not None
        await stop_postgres(private_postgres, private_postgres.endpoint.dsn)
        await eventually("/readyz reports the outage", lambda: _db_down(operator), within=15)
        # The writer's retries (each a failed pool connect, logged at DEBUG) ran...
        await grows("failed PostgreSQL attempts", operator.metric("opamp_db_errors_total"), 2)
        await asyncio.to_thread(private_postgres.start)
        await eventually("/readyz 200 again", lambda: _db_up(operator), within=20)
        # ...and so did the agents with wrong tokens: refused again, after the outage too.
        for transport in ("websocket", "http"):
            refusals = operator.metric("opamp_auth_failures_total", transport=transport)
            await grows(f"refusals of the {transport} agent's wrong token", refusals)
        assert await operator.terminate() == 0
    finally:
        for agent in agents:
            if agent.running:
                await agent.kill()

    migrate = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "opamp_operator", "--log-level", "DEBUG", "migrate", "status"],
        capture_output=True, text=True, timeout=60, cwd=REPO_ROOT,
        env={**os.environ, "OPAMP_DATABASE_DSN": endpoint.dsn.replace(
            endpoint.password, endpoint.password[::-1])},
    )  # fmt: skip
    assert migrate.returncode != 0, migrate.stdout

    log = operator.log_text()
    assert "401" in log or "bearer token" in log  # the refusals were logged...
    assert "unreachable" in log or "failed" in log  # ...and the outage too
    secrets_used = {
        "the DSN password": endpoint.password,
        "the reversed DSN password": endpoint.password[::-1],
        **{f"agent token {n}": value for n, value in enumerate(good)},
        **{f"wrong {kind} token": value for kind, value in wrong.items()},
    }
    outputs = {"operator log": log, "migrate output": migrate.stdout + migrate.stderr}
    for what, secret in secrets_used.items():
        for where, text in outputs.items():
            leaks = [line for line in text.splitlines() if secret in line]
            assert not leaks, f"{what} appears in the {where}:\n" + "\n".join(leaks)


async def _db_down(operator: OperatorProcess) -> bool:
    status, body = await readyz(operator)
    return status == 503 and body["checks"]["database"] is False


async def _db_up(operator: OperatorProcess) -> bool:
    status, _ = await readyz(operator)
    return status == 200
