"""Crash recovery: sessions a dead operator left open are closed when it starts again."""

from __future__ import annotations

from datetime import timedelta

import pytest

from opamp_operator.fleet.model import Reason
from opamp_operator.store import queries
from opamp_operator.store.recovery import close_orphaned_sessions
from tests.support.store import FakeChannel, hello, new_agent_id, store_rig

pytestmark = pytest.mark.integration


async def test_rows_left_open_are_closed_with_operator_restart(postgres_dsn: str) -> None:
    # A first run: two agents connect, one leaves cleanly, then the process "crashes"
    # (no stop, no shutdown events).
    async with store_rig(postgres_dsn) as rig:
        stays, leaves = new_agent_id(), new_agent_id()
        channels = {stays: FakeChannel(), leaves: FakeChannel()}
        t0 = rig.clock.now()
        for agent in (stays, leaves):
            rig.fleet.handle_message(channels[agent], hello(agent))
        rig.clock.advance(5)
        rig.fleet.channel_closed(channels[leaves])
        assert await rig.writer.flush()

        restart = t0 + timedelta(seconds=120)
        closed = await close_orphaned_sessions(rig.pool, restart)
        assert closed == 1

        (row,) = await queries.agent_history(rig.pool, stays)
        assert row.disconnected_at == restart
        assert row.duration_seconds == 120.0
        assert row.disconnect_reason == Reason.OPERATOR_RESTART
        (clean,) = await queries.agent_history(rig.pool, leaves)
        assert (clean.duration_seconds, clean.disconnect_reason) == (5.0, "connection_closed")

        stored = await queries.get_agent(rig.pool, stays)
        assert stored is not None
        assert (stored.status, stored.last_disconnected_at, stored.disconnect_reason) == (
            "offline",
            restart,
            "operator_restart",
        )
        latest = (await queries.agent_transitions(rig.pool, stays))[0]
        assert (latest.from_status, latest.to_status, latest.reason, latest.at) == (
            "online",
            "offline",
            "operator_restart",
            restart,
        )
        # The agent that left cleanly was already offline: no new transition for it.
        assert len(await queries.agent_transitions(rig.pool, leaves)) == 2

        # Running it again finds nothing to do.
        assert await close_orphaned_sessions(rig.pool, restart) == 0
        assert len(await queries.agent_transitions(rig.pool, stays)) == 2


async def test_each_replica_closes_only_its_own_rows(postgres_dsn: str) -> None:
    async with (
        store_rig(postgres_dsn, replica_id="replica-a") as a,
        store_rig(postgres_dsn, replica_id="replica-b") as b,
    ):
        on_a, on_b = new_agent_id(), new_agent_id()
        a.fleet.handle_message(FakeChannel(), hello(on_a))
        b.fleet.handle_message(FakeChannel(), hello(on_b))
        assert await a.writer.flush()
        assert await b.writer.flush()

        now = a.clock.now() + timedelta(seconds=60)
        assert await close_orphaned_sessions(a.pool, now, replica_id="replica-a") == 1

        (row_a,) = await queries.agent_history(a.pool, on_a)
        (row_b,) = await queries.agent_history(a.pool, on_b)
        assert (row_a.replica_id, row_a.disconnect_reason) == ("replica-a", "operator_restart")
        assert (row_b.replica_id, row_b.disconnected_at) == ("replica-b", None)
        statuses = {agent.agent_id: agent.status for agent in await queries.list_agents(a.pool)}
        # B's agent still has its open session on replica B: it stays online.
        assert statuses == {on_a: "offline", on_b: "online"}
