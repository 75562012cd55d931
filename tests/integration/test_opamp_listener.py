"""The listener's life: TLS, keepalive pings, Expect: 100-continue, refused handshakes, stop."""

from __future__ import annotations

import asyncio
import ssl
import time
import uuid
from collections.abc import Awaitable
from pathlib import Path

import aiohttp
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from opamp_operator.fleet.model import AgentPhase, AgentSnapshot
from opamp_operator.fleet.remoteconfig import ConfigFile, DesiredConfig
from opamp_operator.opamp.frames import decode_ws_frame, encode_ws_frame
from opamp_operator.opamp.generated import opamp_pb2
from opamp_operator.opamp.messages import AgentToServer, parse_server_to_agent
from opamp_operator.testbed.certs import make_certs
from opamp_operator.transport import WebSocketChannel
from tests.support import fake_agents
from tests.support.goagent import GoAgent
from tests.support.opamp_clients import metric, opamp_server
from tests.support.polling import eventually

pytestmark = pytest.mark.integration


def online(snapshot: AgentSnapshot) -> bool:
    return snapshot.phase is AgentPhase.ONLINE


def offline(snapshot: AgentSnapshot) -> bool:
    return snapshot.phase is AgentPhase.OFFLINE


def hello(uid: uuid.UUID) -> bytes:
    return AgentToServer(instance_uid=uid.bytes).SerializeToString()


async def test_stop_closes_websockets_with_1001_and_the_reason() -> None:
    uid = uuid.uuid4()
    async with opamp_server() as server:
        assert server.listener.ready
        async with connect(server.ws_url) as ws:
            await ws.send(encode_ws_frame(hello(uid)))
            await ws.recv()
            await server.listener.stop("operator_restart")
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            assert (ws.close_code, ws.close_reason) == (1001, "operator_restart")
        assert not server.listener.ready
        snapshot = server.agent(uid)
        assert snapshot is not None
        assert (snapshot.phase, snapshot.phase_reason) == (AgentPhase.OFFLINE, "operator_restart")
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", server.listener.port)


async def test_stop_is_bounded_when_a_peer_never_answers_the_close() -> None:
    uid = uuid.uuid4()
    async with opamp_server(close_timeout_seconds=0.5, stop_timeout_seconds=3) as server:
        async with GoAgent() as agent, aiohttp.ClientSession() as session:
            await agent.start(url=server.ws_url, instance_uid=uid)
            await server.wait_for_agent(uid, online)
            # An idle keep-alive HTTP connection must not hold the stop up either.
            body = hello(uuid.uuid4())
            headers = {"Content-Type": "application/x-protobuf"}
            async with session.post(server.http_url, data=body, headers=headers) as response:
                assert response.status == 200
            agent.freeze()
            started = time.monotonic()
            await server.listener.stop()
            assert time.monotonic() - started < 2.5
            assert not server.listener.websocket_channels
        snapshot = server.agent(uid)
        assert snapshot is not None
        assert snapshot.phase_reason == "operator_shutdown"


async def test_keepalive_ping_timeout_drops_a_frozen_websocket_judged_by_its_connection() -> None:
    """An agent without ReportsHeartbeat is judged by its WebSocket: pinged once quiet for
    the ping interval, dropped when no pong comes. The client is scripted (from the spec:
    header varint 0, one AgentToServer per frame) so that it can stop reading its socket,
    pongs included, while its TCP connection stays open."""
    agent_id = str(uuid.uuid4())
    async with (
        opamp_server(
            heartbeat=1.0,
            heartbeat_timeout=30.0,  # far away: only the pings can notice
            ping_interval_seconds=0.3,
            ping_timeout_seconds=0.3,
            close_timeout_seconds=0.3,
        ) as server,
        connect(server.ws_url, ping_interval=None) as ws,
    ):
        first = fake_agents.hello(agent_id, reports_heartbeat=False)
        await ws.send(encode_ws_frame(first.SerializeToString()))
        await ws.recv()
        uid = uuid.UUID(agent_id)
        await server.wait_for_agent(uid, online)
        ws.transport.pause_reading()  # frozen: pings go unanswered
        snapshot = await server.wait_for_agent(uid, offline, timeout=3)
        assert snapshot.phase_reason == "connection_closed"


