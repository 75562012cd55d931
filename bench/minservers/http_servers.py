"""OpAMP over plain HTTP: aiohttp's low-level server (the operator's) and a bare protocol.

The bare one is HTTP/1.1 keep-alive with Content-Length bodies only, answered inside
`data_received`: no request object, no task per request.
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus
from typing import Final, cast

from aiohttp import web

from opamp_operator.transport.head import HeadError, RequestHead, find_head_end, parse_head

from .answer import answer
from .running import MAX_MESSAGE_BYTES, PATH, Running, asyncio_running, bound_port

CONTENT_TYPE: Final = "application/x-protobuf"
_MAX_HEAD_BYTES: Final = 16 * 1024


async def aiohttp_http_server(host: str, port: int) -> Running:
    """As the operator's HttpEndpoint: no access log, no automatic decompression."""
    server = web.Server(
        _aiohttp_request, access_log=None, auto_decompress=False, keepalive_timeout=75.0
    )
    listening = await asyncio.get_running_loop().create_server(server, host, port)

    async def stop() -> None:
        listening.close()
        await server.shutdown(1.0)

    return Running(bound_port(listening), stop)


async def _aiohttp_request(request: web.BaseRequest) -> web.StreamResponse:
    if request.path != PATH or request.method != "POST":
        return web.Response(status=404)
    body = await request.read()
    return web.Response(body=answer(body), content_type=CONTENT_TYPE)


def response(status: str, body: bytes, *, close: bool = False) -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {len(body)}\r\n"
    return (head + ("Connection: close\r\n\r\n" if close else "\r\n")).encode() + body


class HttpProtocol(asyncio.Protocol):
    """Requests in order on one connection (pipelined ones too), each answered at once."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._head: RequestHead | None = None  # of the request whose body is awaited
        self._body_bytes = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while self._transport is not None and not self._transport.is_closing():
            if self._head is None and not self._read_head():
                return
            if len(self._buffer) < self._body_bytes:
                return
            body = bytes(self._buffer[: self._body_bytes])
            del self._buffer[: self._body_bytes]
            head, self._head = self._head, None
            assert head is not None
            self._respond(head, body)

    def pause_writing(self) -> None:
        # A client that does not read its responses stops being read (bounded buffers).
        assert self._transport is not None
        self._transport.pause_reading()

    def resume_writing(self) -> None:
        assert self._transport is not None
        self._transport.resume_reading()

    def _read_head(self) -> bool:
        try:
            end = find_head_end(self._buffer, _MAX_HEAD_BYTES)
            if end is None:
                return False
            head = parse_head(bytes(self._buffer[:end]))
            length = _content_length(head)
        except HeadError as error:
            return self._refuse(f"{error.status} {HTTPStatus(error.status).phrase}")
        if length is None:
            return self._refuse("411 Length Required")
        if length > MAX_MESSAGE_BYTES:
            return self._refuse("413 Content Too Large")
        del self._buffer[:end]
        self._head, self._body_bytes = head, length
        return True

    def _respond(self, head: RequestHead, body: bytes) -> None:
        assert self._transport is not None
        if head.path != PATH or head.method != "POST":
            self._transport.write(response("404 Not Found", b""))
            return
        try:
            reply = answer(body)
        except Exception:  # protobuf's DecodeError: the operator answers 400
            self._refuse("400 Bad Request")
            return
        close = _wants_close(head)
        self._transport.write(response("200 OK", reply, close=close))
        if close:
            self._transport.close()

    def _refuse(self, status: str) -> bool:
        """Answer and close: after a bad head the stream cannot be trusted."""
        assert self._transport is not None
        self._transport.write(response(status, b"", close=True))
        self._transport.close()
        return False


def _content_length(head: RequestHead) -> int | None:
    """The body's length; None without one. Chunked bodies are refused (HeadError)."""
    if head.values("transfer-encoding"):
        raise HeadError(501, "chunked", "Transfer-Encoding is not supported here")
    values = head.values("content-length")
    if not values:
        return 0 if head.method != "POST" else None
    if len(set(values)) != 1 or not values[0].isdigit():
        raise HeadError(400, "bad_length", "bad Content-Length")
    return int(values[0])


def _wants_close(head: RequestHead) -> bool:
    connection = head.tokens("connection")
    return "close" in connection or (head.version == "HTTP/1.0" and "keep-alive" not in connection)


async def own_http_server(host: str, port: int) -> Running:
    loop = asyncio.get_running_loop()
    return asyncio_running(await loop.create_server(HttpProtocol, host, port))
