"""For store tests: a real Fleet fed by fake channels, a migrated database, a writer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg

from opamp_operator.config import FleetSettings, StoreSettings
from opamp_operator.fleet.clock import FakeClock
from opamp_operator.fleet.events import EventBus
from opamp_operator.fleet.registry import Fleet
from opamp_operator.opamp.messages import AgentToServer
from opamp_operator.store.migrations import migrate
from opamp_operator.store.pool import create_pool
from opamp_operator.store.writer import StoreWriter
from opamp_operator.testbed.postgres import PostgresServer
from tests.support.fake_agents import FakeChannel, heartbeat, new_agent_id
from tests.support.fake_agents import hello as fake_hello

__all__ = [
    "FakeChannel",
    "StoreRig",
    "fleet_settings",
    "heartbeat",
    "hello",
    "new_agent_id",
    "stop_postgres",
    "store_rig",
]


def hello(agent_id: str, sequence_num: int = 0, service: str = "otelcol") -> AgentToServer:
    """A first message whose host name carries a NUL byte, which PostgreSQL text refuses."""
    return fake_hello(agent_id, sequence_num, service, host_name="node-\x00-1", healthy=None)


@dataclass
class StoreRig:
    """A fleet on a fake clock, its event bus, and a writer on a real database."""

    fleet: Fleet
    clock: FakeClock
    bus: EventBus
    writer: StoreWriter
    pool: asyncpg.Pool
    dsn: str


def fleet_settings() -> FleetSettings:
    # No registration rate limit: the fake clock does not move while agents register.
    return FleetSettings(registrations_per_second=1e9, registration_burst=10**9)


@asynccontextmanager
async def store_rig(
    dsn: str, *, start: bool = False, replica_id: str = "replica-a", **overrides: Any
) -> AsyncIterator[StoreRig]:
    """Migrate `dsn`, open a pool and a writer (flushing only when told, unless `start`)."""
    await migrate(dsn, "up")
    values: dict[str, Any] = {"dsn": dsn, "flush_interval_seconds": 3600.0}
    values.update(overrides)
    settings = StoreSettings(**values)
    clock = FakeClock()
    bus = EventBus()
    fleet = Fleet(fleet_settings(), clock, bus)
    pool = await create_pool(settings)
    writer = StoreWriter(
        settings, pool, fleet, bus.subscribe("store", 100_000), clock, replica_id=replica_id
    )
    try:
        if start:
            await writer.start()
        yield StoreRig(fleet, clock, bus, writer, pool, dsn)
    finally:
        if start:
            await writer.stop()
        await pool.close()


async def stop_postgres(server: PostgresServer, admin_dsn: str) -> None:
    """Shut the server down promptly, even with idle pooled connections open.

    SIGTERM is PostgreSQL's smart shutdown, which waits for every session to end; ending
    the other sessions from a connection opened beforehand makes it finish at once.
    """
    admin = await asyncpg.connect(admin_dsn)
    stopping = asyncio.create_task(asyncio.to_thread(server.stop))
    await asyncio.sleep(0.3)  # new connections are refused from here on
    await admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'"
    )
    await admin.close()
    await stopping
