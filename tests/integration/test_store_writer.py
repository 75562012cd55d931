"""The batched writer on a real PostgreSQL, fed by a real Fleet."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import asyncpg
import pytest

from opamp_operator import metrics
from opamp_operator.fleet.model import Reason
from opamp_operator.store import queries
from opamp_operator.store.rows import HistoryCursor
from tests.support.polling import eventually
from tests.support.store import FakeChannel, heartbeat, hello, new_agent_id, store_rig

pytestmark = pytest.mark.integration


async def test_session_lifecycle_writes_history_and_transitions(postgres_dsn: str) -> None:
    async with store_rig(postgres_dsn) as rig:
        agent = new_agent_id()
        channel = FakeChannel(remote_addr="10.0.0.7:4711")
        t0 = rig.clock.now()
        assert rig.fleet.handle_message(channel, hello(agent)) is not None
        rig.clock.advance(10)
        rig.fleet.handle_message(channel, heartbeat(agent, 1))
        rig.clock.advance(5)
        rig.fleet.channel_closed(channel)
        assert await rig.writer.flush()

        history = await queries.agent_history(rig.pool, agent)
        assert len(history) == 1
        row = history[0]
        assert (row.connected_at, row.disconnected_at) == (t0, t0 + timedelta(seconds=15))
        assert row.duration_seconds == 15.0
        assert row.disconnect_reason == Reason.CONNECTION_CLOSED
        assert (row.transport, row.remote_addr, row.replica_id) == (
            "websocket",
            "10.0.0.7:4711",
            "replica-a",
        )

        transitions = await queries.agent_transitions(rig.pool, agent)
        assert [(t.from_status, t.to_status, t.reason) for t in reversed(transitions)] == [
            (None, "online", "connected"),
            ("online", "offline", "connection_closed"),
        ]

        stored = await queries.get_agent(rig.pool, agent)
        assert stored is not None
        assert stored.status == "offline"
        assert stored.last_seen_at == t0 + timedelta(seconds=10)
        assert stored.last_connected_at == t0
        assert stored.last_disconnected_at == t0 + timedelta(seconds=15)
        assert stored.disconnect_reason == "connection_closed"
        assert stored.created_at == t0
        assert stored.description == {
            "identifying": {"service.name": "otelcol", "service.instance.id": "AP9pZA=="},
            "non_identifying": {"host.name": "node-\ufffd-1"},
        }
        assert stored.capabilities == ["ReportsStatus", "ReportsHealth", "ReportsHeartbeat"]

        # A second flush with nothing new writes nothing and changes nothing.
        rig.writer.statements.clear()
        assert await rig.writer.flush()
        assert sum(rig.writer.statements.values()) == 0
        assert len(await queries.agent_history(rig.pool, agent)) == 1


async def test_open_session_is_visible_before_it_closes(postgres_dsn: str) -> None:
    async with store_rig(postgres_dsn) as rig:
        agent = new_agent_id()
        channel = FakeChannel()
        rig.fleet.handle_message(channel, hello(agent))
        assert await rig.writer.flush()
        (row,) = await queries.agent_history(rig.pool, agent)
        assert (row.disconnected_at, row.duration_seconds, row.disconnect_reason) == (
            None,
            None,
            None,
        )
        stored = await queries.get_agent(rig.pool, agent)
        assert stored is not None and stored.status == "online"

        rig.clock.advance(42)
        rig.fleet.channel_closed(channel, Reason.OPERATOR_SHUTDOWN)
        assert await rig.writer.flush()
        (row,) = await queries.agent_history(rig.pool, agent)
        assert (row.duration_seconds, row.disconnect_reason) == (42.0, "operator_shutdown")


async def test_thousand_heartbeating_agents_cost_one_last_seen_statement(
    postgres_dsn: str,
) -> None:
    async with store_rig(postgres_dsn) as rig:
        agents = [new_agent_id() for _ in range(1000)]
        channels = {agent: FakeChannel() for agent in agents}
        for agent in agents:
            rig.fleet.handle_message(channels[agent], hello(agent))
        assert await rig.writer.flush()
        rig.writer.statements.clear()

        # Three heartbeats per agent within one flush interval, at different times.
        for sequence in (1, 2, 3):
            rig.clock.advance(7)
            for agent in agents:
                rig.fleet.handle_message(channels[agent], heartbeat(agent, sequence))
        last = rig.clock.now()
        assert await rig.writer.flush()

        assert dict(rig.writer.statements) == {"last_seen": 1}
        async with rig.pool.acquire() as conn:
            rows = await conn.fetch("SELECT id, last_seen_at FROM agents")
        assert len(rows) == 1000
        assert {row["last_seen_at"] for row in rows} == {last}


async def test_batch_of_many_agents_connecting_is_a_few_statements(postgres_dsn: str) -> None:
    async with store_rig(postgres_dsn) as rig:
        for _ in range(500):
            agent = new_agent_id()
            rig.fleet.handle_message(FakeChannel(), hello(agent))
        assert await rig.writer.flush()
        # agents, sessions, transitions, descriptions, last_seen: one statement each
        assert dict(rig.writer.statements) == {
            "agents": 1,
            "history_open": 1,
            "transitions": 1,
            "descriptions": 1,
            "last_seen": 1,
        }
        async with rig.pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM agent_connection_history") == 500
            assert await conn.fetchval("SELECT count(*) FROM agent_state_transitions") == 500


async def test_superseded_session_and_reconnect_keep_one_row_per_session(
    postgres_dsn: str,
) -> None:
    async with store_rig(postgres_dsn) as rig:
        agent = new_agent_id()
        first, second = FakeChannel(), FakeChannel(remote_addr="127.0.0.1:2")
        rig.fleet.handle_message(first, hello(agent))
        rig.clock.advance(3)
        rig.fleet.handle_message(second, hello(agent, 1))  # same agent, new connection
        assert first.close_requests == [Reason.SUPERSEDED]
        rig.clock.advance(4)
        rig.fleet.channel_closed(second)
        assert await rig.writer.flush()

        history = await queries.agent_history(rig.pool, agent)
        assert [(h.remote_addr, h.duration_seconds, h.disconnect_reason) for h in history] == [
            ("127.0.0.1:2", 4.0, "connection_closed"),
            ("127.0.0.1:50000", 3.0, "superseded"),
        ]
        # Paging: the second page starts after the first page's last row.
        page = await queries.agent_history(rig.pool, agent, limit=1)
        cursor = HistoryCursor(page[0].connected_at, page[0].id)
        (older,) = await queries.agent_history(rig.pool, agent, before=cursor, limit=5)
        assert older.disconnect_reason == "superseded"


async def test_running_writer_flushes_on_its_own_and_stop_flushes_the_rest(
    postgres_dsn: str,
) -> None:
    async with store_rig(postgres_dsn, start=True, flush_interval_seconds=0.05) as rig:
        assert rig.writer.ready
        agent = new_agent_id()
        channel = FakeChannel()
        rig.fleet.handle_message(channel, hello(agent))

        async def stored() -> bool:
            return bool(await queries.agent_history(rig.pool, agent))

        await eventually("the session row", stored)
        rig.clock.advance(9)
        rig.fleet.channel_closed(channel)
        await rig.writer.stop()  # must write the close even if no flush ran since
        (row,) = await queries.agent_history(rig.pool, agent)
        assert row.duration_seconds == 9.0
        assert rig.writer.pending() == 0


async def test_queries_list_agents_by_status_and_staleness(postgres_dsn: str) -> None:
    async with store_rig(postgres_dsn) as rig:
        fresh, stale, gone = new_agent_id(), new_agent_id(), new_agent_id()
        channels = {a: FakeChannel() for a in (fresh, stale, gone)}
        for agent in (fresh, stale, gone):
            rig.fleet.handle_message(channels[agent], hello(agent))
        rig.fleet.channel_closed(channels[gone])
        rig.clock.advance(30)
        rig.fleet.handle_message(channels[fresh], heartbeat(fresh, 1))
        assert await rig.writer.flush()

        online = await queries.list_agents(rig.pool, "online")
        assert {a.agent_id for a in online} == {fresh, stale}
        offline = await queries.list_agents(rig.pool, "offline")
        assert [a.agent_id for a in offline] == [gone]
        cutoff = rig.clock.now() - timedelta(seconds=10)
        assert [a.agent_id for a in await queries.list_stale_agents(rig.pool, cutoff)] == [stale]
        first_page = await queries.list_agents(rig.pool, limit=2)
        rest = await queries.list_agents(rig.pool, after_id=first_page[-1].agent_id)
        assert len(first_page) + len(rest) == 3
        assert first_page[-1].agent_id < rest[0].agent_id


async def test_metrics_count_rows_written(postgres_dsn: str) -> None:
    before = (
        metrics.REGISTRY.get_sample_value(
            "opamp_db_writes_total", {"table": "agent_connection_history"}
        )
        or 0.0
    )
    async with store_rig(postgres_dsn) as rig:
        for _ in range(3):
            rig.fleet.handle_message(FakeChannel(), hello(new_agent_id()))
        assert await rig.writer.flush()
    after = metrics.REGISTRY.get_sample_value(
        "opamp_db_writes_total", {"table": "agent_connection_history"}
    )
    assert after == before + 3


async def test_bad_dsn_error_names_server_without_password() -> None:
    from opamp_operator.config import StoreSettings
    from opamp_operator.store.pool import StoreUnavailable, create_pool
    from opamp_operator.testbed.processes import free_port

    port = free_port()
    dsn = f"postgresql://opamp:hunter2@127.0.0.1:{port}/fleet"
    with pytest.raises(StoreUnavailable) as raised:
        await create_pool(StoreSettings(dsn=dsn, connect_timeout_seconds=2))
    message = str(raised.value)
    assert f"127.0.0.1:{port}/fleet as opamp" in message
    assert "hunter2" not in message
    assert raised.value.__cause__ is None


async def test_description_changes_are_written(postgres_dsn: str) -> None:
    async with store_rig(postgres_dsn) as rig:
        agent = new_agent_id()
        channel = FakeChannel()
        rig.fleet.handle_message(channel, hello(agent, service="one"))
        assert await rig.writer.flush()
        rig.fleet.handle_message(channel, hello(agent, 1, service="two"))
        assert await rig.writer.flush()
        stored = await queries.get_agent(rig.pool, agent)
        assert stored is not None and stored.description is not None
        assert stored.description["identifying"]["service.name"] == "two"


async def test_agent_ids_are_canonical_uuid_text(postgres_dsn: str) -> None:
    async with store_rig(postgres_dsn) as rig, rig.pool.acquire() as conn:
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "INSERT INTO agents (id, status, created_at, updated_at) "
                "VALUES ('NOT-A-UUID', 'online', $1, $1)",
                rig.clock.now(),
            )


async def test_an_event_the_database_rejects_costs_only_itself(postgres_dsn: str) -> None:
    from opamp_operator.fleet.events import SessionOpened
    from opamp_operator.fleet.model import Transport

    async with store_rig(postgres_dsn) as rig:
        before = [new_agent_id() for _ in range(6)]
        after = [new_agent_id() for _ in range(6)]
        for agent in before:
            rig.fleet.handle_message(FakeChannel(), hello(agent))
        # Not a UUID: the driver refuses to encode it (a bug elsewhere, simulated).
        rig.bus.publish(
            SessionOpened(before[0], "not-a-uuid", Transport.HTTP, "x", rig.clock.now())
        )
        for agent in after:
            rig.fleet.handle_message(FakeChannel(), hello(agent))
        assert await rig.writer.flush()

        assert rig.writer.dropped_history == 1
        async with rig.pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM agent_connection_history") == 12
            assert await conn.fetchval("SELECT count(*) FROM agent_state_transitions") == 12
            missing_seen = await conn.fetchval(
                "SELECT count(*) FROM agents WHERE last_seen_at IS NULL"
            )
        assert missing_seen == 0


async def test_a_new_sessions_row_is_committed_before_recorded_returns(postgres_dsn: str) -> None:
    """The transports await `recorded()` before a new session's first reply (issue 15)."""
    async with store_rig(postgres_dsn, start=True, flush_interval_seconds=60) as rig:
        agents = [new_agent_id() for _ in range(20)]
        for agent in agents:
            rig.fleet.handle_message(FakeChannel(), hello(agent))
        before = metrics.db_session_commits.labels("recorded")._value.get()
        # 20 agents at once: one group commit, not a transaction each.
        flushes = rig.writer.statements["history_open"]
        await asyncio.wait_for(asyncio.gather(*(rig.writer.recorded() for _ in agents)), 5)
        for agent in agents:
            assert len(await queries.agent_history(rig.pool, agent)) == 1
        assert rig.writer.statements["history_open"] == flushes + 1
        assert metrics.db_session_commits.labels("recorded")._value.get() == before + 20
        # Nothing new since: it returns at once, without a commit.
        await asyncio.wait_for(rig.writer.recorded(), 0.5)
        assert rig.writer.statements["history_open"] == flushes + 1


