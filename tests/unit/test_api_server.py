"""The REST API as a client sees it, on loopback, over a Fleet fed by fake channels.

Authorization and history are fakes here; tests/integration/test_api_*.py use the real
kube-apiserver and PostgreSQL.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import pytest

from opamp_operator.api.openapi import openapi_document
from opamp_operator.api.paging import SessionCursor
from opamp_operator.api.server import VERBS, ApiServer
from opamp_operator.config import ConfigError
from opamp_operator.fleet.model import Reason, Transport
from opamp_operator.fleet.registry import Fleet
from tests.support.api_fleet import (
    FakeAuthorizer,
    FakeChannel,
    api_settings,
    hello,
    make_fleet,
    new_agent_id,
    serving,
    visit,
)

PROBLEM = "application/problem+json"


def _server(fleet: Fleet, **kwargs: Any) -> ApiServer:
    """A server without authorization (see the auth test for that)."""
    ready = {"listener": True, "database": True, "kubernetes": True}
    return ApiServer(
        api_settings(auth_enabled=False),
        fleet,
        kwargs.get("history"),
        None,
        kwargs.get("readiness", lambda: ready),
    )


async def _problem(response: aiohttp.ClientResponse, status: int) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.content_type == PROBLEM
    body: dict[str, Any] = await response.json(content_type=PROBLEM)
    assert body["status"] == status
    assert body["type"].startswith("https://") and body["title"] and body["detail"]
    return body


async def test_status_of_a_connected_agent_comes_from_the_fleet() -> None:
    fleet, clock, _ = make_fleet()
    agent_id = new_agent_id()
    fleet.handle_message(FakeChannel(remote_addr="10.1.2.3:4567"), hello(agent_id))
    async with (
        serving(_server(fleet)) as client,
        client.get(f"/api/v1/agents/{agent_id}/status") as r,
    ):
        assert r.status == 200
        body = await r.json()
    assert body["id"] == agent_id
    assert (body["phase"], body["reason"], body["connected"]) == ("Online", "connected", True)
    assert body["lastSeen"] == clock.now().isoformat().replace("+00:00", "Z")
    assert body["connection"]["transport"] == "websocket"
    assert body["connection"]["remoteAddr"] == "10.1.2.3:4567"
    assert body["description"]["identifyingAttributes"]["service.name"] == "otelcol"
    # bytes attributes cannot be JSON as they are: base64
    assert body["description"]["identifyingAttributes"]["service.instance.id"] == "AP9pZA=="
    assert body["health"]["healthy"] is True
    assert "ReportsStatus" in body["capabilities"]


async def test_status_after_a_heartbeat_timeout() -> None:
    fleet, clock, _ = make_fleet()
    agent_id = new_agent_id()
    fleet.handle_message(FakeChannel(), hello(agent_id))
    clock.advance(fleet.settings.heartbeat_timeout_seconds + 1)
    fleet.check_deadlines()
    async with (
        serving(_server(fleet)) as client,
        client.get(f"/api/v1/agents/{agent_id}/status") as r,
    ):
        body = await r.json()
    assert (body["phase"], body["reason"]) == ("Offline", "heartbeat_timeout")
    assert body["connected"] is False and body["connection"] is None
    assert body["disconnectReason"] == "heartbeat_timeout"


async def test_unknown_and_malformed_ids() -> None:
    fleet, _, _ = make_fleet()
    async with serving(_server(fleet)) as client:
        async with client.get(f"/api/v1/agents/{new_agent_id()}/status") as r:
            await _problem(r, 404)
        async with client.get("/api/v1/agents/not-a-uuid/status") as r:
            body = await _problem(r, 400)
            assert body["instance"] == "/api/v1/agents/not-a-uuid/status"
        async with client.post("/api/v1/agents/1234/reconnect") as r:
            await _problem(r, 400)


async def test_list_filters_by_status_and_pages_by_id() -> None:
    fleet, _, _ = make_fleet()
    online = sorted(new_agent_id() for _ in range(5))
    offline = new_agent_id()
    for agent_id in online:
        fleet.handle_message(FakeChannel(), hello(agent_id))
    visit(fleet, offline)
    async with serving(_server(fleet)) as client:
        seen: list[str] = []
        params = {"status": "online", "limit": "2"}
        for _ in range(10):
            async with client.get("/api/v1/agents", params=params) as r:
                body = await r.json()
            seen += [item["id"] for item in body["items"]]
            if body["nextCursor"] is None:
                break
            params["cursor"] = body["nextCursor"]
        assert seen == online
        async with client.get("/api/v1/agents", params={"status": "offline"}) as r:
            assert [i["id"] for i in (await r.json())["items"]] == [offline]
        async with client.get("/api/v1/agents", params={"status": "sleeping"}) as r:
            await _problem(r, 400)
        async with client.get("/api/v1/agents", params={"limit": "0"}) as r:
            await _problem(r, 400)


async def test_offline_lists_offline_and_error_agents_with_time_in_phase() -> None:
    fleet, clock, _ = make_fleet()
    errored, offline, online = new_agent_id(), new_agent_id(), new_agent_id()
    # A lost agent (its connection dropped) turns Error; one that said goodbye would not.
    lost = FakeChannel()
    fleet.handle_message(lost, hello(errored))
    fleet.channel_closed(lost)
    clock.advance(fleet.settings.error_after_offline_seconds + 5)
    fleet.check_deadlines()  # errored: Offline -> Error
    clock.advance(10)
    visit(fleet, offline)
    clock.advance(30)
    fleet.handle_message(FakeChannel(), hello(online))
    async with serving(_server(fleet)) as client, client.get("/api/v1/agents/offline") as r:
        body = await r.json()
    assert body["count"] == 2
    first, second = body["items"]
    assert (first["id"], first["phase"], first["reason"]) == (errored, "Error", "offline_too_long")
    assert first["secondsInPhase"] == pytest.approx(40.0)
    assert (second["id"], second["phase"], second["secondsInPhase"]) == (offline, "Offline", 30.0)


async def test_reconnect_websocket_http_offline_unknown() -> None:
    fleet, _, _ = make_fleet()
    ws_agent, http_agent, gone = new_agent_id(), new_agent_id(), new_agent_id()
    ws_channel = FakeChannel()
    fleet.handle_message(ws_channel, hello(ws_agent))
    fleet.handle_message(FakeChannel(Transport.HTTP), hello(http_agent))
    visit(fleet, gone)
    async with serving(_server(fleet)) as client:
        async with client.post(f"/api/v1/agents/{ws_agent}/reconnect") as r:
            assert r.status == 202
            assert await r.json() == {
                "id": ws_agent, "status": "reconnect requested", "transport": "websocket"
            }  # fmt: skip
        assert ws_channel.close_requests == [Reason.RECONNECT_REQUESTED]
        async with client.post(f"/api/v1/agents/{http_agent}/reconnect") as r:
            assert r.status == 202
        # An HTTP agent hears it in the reply to its next poll: the session ends then.
        reply = fleet.handle_message(FakeChannel(Transport.HTTP), hello(http_agent, 1))
        assert reply is not None
        http_status = fleet.get(http_agent)
        assert http_status is not None and http_status.disconnect_reason == "reconnect_requested"
        async with client.post(f"/api/v1/agents/{gone}/reconnect") as r:
            await _problem(r, 409)
        async with client.post(f"/api/v1/agents/{new_agent_id()}/reconnect") as r:
            await _problem(r, 404)


async def test_auth_verbs_401_403_and_public_routes() -> None:
    fleet, _, _ = make_fleet()
    agent_id = new_agent_id()
    fleet.handle_message(FakeChannel(), hello(agent_id))
    auth = FakeAuthorizer({"reader": {"get", "list"}, "operator": {"get", "list", "update"}})
    server = ApiServer(api_settings(), fleet, None, auth, dict)
    async with serving(server) as client:
        async with client.get("/api/v1/agents") as r:
            await _problem(r, 401)
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
        async with client.get("/api/v1/agents", headers={"Authorization": "Basic eDp5"}) as r:
            await _problem(r, 401)
        async with client.get("/api/v1/agents", headers={"Authorization": "Bearer nobody"}) as r:
            await _problem(r, 401)
        reader = {"Authorization": "Bearer reader"}
        async with client.get(f"/api/v1/agents/{agent_id}/status", headers=reader) as r:
            assert r.status == 200
        async with client.post(f"/api/v1/agents/{agent_id}/reconnect", headers=reader) as r:
            body = await _problem(r, 403)
            assert "update" in body["detail"]
        operator = {"Authorization": "Bearer operator"}
        async with client.post(f"/api/v1/agents/{agent_id}/reconnect", headers=operator) as r:
            assert r.status == 202
        calls_before = len(auth.calls)
        for path in ("/metrics", "/healthz", "/readyz", "/api/v1/openapi.json"):
            async with client.get(path) as r:
                assert r.status == 200, path
        assert len(auth.calls) == calls_before  # public routes never ask
        auth.unavailable = True
        async with client.get("/api/v1/agents", headers=reader) as r:
            await _problem(r, 503)
            assert r.headers["Retry-After"] == "1"
    assert ("reader", "list") in auth.calls and ("reader", "get") in auth.calls
    assert ("operator", "update") in auth.calls


def test_auth_enabled_without_an_authorizer_is_a_config_error() -> None:
    fleet, _, _ = make_fleet()
    with pytest.raises(ConfigError):
        ApiServer(api_settings(auth_enabled=True), fleet, None, None, dict)


async def test_auth_disabled_logs_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    fleet, _, _ = make_fleet()
    async with serving(_server(fleet)) as client, client.get("/api/v1/agents") as r:
        assert r.status == 200
    assert any(rec.levelname == "WARNING" and "OFF" in rec.message for rec in caplog.records)


async def test_readyz_needs_every_check() -> None:
    fleet, _, _ = make_fleet()
    checks = {"listener": True, "database": False, "kubernetes": True}

    def broken() -> dict[str, bool]:
        raise RuntimeError("no idea")

    async with serving(_server(fleet, readiness=lambda: checks)) as client:
        async with client.get("/readyz") as r:
            assert r.status == 503
            assert await r.json() == {"ready": False, "checks": checks}
        checks["database"] = True
        async with client.get("/readyz") as r:
            assert r.status == 200
            assert (await r.json())["ready"] is True
        async with client.get("/healthz") as r:
            assert r.status == 200
    async with serving(_server(fleet, readiness=broken)) as client, client.get("/readyz") as r:
        assert r.status == 503
        assert "RuntimeError" in (await r.json())["error"]


async def test_errors_are_problems_even_for_unknown_routes_and_methods() -> None:
    fleet, _, _ = make_fleet()
    async with serving(_server(fleet)) as client:
        async with client.get("/api/v1/nothing-here") as r:
            await _problem(r, 404)
        async with client.delete("/api/v1/agents") as r:
            await _problem(r, 405)
            assert r.headers["Allow"] == "GET"


async def test_metrics_show_fleet_counts_and_the_collector_goes_with_the_server() -> None:
    fleet, _, _ = make_fleet()
    for _ in range(3):
        fleet.handle_message(FakeChannel(), hello(new_agent_id()))
    for _ in range(2):  # two servers in turn: the second must not find a collector left over
        async with serving(_server(fleet)) as client, client.get("/metrics") as r:
            assert r.status == 200
            assert r.content_type == "text/plain"
            text = await r.text()
        assert "opamp_agents_online_total 3.0" in text
        assert text.count("opamp_agents_online_total 3.0") == 1
        assert 'opamp_agents{phase="Online",transport="websocket"} 3.0' in text


class MemoryHistory:
    """A HistoryReader over lists, with the store's newest-first keyset semantics."""

    def __init__(self, sessions: list[dict[str, Any]], transitions: list[dict[str, Any]]):
        self.sessions = sessions
        self.transition_rows = transitions
        self.fail = False

    async def history(
        self, agent_id: str, limit: int, before: SessionCursor | None
    ) -> list[dict[str, Any]]:
        if self.fail:
            raise ConnectionRefusedError("database down")
        rows = sorted(self.sessions, key=lambda r: (r["connected_at"], r["id"]), reverse=True)
        if before is not None:
            rows = [
                r for r in rows if (r["connected_at"], r["id"]) < (before.connected_at, before.id)
            ]
        return rows[:limit]

    async def transitions(
        self, agent_id: str, limit: int, before: int | None
    ) -> list[dict[str, Any]]:
        rows = sorted(self.transition_rows, key=lambda r: r["id"], reverse=True)
        return [r for r in rows if before is None or r["id"] < before][:limit]

    async def known(self, agent_id: str) -> bool:
        return bool(self.sessions)

    async def components(self, agent_id: str) -> dict[str, Any] | None:
        return None


