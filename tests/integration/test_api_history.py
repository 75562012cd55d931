"""History endpoints over the real PostgreSQL, written by the real store writer.

A Fleet fed by fake channels (and a fake clock) produces the events; the store's writer puts
them in a database migrated with the store's own migrations; the REST API reads them back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from opamp_operator.api.history import StoreHistoryReader
from opamp_operator.api.server import ApiServer
from opamp_operator.config import StoreSettings
from opamp_operator.fleet.events import PhaseChanged, SessionClosed, SessionOpened, Subscription
from opamp_operator.fleet.model import Reason, Transport
from opamp_operator.store.migrations import migrate
from opamp_operator.store.pool import create_pool
from opamp_operator.store.writer import StoreWriter
from tests.support.api_fleet import (
    FakeChannel,
    api_settings,
    disconnect,
    heartbeat,
    hello,
    make_fleet,
    new_agent_id,
    serving,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def pool(postgres_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    await migrate(postgres_dsn)
    pool = await create_pool(StoreSettings(dsn=postgres_dsn))
    try:
        yield pool
    finally:
        await pool.close()


async def _pages(client: Any, path: str, limit: int) -> list[dict[str, Any]]:
    """Every item of a paged list, following nextCursor."""
    items: list[dict[str, Any]] = []
    params = {"limit": str(limit)}
    for _ in range(50):
        async with client.get(path, params=params) as r:
            assert r.status == 200, await r.text()
            body = await r.json()
        assert len(body["items"]) <= limit
        items += body["items"]
        if body["nextCursor"] is None:
            return items
        params["cursor"] = body["nextCursor"]
    raise AssertionError("paging never ended")


def _events_of(
    subscription: Subscription, agent_id: str
) -> tuple[list[SessionOpened], dict[str, SessionClosed], list[PhaseChanged]]:
    opened: list[SessionOpened] = []
    closed: dict[str, SessionClosed] = {}
    changes: list[PhaseChanged] = []
    while (event := subscription.get_nowait()) is not None:
        if event.agent_id != agent_id:
            continue
        if isinstance(event, SessionOpened):
            opened.append(event)
        elif isinstance(event, SessionClosed):
            closed[event.session_id] = event
        elif isinstance(event, PhaseChanged):
            changes.append(event)
    return opened, closed, changes


async def test_sessions_and_transitions_newest_first(postgres_dsn: str, pool: asyncpg.Pool) -> None:
    fleet, clock, bus = make_fleet()
    watched = bus.subscribe("expected", 1000)
    writer = StoreWriter(
        StoreSettings(dsn=postgres_dsn), pool, fleet, bus.subscribe("store"), clock
    )
    await writer.start()
    agent_id, other = new_agent_id(), new_agent_id()
    fleet.handle_message(FakeChannel(), hello(other))  # its rows must not show up below
    # 1: a WebSocket closed by the network after 10 s.
    channel = FakeChannel(remote_addr="10.0.0.1:1000")
    fleet.handle_message(channel, hello(agent_id))
    clock.advance(10)
    fleet.channel_closed(channel)
    # 2: HTTP polls, then silence: the heartbeat times out.
    clock.advance(5)
    fleet.handle_message(FakeChannel(Transport.HTTP), hello(agent_id, 1))
    clock.advance(fleet.settings.heartbeat_timeout_seconds + 1)
    fleet.check_deadlines()
    # 3 and 4: two sessions that start and end in the same instant (ties in connected_at).
    for seq in (2, 4):
        channel = FakeChannel()
        fleet.handle_message(channel, hello(agent_id, seq))
        fleet.handle_message(channel, disconnect(agent_id, seq + 1))
    # 5: still open.
    clock.advance(60)
    fleet.handle_message(FakeChannel(Transport.HTTP), hello(agent_id, 10))
    fleet.handle_message(FakeChannel(Transport.HTTP), heartbeat(agent_id, 11))
    await writer.stop()

    opened, closed, changes = _events_of(watched, agent_id)
    assert len(opened) == 5 and len(closed) == 4

    async with serving(
        ApiServer(api_settings(auth_enabled=False), fleet, StoreHistoryReader(pool), None, dict)
    ) as client:
        sessions = await _pages(client, f"/api/v1/agents/{agent_id}/connection-history", 2)
        transitions = await _pages(client, f"/api/v1/agents/{agent_id}/transitions", 3)

    # Newest first; sessions opened in the same instant come newest-written first.
    assert [s["sessionId"] for s in sessions] == [e.session_id for e in reversed(opened)]
    latest = sessions[0]
    assert latest["disconnectedAt"] is None and latest["durationSeconds"] is None
    assert latest["transport"] == "http"
    reasons = [s["disconnectReason"] for s in sessions[1:]]
    assert reasons == [
        Reason.AGENT_DISCONNECT, Reason.AGENT_DISCONNECT,
        Reason.HEARTBEAT_TIMEOUT, Reason.CONNECTION_CLOSED,
    ]  # fmt: skip
    first = sessions[-1]
    assert (first["durationSeconds"], first["remoteAddr"], first["transport"]) == (
        10.0, "10.0.0.1:1000", "websocket"
    )  # fmt: skip
    assert first["connectedAt"] == opened[0].at.isoformat().replace("+00:00", "Z")
    expected = [
        {
            "from": c.previous.value if c.previous else None,
            "to": c.current.value,
            "reason": c.reason,
        }
        for c in reversed(changes)
    ]
    assert [{k: t[k] for k in ("from", "to", "reason")} for t in transitions] == expected
    assert transitions[-1] == {
        "from": None, "to": "Online", "reason": "connected",
        "at": changes[0].at.isoformat().replace("+00:00", "Z"),
    }  # fmt: skip

    await _served_from_the_database_alone(pool, agent_id)


async def _served_from_the_database_alone(pool: asyncpg.Pool, agent_id: str) -> None:
    """An operator restarted with an empty fleet still serves what the database knows."""
    empty_fleet, _, _ = make_fleet()
    reader = StoreHistoryReader(pool)
    server = ApiServer(api_settings(auth_enabled=False), empty_fleet, reader, None, dict)
    async with serving(server) as client:
        async with client.get(f"/api/v1/agents/{agent_id}/connection-history") as r:
            assert r.status == 200
            assert len((await r.json())["items"]) == 5
        async with client.get(f"/api/v1/agents/{agent_id}/status") as r:
            assert r.status == 404  # status is live state only
        async with client.get(f"/api/v1/agents/{new_agent_id()}/transitions") as r:
            assert r.status == 404
        # Past the end: an empty page of a known agent is not a 404.
        async with client.get(
            f"/api/v1/agents/{agent_id}/transitions", params={"cursor": "1"}
        ) as r:
            assert r.status == 200
            assert await r.json() == {"items": [], "nextCursor": None}


async def test_database_outage_is_503_problem(pool: asyncpg.Pool) -> None:
    fleet, _, _ = make_fleet()
    agent_id = new_agent_id()
    fleet.handle_message(FakeChannel(), hello(agent_id))
    server = ApiServer(
        api_settings(auth_enabled=False), fleet, StoreHistoryReader(pool), None, dict
    )
    async with serving(server) as client:
        async with client.get(f"/api/v1/agents/{agent_id}/connection-history") as r:
            assert r.status == 200  # the agent is in the fleet: no rows yet is fine
            assert (await r.json())["items"] == []
        await pool.close()
        async with client.get(f"/api/v1/agents/{agent_id}/connection-history") as r:
            assert r.status == 503
            assert r.content_type == "application/problem+json"
            assert r.headers["Retry-After"] == "5"
        async with client.get(f"/api/v1/agents/{agent_id}/status") as r:
            assert r.status == 200  # live state does not need the database


async def test_components_from_the_fleet_and_after_a_restart_from_the_database(
    pool: asyncpg.Pool, postgres_dsn: str
) -> None:
    fleet, clock, bus = make_fleet()
    writer = StoreWriter(StoreSettings(dsn=postgres_dsn), pool, fleet, bus.subscribe("s"), clock)
    agent_id = new_agent_id()
    first = hello(agent_id)
    first.available_components.hash = b"\x07" * 32
    debug = first.available_components.components["exporters"].sub_component_map["debug"]
    debug.metadata.add(key="stability").value.bytes_value = b"\x00beta"
    fleet.handle_message(FakeChannel(), first)
    assert await writer.flush()
    server = ApiServer(
        api_settings(auth_enabled=False), fleet, StoreHistoryReader(pool), None, dict
    )
    async with serving(server) as client:
        async with client.get(f"/api/v1/agents/{agent_id}/components") as r:
            assert r.status == 200
            live = await r.json()
        async with client.get(f"/api/v1/agents/{new_agent_id()}/components") as r:
            assert r.status == 404
    assert live["source"] == "fleet" and live["storedAt"] is None
    assert (live["complete"], live["counts"], live["total"]) == (True, {"exporters": 1}, 1)
    assert live["components"]["exporters"]["subComponents"]["debug"]["metadata"] == {
        "stability": "AGJldGE="  # bytes as base64, in memory and in the database alike
    }

    empty_fleet, _, _ = make_fleet()
    restarted = ApiServer(
        api_settings(auth_enabled=False), empty_fleet, StoreHistoryReader(pool), None, dict
    )
    path = f"/api/v1/agents/{agent_id}/components"
    async with serving(restarted) as client, client.get(path) as r:
        assert r.status == 200
        stored = await r.json()
    assert stored["source"] == "database" and stored["storedAt"] is not None
    same = ("id", "hash", "complete", "counts", "total", "components")
    assert {k: stored[k] for k in same} == {k: live[k] for k in same}