async def test_an_agent_judged_by_its_heartbeats_is_not_pinged() -> None:
    """Its messages prove it alive as pongs would: no ping while it heartbeats (before, every
    WebSocket was pinged each ping interval: at 10,000 agents more pings than heartbeats).
    Scripted client (from the spec) heartbeating every 50 ms, faster than opamp-go allows.
    websockets only, whatever OPAMP_WEBSOCKET_FRAMING says: it counts pings by wrapping
    websockets' Connection.ping (test_opamp_ownws.py watches the own framing's wire)."""
    agent_id = str(uuid.uuid4())
    async with (
        opamp_server(
            heartbeat=1.0,
            heartbeat_timeout=30.0,
            ping_interval_seconds=0.3,
            websocket_framing="websockets",
        ) as server,
        connect(server.ws_url, ping_interval=None) as ws,
    ):
        await ws.send(encode_ws_frame(fake_agents.hello(agent_id).SerializeToString()))
        await ws.recv()
        (channel,) = server.listener.websocket_channels
        assert isinstance(channel, WebSocketChannel)
        connection = channel.connection
        pings = 0
        ping = connection.ping

        async def counted(data: bytes | None = None) -> Awaitable[float]:
            nonlocal pings
            pings += 1
            return await ping(data)

        connection.ping = counted  # type: ignore[method-assign,assignment]
        # Two seconds of heartbeats: more than six ping intervals, answered by the server.
        for number in range(1, 41):
            beat = AgentToServer(instance_uid=uuid.UUID(agent_id).bytes, sequence_num=number)
            await ws.send(encode_ws_frame(beat.SerializeToString()))
            await ws.recv()
            await asyncio.sleep(0.05)
        assert pings == 0


@pytest.mark.parametrize("framing", ["websockets", "own"])
async def test_a_peer_that_reads_no_pushes_is_closed_as_a_slow_consumer(framing: str) -> None:
    """Configs pushed one after another to an agent that reads nothing (websockets' client,
    its reading paused): once more than two messages of the largest size (2 x 100 kB here)
    wait in our memory, unsent or unread, the next push closes the connection (1008)
    instead of queueing behind them, is counted, and is not taken as sent. Before, the
    websockets framing made a task per push, each holding its frame: 18 MB here."""
    before = metric("opamp_bad_input_total", transport="websocket", reason="slow_consumer")
    uid = uuid.uuid4()
    message = fake_agents.hello(str(uid))
    message.capabilities |= opamp_pb2.AgentCapabilities_AcceptsRemoteConfig
    async with (
        opamp_server(
            websocket_framing=framing, max_message_bytes=100_000, close_timeout_seconds=0.5
        ) as server,
        connect(server.ws_url, ping_interval=None) as ws,
    ):
        await ws.send(encode_ws_frame(message.SerializeToString()))
        await ws.recv()  # the last message it reads
        ws.transport.pause_reading()
        for number in range(200):  # 18 MB: far more than the kernel's socket buffers take
            body = f"# {number}\n".encode() + b"x" * 90_000
            config = DesiredConfig.of({"collector.yaml": ConfigFile(body, "text/yaml")})
            server.fleet.set_desired_config(str(uid), config)
            await asyncio.sleep(0)  # the pushes' tasks (websockets framing) run
        after = metric("opamp_bad_input_total", transport="websocket", reason="slow_consumer")
        assert after == before + 1
        await eventually("closed", lambda: not server.listener.websocket_channels, within=5)
        snapshot = await server.wait_for_agent(uid, offline, timeout=5)
        assert snapshot.phase_reason == "protocol_error"
        ws.transport.abort()


