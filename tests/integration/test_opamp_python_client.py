"""The official Python OpAMP client (HTTP, in a subprocess) against our listener."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from opamp_operator.fleet.model import AgentPhase, AgentSnapshot, Transport
from opamp_operator.testbed.certs import make_certs
from tests.support.opamp_clients import PythonAgent, metric, opamp_server

pytestmark = pytest.mark.integration

HEARTBEAT = 1.0
TIMEOUT = 2.0


def online(snapshot: AgentSnapshot) -> bool:
    return snapshot.phase is AgentPhase.ONLINE


async def test_reports_description_heartbeats_and_is_online() -> None:
    uid = uuid.uuid4()
    heartbeats = metric("opamp_messages_received_total", transport="http", kind="heartbeat")
    async with (
        opamp_server(heartbeat=HEARTBEAT, heartbeat_timeout=TIMEOUT) as server,
        PythonAgent() as agent,
    ):
        await agent.start(url=server.http_url, instance_uid=uid, heartbeat=HEARTBEAT / 2)
        await agent.wait_for_event("connected")
        first = await server.wait_for_agent(uid, online)
        assert first.service_name == "python-agent"
        assert first.host_name == "test-host"
        assert first.session is not None
        assert first.session.transport is Transport.HTTP
        assert first.session.remote_addr.startswith("127.0.0.1:")
        # Heartbeats keep it Online well past the timeout, and move last_seen on.
        later = await server.wait_for_agent(
            uid, lambda s: (s.last_seen_at - first.last_seen_at).total_seconds() > TIMEOUT
        )
        assert later.phase is AgentPhase.ONLINE
        assert later.phase_since == first.phase_since
        assert later.session is not None
        assert later.session.session_id == first.session.session_id
    after = metric("opamp_messages_received_total", transport="http", kind="heartbeat")
    assert after - heartbeats >= 3


async def test_stop_sends_agent_disconnect() -> None:
    uid = uuid.uuid4()
    async with (
        opamp_server(heartbeat=HEARTBEAT, heartbeat_timeout=TIMEOUT) as server,
        PythonAgent() as agent,
    ):
        await agent.start(url=server.http_url, instance_uid=uid, heartbeat=HEARTBEAT / 2)
        await server.wait_for_agent(uid, online)
        assert await agent.stop() == 0
        snapshot = server.agent(uid)
        assert snapshot is not None
        assert snapshot.phase is AgentPhase.OFFLINE
        assert snapshot.phase_reason == "agent_disconnect"
        assert snapshot.session is None


async def test_frozen_client_goes_offline_on_heartbeat_timeout_and_comes_back() -> None:
    uid = uuid.uuid4()
    async with (
        opamp_server(heartbeat=HEARTBEAT, heartbeat_timeout=TIMEOUT) as server,
        PythonAgent() as agent,
    ):
        await agent.start(url=server.http_url, instance_uid=uid, heartbeat=HEARTBEAT / 2)
        await server.wait_for_agent(uid, online)
        agent.freeze()
        frozen_at = time.monotonic()
        offline = await server.wait_for_agent(
            uid, lambda s: s.phase is AgentPhase.OFFLINE, timeout=TIMEOUT + 3
        )
        assert time.monotonic() - frozen_at <= TIMEOUT + 1
        assert offline.phase_reason == "heartbeat_timeout"
        agent.thaw()
        back = await server.wait_for_agent(uid, online, timeout=5)
        assert back.phase_reason in ("connected", "heartbeat_resumed")


@pytest.mark.parametrize("token", [None, "wrong"], ids=["missing", "wrong"])
async def test_bad_token_gets_401_and_registers_nothing(token: str | None) -> None:
    failures = metric("opamp_auth_failures_total", transport="http")
    async with opamp_server(agent_tokens=frozenset({"s3cret"})) as server, PythonAgent() as agent:
        await agent.start(url=server.http_url, token=token, heartbeat=HEARTBEAT)
        failed = await agent.wait_for_event("connect_failed")
        assert "401" in failed.get("error")
        assert len(server.fleet) == 0
    assert metric("opamp_auth_failures_total", transport="http") > failures


async def test_right_token_is_accepted() -> None:
    uid = uuid.uuid4()
    async with (
        opamp_server(agent_tokens=frozenset({"other", "s3cret"})) as server,
        PythonAgent() as agent,
    ):
        await agent.start(url=server.http_url, instance_uid=uid, token="s3cret")
        await agent.wait_for_event("connected")
        await server.wait_for_agent(uid, online)


async def test_https_with_client_certificates(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs")
    uid = uuid.uuid4()
    async with opamp_server(
        tls_cert_file=certs.serving_cert,
        tls_key_file=certs.serving_key,
        tls_client_ca_file=certs.ca_cert,
    ) as server:
        assert server.http_url.startswith("https://")
        async with PythonAgent() as agent:  # no client certificate: the TLS handshake fails
            await agent.start(url=server.http_url, ca_file=certs.ca_cert)
            await agent.wait_for_event("connect_failed")
        async with PythonAgent() as agent:
            await agent.start(
                url=server.http_url,
                instance_uid=uid,
                ca_file=certs.ca_cert,
                client_cert=(certs.admin_cert, certs.admin_key),
            )
            await agent.wait_for_event("connected")
            snapshot = await server.wait_for_agent(uid, online)
            assert snapshot.service_name == "python-agent"
        assert len(server.fleet) == 1
