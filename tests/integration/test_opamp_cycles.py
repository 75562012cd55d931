"""A connection that ends is freed by reference counting alone, however it ends: nothing of
it waits for the collector. The operator freezes its long-lived heap (gcpolicy.py), which
the collector never walks, so anything cyclic a departed agent left stayed until a thaw's
full collection: 0.57-1.09 s pauses under churn (run H, docs/benchmarks.md). What was
cyclic: CPython 3.11's socket transport (a bound method of itself) and, for agents gone
without a close frame, websockets' parser error (its traceback holds the protocol).
transport/cycles.py and OpAMPConnection.connection_lost break them.

Each test runs with the collector off and holds only a weak reference to the server side's
transport: the protocol, channel and session all hold the transport, so if any of them
were left in a cycle the transport would stay alive too."""

from __future__ import annotations

import asyncio
import gc
import uuid
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from websockets.asyncio.client import connect

from opamp_operator.opamp.frames import encode_ws_frame
from opamp_operator.transport.ownws import OwnChannel
from opamp_operator.transport.websocket import WebSocketChannel
from tests.support import fake_agents
from tests.support.opamp_clients import OpAMPServer, opamp_server
from tests.support.polling import eventually

pytestmark = pytest.mark.integration


@contextmanager
def collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def server_transport(server: OpAMPServer) -> weakref.ref[asyncio.BaseTransport]:
    (channel,) = server.listener.websocket_channels
    transport: asyncio.BaseTransport | None
    if isinstance(channel, OwnChannel):
        transport = channel._wire
    else:
        assert isinstance(channel, WebSocketChannel)
        transport = channel.connection.transport
    assert transport is not None
    return weakref.ref(transport)


async def freed(ref: weakref.ref[asyncio.BaseTransport]) -> None:
    await eventually("the server's transport freed", lambda: ref() is None, within=5)


@pytest.mark.parametrize("framing", ["websockets", "own"])
@pytest.mark.parametrize("ending", ["goodbye", "dropped", "timed_out"])
async def test_a_websocket_that_ended_is_freed_without_the_collector(
    framing: str, ending: str
) -> None:
    """goodbye: AgentDisconnect and a closing handshake; dropped: the TCP connection gone
    without a close frame; timed_out: a silent agent closed by us at the heartbeat
    timeout, its close frame never answered (the close timeout drops it)."""
    uid = str(uuid.uuid4())
    async with opamp_server(
        websocket_framing=framing, heartbeat=0.5, heartbeat_timeout=1.0, close_timeout_seconds=0.3
    ) as server:
        with collector_off():
            ws = await connect(server.ws_url, ping_interval=None)
            await ws.send(encode_ws_frame(fake_agents.hello(uid).SerializeToString()))
            await ws.recv()
            ref = server_transport(server)
            if ending == "goodbye":
                goodbye = fake_agents.hello(uid)
                goodbye.agent_disconnect.SetInParent()
                await ws.send(encode_ws_frame(goodbye.SerializeToString()))
                await ws.close()
            elif ending == "dropped":
                ws.transport.abort()
            else:
                ws.transport.pause_reading()
            await freed(ref)
            ws.transport.abort()


async def test_an_http_connection_that_ended_is_freed_without_the_collector() -> None:
    """A keep-alive connection with one poll answered, then closed by the agent."""
    body = fake_agents.hello(str(uuid.uuid4())).SerializeToString()
    async with opamp_server() as server:
        with collector_off():
            reader, writer = await asyncio.open_connection("127.0.0.1", server.listener.port)
            head = (
                f"POST {server.listener.settings.path} HTTP/1.1\r\nHost: x\r\n"
                f"Content-Type: application/x-protobuf\r\nContent-Length: {len(body)}\r\n\r\n"
            )
            writer.write(head.encode() + body)
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            (connection,) = server.listener._http.connections
            assert connection._wire is not None
            ref = weakref.ref[asyncio.BaseTransport](connection._wire)
            del connection
            writer.close()
            await freed(ref)
