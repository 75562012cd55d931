"""Keep-alive HTTP connections to the listener (transport/httpconn.py), over real sockets.

Plain sockets, because the behaviours here (pipelining, half-close, HTTP/1.0, timeouts) are
what HTTP client libraries hide. Real OpAMP clients over HTTP are in test_opamp_goagent.py
and test_opamp_python_client.py.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
import uuid

import pytest

from opamp_operator.opamp.messages import AgentToServer, parse_server_to_agent
from tests.support.opamp_clients import OpAMPServer, opamp_server

pytestmark = pytest.mark.integration

_RESPONSE = re.compile(rb"HTTP/1\.1 (\d{3}) [^\r]*\r\n(.*?)\r\n\r\n", re.S)


def post(body: bytes, *, version: str = "1.1", extra: str = "") -> bytes:
    head = (
        f"POST /v1/opamp HTTP/{version}\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode() + body


def hello(uid: uuid.UUID) -> bytes:
    return AgentToServer(instance_uid=uid.bytes).SerializeToString()


def responses(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Every response in `data`: status, headers (lowercased names), body."""
    out = []
    offset = 0
    while match := _RESPONSE.match(data, offset):
        headers = dict(
            (name.strip().lower(), value.strip())
            for name, _, value in (line.partition(":") for line in match[2].decode().split("\r\n"))
        )
        start = match.end()
        end = start + int(headers["content-length"])
        out.append((int(match[1]), headers, data[start:end]))
        offset = end
    return out


async def exchange(server: OpAMPServer, data: bytes, *, half_close: bool = False) -> bytes:
    """Send `data` on one connection; everything read until the server closes it."""
    assert server.listener.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", server.listener.port)
    try:
        writer.write(data)
        await writer.drain()
        if half_close:
            writer.write_eof()
        async with asyncio.timeout(5):
            return await reader.read()
    finally:
        writer.close()


async def test_pipelined_requests_are_answered_in_order_on_one_connection() -> None:
    uids = [uuid.uuid4() for _ in range(3)]
    data = b"".join(post(hello(uid)) for uid in uids[:-1]) + post(
        hello(uids[-1]), extra="Connection: close\r\n"
    )
    async with opamp_server() as server:
        got = responses(await exchange(server, data))
        assert [status for status, _, _ in got] == [200, 200, 200]
        assert [parse_server_to_agent(body).instance_uid for _, _, body in got] == [
            uid.bytes for uid in uids
        ]
        assert got[-1][1]["connection"] == "close"
        assert all(server.agent(uid) is not None for uid in uids)


async def test_a_client_that_half_closes_after_its_request_still_gets_the_answer() -> None:
    uid = uuid.uuid4()
    async with opamp_server() as server:
        # Its first message opens a session: the reply waits for the session's row (an
        # await), and the EOF arrives meanwhile.
        got = responses(await exchange(server, post(hello(uid)), half_close=True))
        assert [status for status, _, _ in got] == [200]
        assert parse_server_to_agent(got[0][2]).instance_uid == uid.bytes


async def test_http_1_0_closes_unless_asked_to_keep_alive() -> None:
    async with opamp_server() as server:
        got = responses(await exchange(server, post(hello(uuid.uuid4()), version="1.0")))
        assert [status for status, _, _ in got] == [200]
        assert got[0][1].get("connection") == "close"
        kept = post(hello(uuid.uuid4()), version="1.0", extra="Connection: keep-alive\r\n")
        closing = post(hello(uuid.uuid4()), version="1.0")
        got = responses(await exchange(server, kept + closing))
        assert [status for status, _, _ in got] == [200, 200]
        assert got[0][1]["connection"] == "keep-alive"


async def test_an_idle_keep_alive_connection_closes_after_the_keepalive_timeout() -> None:
    async with opamp_server(http_keepalive_seconds=0.5) as server:
        started = time.monotonic()
        got = responses(await exchange(server, post(hello(uuid.uuid4()))))
        waited = time.monotonic() - started
        assert [status for status, _, _ in got] == [200]
        assert 0.4 < waited < 3.0, waited
        assert not server.listener._http.connections


async def test_chunked_body() -> None:
    uid = uuid.uuid4()
    body = hello(uid)
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:5], body[5:]))
    data = (
        b"POST /v1/opamp HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + chunks + b"0\r\n\r\n"
    )
    async with opamp_server() as server:
        got = responses(await exchange(server, data))
        assert [status for status, _, _ in got] == [200]
        assert parse_server_to_agent(got[0][2]).instance_uid == uid.bytes


async def test_an_early_refusal_is_read_by_a_client_still_sending_its_body() -> None:
    """413 from the Content-Length alone: the server drops the rest of the body rather than
    closing on it (a close with unread input resets the connection, and the client would
    see that instead of the answer)."""
    async with opamp_server(max_message_bytes=64 * 1024) as server:
        assert server.listener.port is not None
        sock = socket.create_connection(("127.0.0.1", server.listener.port))
        try:
            body = b"\0" * (4 * 1024 * 1024)
            head = post(b"")[: -len("Content-Length: 0\r\n\r\n")]
            sock.sendall(head + f"Content-Length: {len(body)}\r\n\r\n".encode())

            def send_then_read() -> bytes:
                for offset in range(0, len(body), 256 * 1024):  # as over a slower network
                    sock.sendall(body[offset : offset + 256 * 1024])
                    time.sleep(0.01)
                sock.settimeout(5)
                return sock.recv(65536)

            answer = await asyncio.to_thread(send_then_read)
        finally:
            sock.close()
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:80]


async def test_stop_closes_idle_keep_alive_connections_at_once() -> None:
    async with opamp_server(http_keepalive_seconds=60) as server:
        assert server.listener.port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", server.listener.port)
        writer.write(post(hello(uuid.uuid4())))
        await writer.drain()
        first = await reader.readuntil(b"\r\n\r\n")
        assert first.startswith(b"HTTP/1.1 200 ")
        started = time.monotonic()
        await server.listener.stop()
        assert time.monotonic() - started < 1.0
        async with asyncio.timeout(2):
            await reader.read()  # the rest of the response, then EOF
        writer.close()
