"""`--websocket-framing own` (transport/ownws.py) as a client sees it: the upgrade, frames,
keepalive, closing, ordering across an await. The shared WebSocket behaviour is tested by
test_opamp_listener.py, test_opamp_bad_input.py and test_opamp_goagent.py, which run
against it by default (and against websockets under OPAMP_WEBSOCKET_FRAMING=websockets)."""

from __future__ import annotations

import asyncio
import base64
import os
import uuid
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close

from opamp_operator.config import FleetSettings, ListenerSettings
from opamp_operator.fleet.clock import SystemClock
from opamp_operator.fleet.events import EventBus
from opamp_operator.fleet.registry import Fleet
from opamp_operator.opamp.frames import decode_ws_frame, encode_ws_frame
from opamp_operator.opamp.messages import AgentToServer, parse_server_to_agent
from opamp_operator.transport import OpAMPListener
from tests.support import fake_agents
from tests.support.opamp_clients import OpAMPServer, metric, opamp_server
from tests.support.polling import eventually

pytestmark = pytest.mark.integration


def beat(uid: uuid.UUID, number: int) -> bytes:
    return encode_ws_frame(
        AgentToServer(instance_uid=uid.bytes, sequence_num=number).SerializeToString()
    )


class RawClient:
    """A WebSocket client by hand: frames exactly as written, every frame read seen."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def upgrade(cls, server: OpAMPServer, *headers: str) -> tuple[RawClient, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.listener.port)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {server.listener.settings.path} HTTP/1.1",
            "Host: x",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            *headers,
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = await reader.readuntil(b"\r\n\r\n")
        return cls(reader, writer), head

    def send(self, opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True) -> None:
        """Any frame, also one that breaks the rules (websockets' serializer refuses those)."""
        length = len(payload)
        masked = 0x80 if mask else 0
        if length < 126:
            head = bytes(((0x80 if fin else 0) | opcode, masked | length))
        else:
            head = bytes(((0x80 if fin else 0) | opcode, masked | 126)) + length.to_bytes(2)
        key = os.urandom(4) if mask else b""
        body = bytes(byte ^ key[i % 4] for i, byte in enumerate(payload)) if mask else payload
        self.writer.write(head + key + body)

    async def frame(self) -> tuple[int, bytes]:
        first, second = await self.reader.readexactly(2)
        length = second & 0x7F
        if length >= 126:
            length = int.from_bytes(await self.reader.readexactly(2 if length == 126 else 8))
        return first & 0x0F, await self.reader.readexactly(length)

    async def closed(self) -> bool:
        """True once the server ends the TCP connection."""
        return await self.reader.read() == b""


@pytest.fixture
async def server() -> AsyncIterator[OpAMPServer]:
    async with opamp_server(
        websocket_framing="own",
        max_message_bytes=100_000,
        handshake_timeout_seconds=1.0,
        close_timeout_seconds=0.5,
    ) as running:
        yield running


async def test_websockets_client_talks_and_closes_normally(server: OpAMPServer) -> None:
    uid = uuid.uuid4()
    async with connect(server.ws_url, compression="deflate") as ws:  # offer refused
        for number in range(5):
            await ws.send(beat(uid, number))
            reply = parse_server_to_agent(decode_ws_frame(await ws.recv(decode=False)))
            assert reply.instance_uid == uid.bytes
        await (await ws.ping(b"ab"))  # answered
    assert ws.close_code == 1000
    await eventually("the channel gone", lambda: not server.listener.websocket_channels)


async def test_large_and_fragmented_messages(server: OpAMPServer) -> None:
    uid = uuid.uuid4()
    message = fake_agents.hello(str(uid))
    message.agent_description.identifying_attributes.add(key="big").value.string_value = (
        "x" * 70_000  # a 64-bit length
    )
    data = encode_ws_frame(message.SerializeToString())
    async with connect(server.ws_url) as ws:
        await ws.send([data[:10], data[10:500], data[500:]])  # three fragments
        reply = parse_server_to_agent(decode_ws_frame(await ws.recv(decode=False)))
        assert reply.instance_uid == uid.bytes


async def test_replies_keep_their_order_across_a_new_sessions_await(
    server: OpAMPServer,
) -> None:
    """Many agents' first messages (each awaits the ledger) in one burst on one socket."""
    client, _ = await RawClient.upgrade(server)
    uid = uuid.uuid4()
    for number in range(20):
        client.send(2, beat(uid, number))
    numbers = []
    for _ in range(20):
        opcode, payload = await client.frame()
        assert opcode == 2
        numbers.append(parse_server_to_agent(decode_ws_frame(payload)).instance_uid)
    assert numbers == [uid.bytes] * 20
    client.writer.close()


async def test_ping_is_answered_and_close_echoed(server: OpAMPServer) -> None:
    client, head = await RawClient.upgrade(server)
    assert head.startswith(b"HTTP/1.1 101 ")
    assert b"extensions" not in head.lower()
    client.send(9, b"hi")
    assert await client.frame() == (10, b"hi")
    client.send(8, Close(4000, "bye").serialize())
    assert await client.frame() == (8, Close(4000, "bye").serialize())
    assert await client.closed()


@pytest.mark.parametrize(
    ("frame", "code", "reason"),
    [
        ({"opcode": 2, "payload": b"x", "mask": False}, 1002, "websocket_protocol_error"),
        ({"opcode": 9, "payload": b"x", "fin": False}, 1002, "websocket_protocol_error"),
        ({"opcode": 0, "payload": b"x"}, 1002, "websocket_protocol_error"),
        ({"opcode": 8, "payload": b"\x03\xed"}, 1002, "websocket_protocol_error"),  # 1005
        ({"opcode": 8, "payload": b"\x03\xe8\xff"}, 1007, "invalid_utf8"),
        ({"opcode": 1, "payload": b"\xff"}, 1007, "invalid_utf8"),
    ],
)
async def test_protocol_violations_close_with_the_code_and_are_counted(
    server: OpAMPServer, frame: dict[str, object], code: int, reason: str
) -> None:
    before = metric("opamp_bad_input_total", transport="websocket", reason=reason)
    client, _ = await RawClient.upgrade(server)
    client.send(**frame)  # type: ignore[arg-type]
    opcode, payload = await client.frame()
    assert opcode == 8
    assert int.from_bytes(payload[:2]) == code
    assert await client.closed()
    after = metric("opamp_bad_input_total", transport="websocket", reason=reason)
    assert after == before + 1


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        (("Sec-WebSocket-Version: 8",), 400),
        (("Sec-WebSocket-Key: x",), 400),
    ],
)
async def test_bad_upgrades_are_refused_and_counted(
    server: OpAMPServer, headers: tuple[str, ...], status: int
) -> None:
    before = metric("opamp_bad_input_total", transport="websocket", reason="bad_handshake")
    _, head = await RawClient.upgrade(server, *headers)
    assert head.startswith(f"HTTP/1.1 {status} ".encode())
    after = metric("opamp_bad_input_total", transport="websocket", reason="bad_handshake")
    assert after == before + 1


