"""What bad input gets from the listener, and that it keeps serving the next client.

Raw clients (websockets, aiohttp, plain sockets) send what real agents never would.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import re
import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from opamp_operator.fleet.model import AgentPhase
from opamp_operator.fleet.remoteconfig import ACCEPTS_REMOTE_CONFIG, ConfigFile, DesiredConfig
from opamp_operator.opamp.frames import decode_ws_frame, encode_ws_frame
from opamp_operator.opamp.generated import opamp_pb2
from opamp_operator.opamp.messages import AgentToServer, parse_server_to_agent
from tests.support.opamp_clients import OpAMPServer, metric, opamp_server
from tests.support.polling import eventually

pytestmark = pytest.mark.integration

PROTOBUF = {"Content-Type": "application/x-protobuf"}
MAX_MESSAGE = 64 * 1024
# 4 KiB of YAML: its reply is long enough to be gzipped (short ones go out as they are).
LARGE_CONFIG = DesiredConfig.of(
    {"collector.yaml": ConfigFile(b"receivers: {}\n" + b"# padding\n" * 400, "text/yaml")}
)


def hello(uid: uuid.UUID | None = None, name: str = "raw") -> AgentToServer:
    message = AgentToServer(instance_uid=(uid or uuid.uuid4()).bytes, sequence_num=0)
    attribute = message.agent_description.identifying_attributes.add(key="service.name")
    attribute.value.string_value = name
    return message


def bad_input(transport: str, reason: str) -> float:
    return metric("opamp_bad_input_total", transport=transport, reason=reason)


@pytest.fixture
async def server() -> AsyncIterator[OpAMPServer]:
    async with opamp_server(
        max_message_bytes=MAX_MESSAGE,
        max_head_bytes=2048,
        handshake_timeout_seconds=0.5,
        close_timeout_seconds=1.0,
    ) as running:
        yield running


async def still_serves(server: OpAMPServer) -> None:
    """A good WebSocket agent and a good HTTP agent both get their replies."""
    uid = uuid.uuid4()
    async with connect(server.ws_url) as ws:
        await ws.send(encode_ws_frame(hello(uid).SerializeToString()))
        reply = parse_server_to_agent(decode_ws_frame(await ws.recv(decode=False)))
        assert reply.instance_uid == uid.bytes
    async with aiohttp.ClientSession() as session:
        body = hello().SerializeToString()
        async with session.post(server.http_url, data=body, headers=PROTOBUF) as response:
            assert response.status == 200
            assert parse_server_to_agent(await response.read()).capabilities


async def closed_with(ws: ClientConnection) -> tuple[int | None, str | None]:
    try:
        async with asyncio.timeout(5):
            await ws.recv()
    except ConnectionClosed:
        pass
    return ws.close_code, ws.close_reason


# -- WebSocket -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "code", "reason"),
    [
        ("a text message", 1003, "text_message"),
        (b"", 1002, "empty_frame"),
        (b"\x05" + hello().SerializeToString(), 1002, "unknown_header"),
        (b"\x80", 1002, "truncated_header"),
        (b"\x00\xff\xff\xff", 1007, "malformed_message"),
    ],
    ids=["text", "empty", "unknown-header", "truncated-header", "malformed-protobuf"],
)
async def test_bad_websocket_message_closes_with_a_code(
    server: OpAMPServer, frame: str | bytes, code: int, reason: str
) -> None:
    before = bad_input("websocket", reason)
    uid = uuid.uuid4()
    async with connect(server.ws_url) as ws:
        await ws.send(encode_ws_frame(hello(uid).SerializeToString()))
        await ws.recv()
        await ws.send(frame)
        close_code, close_reason = await closed_with(ws)
    assert close_code == code
    assert close_reason
    assert bad_input("websocket", reason) == before + 1
    snapshot = server.agent(uid)
    assert snapshot is not None
    assert (snapshot.phase, snapshot.phase_reason) == (AgentPhase.OFFLINE, "protocol_error")
    await still_serves(server)


async def test_oversized_websocket_message_is_1009(server: OpAMPServer) -> None:
    before = bad_input("websocket", "message_too_big")
    async with connect(server.ws_url) as ws:
        await ws.send(b"\x00" + b"\x0a" * (MAX_MESSAGE + 10))
        close_code, _ = await closed_with(ws)
    assert close_code == 1009
    # Counted when the server's recv() sees the closed connection: maybe after the client.
    await eventually(
        "the message_too_big count",
        lambda: bad_input("websocket", "message_too_big") == before + 1,
        within=2,
        every=0.01,
    )
    await still_serves(server)


async def test_silent_websocket_is_closed_after_the_handshake_timeout(
    server: OpAMPServer,
) -> None:
    before = bad_input("websocket", "first_message_timeout")
    loop = asyncio.get_running_loop()
    async with connect(server.ws_url) as ws:
        opened = loop.time()
        close_code, _ = await closed_with(ws)
        waited = loop.time() - opened
    assert close_code == 1008
    assert waited < 0.5 + 0.5
    assert bad_input("websocket", "first_message_timeout") == before + 1
    assert len(server.fleet) == 0


async def test_invalid_instance_uid_gets_an_error_response(server: OpAMPServer) -> None:
    async with connect(server.ws_url) as ws:
        await ws.send(encode_ws_frame(AgentToServer(instance_uid=b"short").SerializeToString()))
        reply = parse_server_to_agent(decode_ws_frame(await ws.recv(decode=False)))
    assert reply.error_response.type == opamp_pb2.ServerErrorResponseType_BadRequest
    assert len(server.fleet) == 0


async def test_websocket_upgrade_on_another_path_is_404(server: OpAMPServer) -> None:
    status = await raw_status(
        server,
        b"GET /elsewhere HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    assert status == 404


# -- the request head ------------------------------------------------------------------------


async def raw_status(server: OpAMPServer, data: bytes) -> int:
    """Send raw bytes; return the status of the response (the server closes after it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.listener.port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(5):
            response = await reader.read()
    finally:
        writer.close()
    return int(response.split(b" ", 2)[1])


@pytest.mark.parametrize(
    ("data", "status", "reason"),
    [
        (b"GET / HTTP/1.1\r\nX-Pad: " + b"a" * 4096 + b"\r\n\r\n", 431, "head_too_large"),
        (b"HELLO\r\n\r\n", 400, "bad_request_line"),
        (b"GET / HTTP/1.1\nHost: x\n\n", 400, "bad_head"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n", 408, "head_timeout"),
    ],
    ids=["too-large", "garbage", "bare-lf", "incomplete"],
)
async def test_bad_request_head(server: OpAMPServer, data: bytes, status: int, reason: str) -> None:
    before = bad_input("http", reason)
    assert await raw_status(server, data) == status
    assert bad_input("http", reason) == before + 1
    await still_serves(server)


_POST_HEAD = b"POST /v1/opamp HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
_GOOD_POST = _POST_HEAD + b"Content-Length: 0\r\n\r\n"
_BIG_HEAD = b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 9000 + b"\r\n\r\n"
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3}) ")