def _session(row_id: int, at: datetime) -> dict[str, Any]:
    return {
        "id": row_id, "session_id": f"s{row_id}", "connected_at": at,
        "disconnected_at": at + timedelta(seconds=5), "duration_seconds": 5.0,
        "disconnect_reason": "connection_closed", "remote_addr": "127.0.0.1:1", "transport": "http",
    }  # fmt: skip


async def test_history_pages_newest_first_and_handles_ties_and_outages() -> None:
    fleet, clock, _ = make_fleet()
    t0 = clock.now()
    # Five sessions, two of which started in the same microsecond.
    times = [
        t0,
        t0 + timedelta(seconds=1),
        t0 + timedelta(seconds=1),
        t0 + timedelta(seconds=2),
        t0 + timedelta(seconds=3),
    ]
    transitions: list[dict[str, Any]] = [
        {"id": 1, "from_status": None, "to_status": "online", "reason": "connected", "at": t0},
        {"id": 2, "from_status": "online", "to_status": "offline",
         "reason": "heartbeat_timeout", "at": t0},
    ]  # fmt: skip
    history = MemoryHistory([_session(i + 1, at) for i, at in enumerate(times)], transitions)
    agent_id = new_agent_id()  # not in the fleet: known only to the database
    base = f"/api/v1/agents/{agent_id}"
    async with serving(_server(fleet, history=history)) as client:
        ids: list[str] = []
        params = {"limit": "2"}
        for _ in range(5):
            async with client.get(f"{base}/connection-history", params=params) as r:
                assert r.status == 200, await r.text()
                body = await r.json()
            ids += [item["sessionId"] for item in body["items"]]
            if body["nextCursor"] is None:
                break
            params["cursor"] = body["nextCursor"]
        assert ids == ["s5", "s4", "s3", "s2", "s1"]
        async with client.get(f"{base}/transitions", params={"limit": "1"}) as r:
            body = await r.json()
        assert body["items"] == [
            {
                "from": "Online",
                "to": "Offline",
                "reason": "heartbeat_timeout",
                "at": "2026-01-01T00:00:00Z",
            }
        ]
        async with client.get(f"{base}/transitions", params={"cursor": body["nextCursor"]}) as r:
            body = await r.json()
        assert [i["from"] for i in body["items"]] == [None] and body["nextCursor"] is None
        history.sessions.clear()
        async with client.get(f"{base}/connection-history") as r:
            await _problem(r, 404)
        history.fail = True
        async with client.get(f"{base}/connection-history") as r:
            await _problem(r, 503)
        async with client.get(f"{base}/connection-history", params={"cursor": "yesterday"}) as r:
            await _problem(r, 400)


async def test_history_without_a_database_is_503() -> None:
    fleet, _, _ = make_fleet()
    path = f"/api/v1/agents/{new_agent_id()}/transitions"
    async with serving(_server(fleet)) as client, client.get(path) as r:
        body = await _problem(r, 503)
    assert "database" in body["detail"]


async def test_openapi_documents_exactly_the_routes_served() -> None:
    fleet, _, _ = make_fleet()
    server = _server(fleet)
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in server.app.router.routes()
        if route.resource is not None
    }
    document = openapi_document(server.settings)
    documented = {(m, path) for path, ops in document["paths"].items() for m in ops}
    assert served == documented
    # Every authorized route declares 401 and 403; the public ones declare no security.
    for (method, path), _verb in VERBS.items():
        responses = document["paths"][path][method.lower()]["responses"]
        assert {"401", "403"} <= set(responses)
    assert document["paths"]["/metrics"]["get"]["security"] == []
    # Served as configured: a token is required only when authentication is on.
    assert "security" not in document
    assert openapi_document(api_settings(auth_enabled=True))["security"] == [{"bearer": []}]
    async with serving(server) as client, client.get("/api/v1/openapi.json") as r:
        assert json.loads(await r.text()) == document