async def test_a_connection_judged_by_its_connection_is_pinged_and_dropped_when_silent() -> None:
    async with opamp_server(
        websocket_framing="own", ping_interval_seconds=0.2, ping_timeout_seconds=0.3
    ) as server:
        client, _ = await RawClient.upgrade(server)
        uid = uuid.uuid4()
        message = fake_agents.hello(str(uid), reports_heartbeat=False)
        client.send(2, encode_ws_frame(message.SerializeToString()))
        assert (await client.frame())[0] == 2
        opcode, payload = await client.frame()
        assert opcode == 9
        client.send(10, payload)  # pong: still alive
        assert (await client.frame())[0] == 9  # the next ping; not answered
        opcode, payload = await client.frame()
        assert (opcode, int.from_bytes(payload[:2])) == (8, 1011)
        assert await client.closed()


async def test_an_agent_judged_by_its_heartbeats_is_not_pinged() -> None:
    """As the websockets path's test of the same name; seen on the wire here."""
    async with opamp_server(
        websocket_framing="own", heartbeat_timeout=30.0, ping_interval_seconds=0.3
    ) as server:
        client, _ = await RawClient.upgrade(server)
        uid = uuid.uuid4()
        client.send(2, encode_ws_frame(fake_agents.hello(str(uid)).SerializeToString()))
        for number in range(1, 31):
            assert (await client.frame())[0] == 2  # a reply, never a ping
            await asyncio.sleep(0.05)
            client.send(2, beat(uid, number))
        assert (await client.frame())[0] == 2


