"""For store tests: a real Fleet fed by fake channels, a migrated database, a writer."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from opamp_operator.config import FleetSettings, StoreSettings
from opamp_operator.fleet.clock import FakeClock
from opamp_operator.fleet.events import EventBus
from opamp_operator.fleet.model import Transport
from opamp_operator.fleet.registry import Fleet
from opamp_operator.opamp.generated import opamp_pb2
from opamp_operator.opamp.generated.anyvalue_pb2 import AnyValue, KeyValue
from opamp_operator.opamp.messages import AgentToServer
from opamp_operator.store.migrations import migrate
from opamp_operator.store.pool import create_pool
from opamp_operator.store.writer import StoreWriter
from opamp_operator.testbed.postgres import PostgresServer


@dataclass(eq=False)
class FakeChannel:
    """A transport connection that records what the fleet asked of it."""

    transport: Transport = Transport.WEBSOCKET
    remote_addr: str = "127.0.0.1:50000"
    close_requests: list[str] = field(default_factory=list)

    def request_close(self, reason: str) -> None:
        self.close_requests.append(reason)


def new_agent_id() -> str:
    return str(uuid.uuid4())


def hello(agent_id: str, sequence_num: int = 0, service: str = "otelcol") -> AgentToServer:
    """A first message with a description and capabilities, as real agents send."""
    message = AgentToServer(
        instance_uid=uuid.UUID(agent_id).bytes,
        sequence_num=sequence_num,
        capabilities=int(opamp_pb2.AgentCapabilities_ReportsStatus)
        | int(opamp_pb2.AgentCapabilities_ReportsHealth),
    )
    description = message.agent_description
    description.identifying_attributes.append(
        KeyValue(key="service.name", value=AnyValue(string_value=service))
    )
    description.identifying_attributes.append(
        KeyValue(key="service.instance.id", value=AnyValue(bytes_value=b"\x00\xffid"))
    )
    description.non_identifying_attributes.append(
        KeyValue(key="host.name", value=AnyValue(string_value="node-\x00-1"))
    )
    return message


def heartbeat(agent_id: str, sequence_num: int) -> AgentToServer:
    return AgentToServer(instance_uid=uuid.UUID(agent_id).bytes, sequence_num=sequence_num)


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


async def eventually(check: Any, seconds: float = 20.0, what: str = "condition") -> None:
    """Poll an async or sync predicate until true; fail after `seconds`."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {seconds}s waiting for {what}")
        await asyncio.sleep(0.05)


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
