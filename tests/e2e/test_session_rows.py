"""No acknowledged session without a row: SIGKILL during a churn of connects (issue 15).

The clients are scripted from the OpAMP specification (WebSocket: the header varint 0 and an
AgentToServer per binary frame; HTTP: one POST per message): the test needs to know exactly
which first messages were answered before the kill, which opamp-go's client does not report.
The flush interval is 30 s, so without the commit before the first reply no row would exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from pathlib import Path

import aiohttp
import asyncpg
from websockets.asyncio.client import connect

from opamp_operator.opamp.frames import decode_ws_frame, encode_ws_frame
from opamp_operator.opamp.generated import opamp_pb2
from tests.e2e.conftest import OperatorFactory
from tests.e2e.helpers import eventually
from tests.support.fake_agents import hello
from tests.support.operator_process import OperatorProcess

CONTENT_TYPE = {"Content-Type": "application/x-protobuf"}


async def _websocket_session(operator: OperatorProcess, agent_id: str, acked: set[str]) -> None:
    async with connect(operator.ws_url, open_timeout=10) as socket:
        await socket.send(encode_ws_frame(hello(agent_id).SerializeToString()))
        reply = opamp_pb2.ServerToAgent.FromString(decode_ws_frame(bytes(await socket.recv())))
        if reply.instance_uid == uuid.UUID(agent_id).bytes:
            acked.add(agent_id)


async def _http_session(
    session: aiohttp.ClientSession, operator: OperatorProcess, agent_id: str, acked: set[str]
) -> None:
    body = hello(agent_id).SerializeToString()
    async with session.post(operator.http_url, data=body, headers=CONTENT_TYPE) as response:
        reply = opamp_pb2.ServerToAgent.FromString(await response.read())
        if response.status == 200 and reply.instance_uid == uuid.UUID(agent_id).bytes:
            acked.add(agent_id)


async def _churn(operator: OperatorProcess, acked: set[str], stop: asyncio.Event) -> int:
    """New agents, a WebSocket and an HTTP one at a time, until `stop`; returns how many."""
    started = 0
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            ws_id, http_id = str(uuid.uuid4()), str(uuid.uuid4())
            started += 2
            with contextlib.suppress(Exception):  # the kill cuts the last ones off
                await asyncio.gather(
                    _websocket_session(operator, ws_id, acked),
                    _http_session(session, operator, http_id, acked),
                )
    return started


async def _rows(dsn: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(dsn)
    try:
        query = "SELECT agent_id, disconnected_at, disconnect_reason FROM agent_connection_history"
        return list(await connection.fetch(query))
    finally:
        await connection.close()


async def test_sigkill_during_a_connect_churn_keeps_every_acknowledged_session(
    operator_factory: OperatorFactory, kubeconfig: Path, namespace: str, postgres_dsn: str
) -> None:
    operator = operator_factory(extra_args=("--flush-interval", "30"))
    await operator.start()
    acked: set[str] = set()
    stop = asyncio.Event()
    churn = [asyncio.create_task(_churn(operator, acked, stop)) for _ in range(4)]

    async def answered() -> bool:
        return len(acked) >= 40

    await eventually("40 sessions answered", answered, within=60, every=0.05)
    await operator.kill()
    stop.set()
    started = sum(await asyncio.gather(*churn))
    assert started >= len(acked) >= 40

    rows = await _rows(postgres_dsn)
    missing = acked - {row["agent_id"] for row in rows}
    assert not missing, f"{len(missing)} of {len(acked)} answered sessions have no row"

    # The restart closes what the killed process left open: no row stays open.
    left_open = sum(row["disconnected_at"] is None for row in rows)
    await operator.start()
    rows = await _rows(postgres_dsn)
    assert all(row["disconnected_at"] is not None for row in rows)
    restarted = [row for row in rows if row["disconnect_reason"] == "operator_restart"]
    assert len(restarted) == left_open > 0  # the sessions cut off by the kill
