"""PostgreSQL going away mid-traffic: the fleet never blocks, nothing of the history is lost.

These tests run their own PostgreSQL server (the shared one must stay up) and stop it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from opamp_operator import metrics
from opamp_operator.store import queries
from opamp_operator.testbed.postgres import PostgresEndpoint, PostgresServer
from tests.support.polling import eventually
from tests.support.store import (
    FakeChannel,
    heartbeat,
    hello,
    new_agent_id,
    stop_postgres,
    store_rig,
)

pytestmark = pytest.mark.integration

FAST_RETRY: dict[str, Any] = {
    "flush_interval_seconds": 0.05,
    "max_backoff_seconds": 0.4,
    "connect_timeout_seconds": 1.0,
    "command_timeout_seconds": 2.0,
}


@pytest.fixture
async def own_postgres() -> AsyncIterator[tuple[PostgresServer, PostgresEndpoint]]:
    server = PostgresServer()
    try:
        await asyncio.to_thread(server.start)
        endpoint = await asyncio.to_thread(server.create_database, "outage")
        yield server, endpoint
    finally:
        await asyncio.to_thread(server.remove)


def _errors() -> float:
    return metrics.REGISTRY.get_sample_value("opamp_db_errors_total", {"operation": "flush"}) or 0


async def test_outage_loses_no_history_and_last_seen_catches_up(
    own_postgres: tuple[PostgresServer, PostgresEndpoint], caplog: pytest.LogCaptureFixture
) -> None:
    server, endpoint = own_postgres
    async with store_rig(endpoint.dsn, start=True, **FAST_RETRY) as rig:
        fleet, clock, writer = rig.fleet, rig.clock, rig.writer
        t0 = clock.now()
        agents = [new_agent_id() for _ in range(20)]
        channels = {agent: FakeChannel() for agent in agents}
        for agent in agents:
            fleet.handle_message(channels[agent], hello(agent))
        await eventually("first writes", lambda: writer.pending() == 0 and writer.ready)

        await stop_postgres(server, endpoint.dsn)
        errors_before = _errors()
        caplog.set_level(logging.INFO, logger="opamp_operator.store.writer")

        # Traffic while the database is down: heartbeats, disconnects, new agents.
        clock.advance(10)
        for agent in agents:
            fleet.handle_message(channels[agent], heartbeat(agent, 1))
        clock.advance(5)
        for agent in agents[:5]:
            fleet.channel_closed(channels[agent])
        clock.advance(5)
        newcomers = [new_agent_id() for _ in range(5)]
        for agent in newcomers:
            channels[agent] = FakeChannel()
            fleet.handle_message(channels[agent], hello(agent))
        clock.advance(5)
        for agent in newcomers:
            fleet.handle_message(channels[agent], heartbeat(agent, 1))

        await eventually("the writer to notice the outage", lambda: not writer.ready)
        await eventually("several failed retries", lambda: _errors() > errors_before + 2)
        assert writer.pending() > 0

        await asyncio.to_thread(server.start)
        await eventually("catch-up", lambda: writer.ready and writer.pending() == 0)

        async with rig.pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM agent_connection_history") == 25
            assert await conn.fetchval("SELECT count(*) FROM agent_state_transitions") == 30
            seen = {
                row["id"]: row["last_seen_at"]
                for row in await conn.fetch("SELECT id, last_seen_at FROM agents")
            }
        for agent in agents[:5]:
            (row,) = await queries.agent_history(rig.pool, agent)
            assert (row.duration_seconds, row.disconnect_reason) == (15.0, "connection_closed")
            stored = await queries.get_agent(rig.pool, agent)
            assert stored is not None and stored.status == "offline"
        for agent in agents[5:] + newcomers:
            (row,) = await queries.agent_history(rig.pool, agent)
            assert row.disconnected_at is None
        assert {seen[a] for a in agents} == {t0 + timedelta(seconds=10)}
        assert {seen[a] for a in newcomers} == {t0 + timedelta(seconds=25)}
        assert writer.dropped_history == writer.dropped_last_seen == 0

    outage_logs = [r for r in caplog.records if "failed (flush)" in r.getMessage()]
    recovered = [r for r in caplog.records if "reachable again" in r.getMessage()]
    assert len(outage_logs) == 1, "an outage is logged once, not per retry"
    assert len(recovered) == 1
    assert endpoint.password not in caplog.text


async def test_overflow_during_outage_sheds_heartbeats_first_and_resyncs(
    own_postgres: tuple[PostgresServer, PostgresEndpoint],
) -> None:
    server, endpoint = own_postgres
    async with store_rig(endpoint.dsn, start=True, queue_size=30, **FAST_RETRY) as rig:
        fleet, clock, writer = rig.fleet, rig.clock, rig.writer
        agents = [new_agent_id() for _ in range(10)]
        channels = {agent: FakeChannel() for agent in agents}
        for agent in agents:
            fleet.handle_message(channels[agent], hello(agent))
        await eventually("first writes", lambda: writer.pending() == 0 and writer.ready)

        await stop_postgres(server, endpoint.dsn)
        clock.advance(10)
        for agent in agents:
            fleet.handle_message(channels[agent], heartbeat(agent, 1))
        await eventually("the outage to be noticed", lambda: not writer.ready)
        # 10 sessions closing make 20 history events; then 10 reconnects make 20 more:
        # more than the buffer (30) holds, so last-seen times go first, then history.
        clock.advance(10)
        for agent in agents:
            fleet.channel_closed(channels[agent])
        failed = _errors()
        # A failed flush (of the closings too) merges the last-seen times back.
        await eventually("a failed flush", lambda: _errors() > failed)
        clock.advance(10)
        for agent in agents:
            channels[agent] = FakeChannel()
            fleet.handle_message(channels[agent], hello(agent, 1))
        await eventually("history to be shed", lambda: writer.dropped_history > 0)
        assert writer.dropped_last_seen == 10
        assert writer.pending() <= 30

        await asyncio.to_thread(server.start)
        await eventually("catch-up", lambda: writer.ready and writer.pending() == 0)
        # After the resync every agent's row matches the fleet, history loss aside.
        for agent in agents:
            stored = await queries.get_agent(rig.pool, agent)
            snapshot = fleet.get(agent)
            assert stored is not None and snapshot is not None
            assert stored.status == "online"
            assert stored.last_seen_at == snapshot.last_seen_at
            assert stored.last_connected_at == snapshot.last_connected_at
        async with rig.pool.acquire() as conn:
            closed = await conn.fetchval(
                "SELECT count(*) FROM agent_connection_history WHERE disconnected_at IS NOT NULL"
            )
        assert closed == 10  # every close was kept: history is shed only after heartbeats


async def test_stop_during_outage_is_bounded(
    own_postgres: tuple[PostgresServer, PostgresEndpoint], caplog: pytest.LogCaptureFixture
) -> None:
    server, endpoint = own_postgres
    async with store_rig(endpoint.dsn, start=True, stop_timeout_seconds=1.0, **FAST_RETRY) as rig:
        agent = new_agent_id()
        rig.fleet.handle_message(FakeChannel(), hello(agent))
        await eventually("first writes", lambda: rig.writer.pending() == 0)
        await stop_postgres(server, endpoint.dsn)
        rig.fleet.handle_message(FakeChannel(), hello(new_agent_id()))

        loop = asyncio.get_running_loop()
        started = loop.time()
        await rig.writer.stop()
        assert loop.time() - started < 3.0
        assert rig.writer.pending() == 2  # session opened, phase changed: not written
    assert "stopped with 2 events" in caplog.text