async def test_available_components_row_follows_the_fleet_and_resyncs_only_changes(
    postgres_dsn: str,
) -> None:
    async with store_rig(postgres_dsn) as rig:
        agent, channel = new_agent_id(), FakeChannel()
        first = hello(agent)
        first.available_components.hash = b"\x0a" * 32
        rig.fleet.handle_message(channel, first)
        assert await rig.writer.flush()
        stored = await queries.agent_components(rig.pool, agent)
        assert stored is not None and stored.hash == "0a" * 32
        assert (stored.components, stored.counts, stored.total) == (None, {}, 0)

        full = heartbeat(agent, 1)
        full.available_components.hash = b"\x0a" * 32
        receivers = full.available_components.components["receivers"].sub_component_map
        receivers["otlp"].metadata.add(key="version").value.string_value = "1"
        rig.fleet.handle_message(channel, full)
        assert await rig.writer.flush()
        stored = await queries.agent_components(rig.pool, agent)
        assert stored is not None and (stored.counts, stored.total) == ({"receivers": 1}, 1)
        assert stored.components == {
            "receivers": {
                "metadata": {},
                "subComponents": {"otlp": {"metadata": {"version": "1"}, "subComponents": {}}},
            }
        }

        # A resync rewrites agents' rows, but not a components row that did not change.
        rig.writer.statements.clear()
        rig.writer.subscription.needs_resync = True
        assert await rig.writer.flush()
        assert rig.writer.statements["resync"] == 1
        assert rig.writer.statements["components"] == 0