@pytest.mark.parametrize("framing", ["websockets", "own"])
async def test_websocket_and_https_over_tls(tmp_path: Path, framing: str) -> None:
    """Both framings under asyncio's TLS transport: a small message, then one of ~300 KiB in
    three fragments (many TLS records, read across several `data_received` calls)."""
    certs = make_certs(tmp_path / "certs")
    client_tls = ssl.create_default_context(cafile=certs.ca_cert)
    uid = uuid.uuid4()
    large = fake_agents.hello(str(uid))
    large.agent_description.identifying_attributes.add(key="big").value.string_value = "x" * 300_000
    data = encode_ws_frame(large.SerializeToString())
    async with opamp_server(
        tls_cert_file=certs.serving_cert, tls_key_file=certs.serving_key,
        websocket_framing=framing,
    ) as server:  # fmt: skip
        assert server.ws_url.startswith("wss://")
        async with connect(server.ws_url, ssl=client_tls, max_size=None) as ws:
            await ws.send(encode_ws_frame(hello(uid)))
            reply = parse_server_to_agent(decode_ws_frame(await ws.recv(decode=False)))
            assert reply.instance_uid == uid.bytes
            await ws.send([data[:10], data[10:100_000], data[100_000:]])
            reply = parse_server_to_agent(decode_ws_frame(await ws.recv(decode=False)))
            assert reply.instance_uid == uid.bytes
        assert ws.close_code == 1000
        headers = {"Content-Type": "application/x-protobuf"}
        async with (
            aiohttp.ClientSession() as session,
            session.post(server.http_url, data=hello(uid), headers=headers, ssl=client_tls) as r,
        ):
            assert r.status == 200
        with pytest.raises(OSError):  # a client that does not trust the CA
            async with connect(server.ws_url, ssl=ssl.create_default_context()):
                pass


async def test_expect_100_continue() -> None:
    uid = uuid.uuid4()
    body = hello(uid)
    async with opamp_server() as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.listener.port)
        try:
            writer.write(
                b"POST /v1/opamp HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body)
            )
            async with asyncio.timeout(5):
                assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
                writer.write(body)
                status_line = await reader.readline()
            assert status_line.startswith(b"HTTP/1.1 200")
        finally:
            writer.close()
        assert server.agent(uid) is not None


async def test_refused_websocket_handshake_is_counted() -> None:
    before = metric("opamp_bad_input_total", transport="websocket", reason="bad_handshake")
    async with opamp_server() as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.listener.port)
        try:  # no Sec-WebSocket-Key: websockets answers 400
            writer.write(
                b"GET /v1/opamp HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            async with asyncio.timeout(5):
                assert (await reader.readline()).startswith(b"HTTP/1.1 400")
        finally:
            writer.close()
    after = metric("opamp_bad_input_total", transport="websocket", reason="bad_handshake")
    assert after == before + 1


async def test_past_the_connection_cap_new_connections_get_503_with_retry_after() -> None:
    """Two WebSockets fill a cap of three with one HTTP keep-alive connection; the next
    WebSocket and the next new HTTP connection are refused, the open ones keep working, and
    a closed session makes room (the cap stands in for the open-files limit, fdlimit.py)."""
    before = metric("opamp_registrations_rejected_total", reason="connection_limit")
    async with opamp_server(max_connections=3) as server, aiohttp.ClientSession() as http:
        headers = {"Content-Type": "application/x-protobuf"}
        first, second = await connect(server.ws_url), await connect(server.ws_url)
        async with first, second:
            for ws in (first, second):
                await ws.send(encode_ws_frame(hello(uuid.uuid4())))
                await ws.recv()
            kept = await http.post(server.http_url, data=hello(uuid.uuid4()), headers=headers)
            assert kept.status == 200  # its connection stays open: the third
            with pytest.raises(InvalidStatus) as refused:
                await connect(server.ws_url)
            assert refused.value.response.status_code == 503
            reader, writer = await asyncio.open_connection("127.0.0.1", server.listener.port)
            try:
                writer.write(b"POST /v1/opamp HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
                async with asyncio.timeout(5):
                    answer = await reader.read()
            finally:
                writer.close()
            assert answer.startswith(b"HTTP/1.1 503")
            retry = int(answer.split(b"Retry-After: ")[1].split(b"\r\n")[0])
            assert 20 <= retry <= 40
            again = await http.post(server.http_url, data=hello(uuid.uuid4()), headers=headers)
            assert again.status == 200  # the kept connection is not refused
            await second.close()
        for _ in range(100):
            if len(server.listener.websocket_channels) < 2:
                break
            await asyncio.sleep(0.02)
        async with connect(server.ws_url) as room:
            await room.send(encode_ws_frame(hello(uuid.uuid4())))
            await room.recv()
    after = metric("opamp_registrations_rejected_total", reason="connection_limit")
    assert after == before + 2