async def test_stop_closes_every_websocket_with_1001_and_the_reason() -> None:
    async with opamp_server(websocket_framing="own") as server:
        clients = []
        for _ in range(3):
            ws = await connect(server.ws_url)
            await ws.send(beat(uuid.uuid4(), 0))
            await ws.recv()
            clients.append(ws)
        await server.listener.stop("operator_restart")
        for ws in clients:
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            assert (ws.close_code, ws.close_reason) == (1001, "operator_restart")


async def test_a_reader_that_stops_reading_stops_being_read(server: OpAMPServer) -> None:
    """Its pongs fill the buffers (kernel, then asyncio's); then its pings wait in the
    kernel, not in our memory. Pings, not OpAMP messages: the cheapest way to ~13 MB."""
    client, _ = await RawClient.upgrade(server)
    client.send(2, beat(uuid.uuid4(), 0))
    assert (await client.frame())[0] == 2
    for _ in range(100_000):  # written to the client's own buffer, never drained
        client.send(9, b"p" * 125)
    (channel,) = server.listener.websocket_channels

    def paused() -> bool:
        return not channel._reading  # type: ignore[attr-defined]

    await eventually("reading paused", paused, within=20)
    assert channel._reader.buffered < 1_000_000  # type: ignore[attr-defined]
    client.writer.transport.abort()


async def test_a_burst_in_one_read_is_handled_a_slice_per_loop_turn(server: OpAMPServer) -> None:
    """1,000 heartbeats in one write (~30 kB: one read of the socket) are handled at most
    64 per turn of the event loop, not all inside one `data_received`: the loop turns to
    other agents between slices (before: all 1,000 in one go)."""
    client, _ = await RawClient.upgrade(server)
    uid = uuid.uuid4()
    client.send(2, beat(uid, 0))
    assert (await client.frame())[0] == 2
    for number in range(1, 1001):
        client.send(2, beat(uid, number))  # buffered in the client's transport...
    labels = {"transport": "websocket", "kind": "heartbeat"}
    start = metric("opamp_messages_received_total", **labels)
    largest_slice, seen = 0, start
    async with asyncio.timeout(10):
        while seen < start + 1000:  # ...and sent when the loop turns
            await asyncio.sleep(0)
            now = metric("opamp_messages_received_total", **labels)
            largest_slice, seen = max(largest_slice, int(now - seen)), now
    assert 0 < largest_slice <= 64
    client.writer.transport.abort()


class HeldLedger:
    """A session ledger whose commit waits until the test lets it go."""

    def __init__(self) -> None:
        self.released = asyncio.Event()
        self.waiting = 0

    async def recorded(self) -> None:
        self.waiting += 1
        await self.released.wait()


async def test_frames_behind_a_new_sessions_await_wait_and_keep_their_order() -> None:
    """The reply acknowledging a session waits for its ledger row; the heartbeats sent
    right behind it are handled after it, in order, not before it and not lost."""
    fleet = Fleet(FleetSettings(1.0, 30.0), SystemClock(), EventBus())
    ledger = HeldLedger()
    settings = ListenerSettings(host="127.0.0.1", port=0, websocket_framing="own")
    listener = OpAMPListener(settings, fleet, ledger)
    await listener.start()
    server = OpAMPServer(listener, fleet)
    try:
        client, _ = await RawClient.upgrade(server)
        uid = uuid.uuid4()
        client.send(2, encode_ws_frame(fake_agents.hello(str(uid)).SerializeToString()))
        for number in (1, 2, 3):
            client.send(2, beat(uid, number))
        await eventually("the ledger awaited", lambda: ledger.waiting == 1)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await client.frame()  # nothing answered while the row is not written
        snapshot = server.agent(uid)
        assert snapshot is not None and snapshot.sequence_num == 0
        ledger.released.set()
        for _ in range(4):
            opcode, payload = await client.frame()
            assert opcode == 2
            assert parse_server_to_agent(decode_ws_frame(payload)).instance_uid == uid.bytes
        later = server.agent(uid)
        assert later is not None and later.sequence_num == 3
        client.writer.close()
    finally:
        await listener.stop()