async def raw_statuses(server: OpAMPServer, *parts: bytes) -> list[int]:
    """Send `parts` on one connection (a pause between them); the status of every response."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.listener.port)
    try:
        for part in parts:
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(0.1)  # a later part arrives as its own read, as over a network
        async with asyncio.timeout(5):
            response = await reader.read()
    finally:
        writer.close()
    return [int(status) for status in _STATUS_LINE.findall(response)]


# What aiohttp's HTTP parser refuses (after the front protocol handed the connection over).
@pytest.mark.parametrize(
    ("parts", "statuses", "reason"),
    [
        (
            [_POST_HEAD + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"],
            [400], "bad_request",
        ),
        ([_POST_HEAD + b"Content-Length: abc\r\n\r\n"], [400], "bad_request"),
        ([_POST_HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"], [400],
         "bad_request"),
        # A bad chunk that comes after the head, in a later read (aiohttp's C parser
        # dropped the body then, and the request could only time out with 408).
        (
            [_POST_HEAD + b"Transfer-Encoding: chunked\r\n\r\n", b"zz\r\nabc\r\n0\r\n\r\n"],
            [400], "bad_request",
        ),
        ([_POST_HEAD + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"], [501],
         "bad_request"),
        ([_GOOD_POST, b"HELLO WORLD\r\n\r\n"], [200, 400], "bad_request_line"),
        # Keep-alive heads are bounded as the first one is (the front protocol's 431).
        ([_GOOD_POST, _BIG_HEAD], [200, 431], "head_too_large"),
        # A body that never comes in full: 408 after --handshake-timeout (0.5 s here).
        ([_POST_HEAD + b"Content-Length: 10\r\n\r\nabc"], [408], "body_timeout"),
    ],
    ids=["length-and-chunked", "bad-length", "bad-chunk-size", "bad-chunk-later",
         "unknown-coding", "keep-alive-garbage", "keep-alive-too-large", "body-late"],
)  # fmt: skip
async def test_request_the_http_parser_refuses_is_answered_logged_once_and_counted(
    server: OpAMPServer,
    caplog: pytest.LogCaptureFixture,
    parts: list[bytes],
    statuses: list[int],
    reason: str,
) -> None:
    caplog.set_level(logging.INFO)
    before = bad_input("http", reason)
    assert await raw_statuses(server, *parts) == statuses
    await eventually(
        f"the http {reason} count",
        lambda: bad_input("http", reason) == before + 1,
        within=2,
        every=0.01,
    )
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(loud) == 1, [r.getMessage() for r in loud]
    assert "127.0.0.1" in loud[0].getMessage()
    assert loud[0].exc_info is None and "Traceback" not in caplog.text
    await still_serves(server)


# -- plain HTTP ------------------------------------------------------------------------------


async def post(
    server: OpAMPServer,
    body: bytes,
    headers: dict[str, str] | None = None,
    path: str | None = None,
) -> tuple[int, dict[str, str], bytes]:
    url = server.http_url if path is None else server.http_url.replace("/v1/opamp", path)
    async with (
        # Only the Accept-Encoding a test sets: aiohttp would add gzip by itself.
        aiohttp.ClientSession(
            auto_decompress=False, skip_auto_headers=["Accept-Encoding"]
        ) as session,
        session.post(url, data=body, headers={**PROTOBUF, **(headers or {})}) as response,
    ):
        return response.status, dict(response.headers), await response.read()


async def test_gzip_in_and_out(server: OpAMPServer) -> None:
    uid = uuid.uuid4()
    zipped = hello(uid, "zipped")
    zipped.capabilities = ACCEPTS_REMOTE_CONFIG
    server.fleet.set_desired_config(str(uid), LARGE_CONFIG)  # a reply worth compressing
    body = gzip.compress(zipped.SerializeToString())
    status, headers, raw = await post(
        server, body, {"Content-Encoding": "gzip", "Accept-Encoding": "gzip"}
    )
    assert status == 200
    assert headers["Content-Encoding"] == "gzip"
    reply = parse_server_to_agent(gzip.decompress(raw))
    assert reply.instance_uid == uid.bytes
    assert reply.remote_config.config_hash == LARGE_CONFIG.hash
    snapshot = server.agent(uid)
    assert snapshot is not None
    assert snapshot.service_name == "zipped"
    status, headers, raw = await post(server, hello(uid).SerializeToString(), {})
    assert status == 200
    assert "Content-Encoding" not in headers  # not asked for: not compressed
    assert parse_server_to_agent(raw).instance_uid == uid.bytes


async def test_short_replies_go_out_uncompressed_even_when_gzip_is_accepted(
    server: OpAMPServer,
) -> None:
    uid = uuid.uuid4()
    headers = {"Accept-Encoding": "gzip, deflate"}  # as aiohttp's client sends it
    status, answered, raw = await post(server, hello(uid).SerializeToString(), headers)
    assert status == 200
    assert "Content-Encoding" not in answered  # gzip would only make it longer
    assert parse_server_to_agent(raw).instance_uid == uid.bytes


@pytest.mark.parametrize(
    ("body", "headers", "status", "reason"),
    [
        (b"not gzip", {"Content-Encoding": "gzip"}, 400, "bad_gzip"),
        (gzip.compress(b"\0" * 50_000_000), {"Content-Encoding": "gzip"}, 413, "too_large"),
        (b"\0" * (MAX_MESSAGE + 1), {}, 413, "too_large"),
        (b"", {"Content-Type": "application/json"}, 415, "bad_content_type"),
        (b"", {"Content-Encoding": "br"}, 415, "bad_encoding"),
    ],
    ids=["bad-gzip", "gzip-bomb", "too-large", "content-type", "encoding"],
)
async def test_bad_http_request(
    server: OpAMPServer, body: bytes, headers: dict[str, str], status: int, reason: str
) -> None:
    before = bad_input("http", reason)
    got, _, _ = await post(server, body, headers)
    assert got == status
    assert bad_input("http", reason) == before + 1
    await still_serves(server)


async def test_chunked_body_over_the_limit_is_413(server: OpAMPServer) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b"\0" * (MAX_MESSAGE // 4)

    before = bad_input("http", "too_large")
    async with aiohttp.ClientSession() as session:
        try:
            async with session.post(server.http_url, data=chunks(), headers=PROTOBUF) as resp:
                assert resp.status == 413
        except aiohttp.ClientOSError:
            pass  # the server may close while the client is still sending
    assert bad_input("http", "too_large") == before + 1
    await still_serves(server)


async def test_malformed_protobuf_names_the_agent_when_it_can(server: OpAMPServer) -> None:
    uid = uuid.uuid4()
    before = bad_input("http", "malformed_message")
    broken = AgentToServer(instance_uid=uid.bytes).SerializeToString() + b"\x1a\xff\xff"
    status, headers, raw = await post(server, broken)
    assert status == 400
    assert headers["Content-Type"] == "application/x-protobuf"
    reply = parse_server_to_agent(raw)
    assert reply.instance_uid == uid.bytes
    assert reply.error_response.type == opamp_pb2.ServerErrorResponseType_BadRequest
    status, headers, raw = await post(server, b"\xff\xff\xff")
    assert status == 400
    assert headers["Content-Type"].startswith("text/plain")
    assert bad_input("http", "malformed_message") == before + 2
    assert len(server.fleet) == 0


async def test_wrong_method_and_path(server: OpAMPServer) -> None:
    async with aiohttp.ClientSession() as session, session.get(server.http_url) as response:
        assert response.status == 405
        assert response.headers["Allow"] == "POST"
    status, _, _ = await post(server, hello().SerializeToString(), path="/v1/other")
    assert status == 404
    assert len(server.fleet) == 0


async def test_every_keep_alive_request_is_authenticated() -> None:
    async with (
        opamp_server(agent_tokens=frozenset({"s3cret"})) as server,
        aiohttp.ClientSession() as session,
    ):
        good = {**PROTOBUF, "Authorization": "Bearer s3cret"}
        body = hello().SerializeToString()
        async with session.post(server.http_url, data=body, headers=good) as response:
            assert response.status == 200
        # Same pooled connection, now handled by aiohttp alone: still checked.
        bad = {**PROTOBUF, "Authorization": "Bearer nope"}
        async with session.post(server.http_url, data=body, headers=bad) as response:
            assert response.status == 401
            assert response.headers["WWW-Authenticate"] == "Bearer"
        assert len(server.fleet) == 1
