"""The OpenAPI document matches the server: schemathesis against a live ApiServer.

The server is the real thing: Kubernetes authorization (TokenReview/SubjectAccessReview on
the test bed's kube-apiserver) and history from PostgreSQL written by the store writer.
Schemathesis runs as its CLI in a subprocess with a bounded number of examples and a fixed
seed; every check is on (no server errors, status codes, content types, headers, response
schemas, rejection of invalid input, authentication enforced).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from kubernetes import client as k8s

from opamp_operator.api.auth import KubeAuthorizer
from opamp_operator.api.history import StoreHistoryReader
from opamp_operator.api.server import ApiServer
from opamp_operator.config import StoreSettings
from opamp_operator.fleet.model import Transport
from opamp_operator.opamp.generated import opamp_pb2
from opamp_operator.store.migrations import migrate
from opamp_operator.store.pool import create_pool
from opamp_operator.store.writer import StoreWriter
from tests.support.api_fleet import (
    FakeChannel,
    api_settings,
    hello,
    make_fleet,
    new_agent_id,
    visit,
)
from tests.support.api_kube import grant, service_account_token

pytestmark = pytest.mark.integration

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
MAX_EXAMPLES = 25
RUN_TIMEOUT_SECONDS = 240


async def test_schemathesis_finds_no_server_errors_and_no_mismatch(
    kube_api: k8s.ApiClient, namespace: str, postgres_dsn: str, tmp_path: Path
) -> None:
    token = service_account_token(kube_api, namespace, "fuzzer")
    grant(kube_api, namespace, "fuzzer", ["get", "list", "update"])
    await migrate(postgres_dsn)
    store_settings = StoreSettings(dsn=postgres_dsn)
    pool = await create_pool(store_settings)
    fleet, clock, bus = make_fleet()
    writer = StoreWriter(store_settings, pool, fleet, bus.subscribe("store"), clock)
    await writer.start()
    for _ in range(3):
        fleet.handle_message(FakeChannel(), hello(new_agent_id()))
    fleet.handle_message(FakeChannel(Transport.HTTP), hello(new_agent_id()))
    # One that accepts restarts (over HTTP: each request queues one), so that
    # POST .../restart is also answered 202, not only 404/409.
    restartable = hello(new_agent_id())
    restartable.capabilities |= opamp_pb2.AgentCapabilities_AcceptsRestartCommand
    fleet.handle_message(FakeChannel(Transport.HTTP), restartable)
    # One that reported its AvailableComponents in full, so .../components answers 200 too.
    collector_id = new_agent_id()
    collector = hello(collector_id)
    collector.available_components.hash = b"components-hash"
    otlp = collector.available_components.components["receivers"].sub_component_map["otlp"]
    otlp.metadata.add(key="code.namespace").value.string_value = "receiver/otlpreceiver"
    fleet.handle_message(FakeChannel(), collector)
    for _ in range(2):
        visit(fleet, new_agent_id(), clock, 42)
    await writer.stop()  # everything so far is in the database

    # Its id for .../components: schemathesis infers no link to that operation, so its
    # random ids met only 404s in some runs (a "missing test data" warning fails the run).
    operation = 'include-name = "GET /api/v1/agents/{id}/components"'
    parameters = f'parameters = {{ "path.id" = "{collector_id}" }}'
    (tmp_path / "schemathesis.toml").write_text(f"[[operations]]\n{operation}\n{parameters}\n")

    settings = api_settings()  # authentication on, answers cached
    auth = KubeAuthorizer(kube_api, namespace, settings)
    server = ApiServer(settings, fleet, StoreHistoryReader(pool), auth, lambda: {"all": True})
    await server.start()
    try:
        process = await asyncio.create_subprocess_exec(
            str(SCHEMATHESIS), "run", f"http://127.0.0.1:{server.port}/api/v1/openapi.json",
            "--checks", "all",
            "--max-examples", str(MAX_EXAMPLES),
            "--seed", "20260101",
            "--workers", "1",
            "--header", f"Authorization: Bearer {token}",
            "--request-timeout", "10",
            "--no-color",
            cwd=tmp_path,  # its reports and caches stay out of the repository
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT_SECONDS)
    finally:
        await server.stop()
        auth.close()
        await pool.close()
    text = output.decode(errors="replace")
    assert process.returncode == 0, text
    assert "No issues found" in text, text
    assert "11 selected / 11 total" in text, text  # every operation was tested
