"""A minimal RFC 6455 server on a bare asyncio.Protocol: the handshake, then frames.

Each message is answered inside `data_received`, with no task, future or queue per
message: what the framing costs when nothing but framing runs. Enough for the benchmark's
client (websockets, masked frames, no extensions); docs/framing.md lists what a
production version would still need (UTF-8 checks, close timeouts, an async handler...).
"""

from __future__ import annotations

import asyncio
import base64
from typing import Final, cast

from opamp_operator.transport.head import HeadError, RequestHead, find_head_end, parse_head
from opamp_operator.transport.rfc6455 import accept_key, accept_response, encode_frame

from .answer import answer_ws
from .running import MAX_MESSAGE_BYTES, PATH, Running, asyncio_running

try:  # websockets' C helper (what websockets itself uses), else its pure-Python one
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - the wheel ships it for this platform
    from websockets.utils import apply_mask

_MAX_HEAD_BYTES: Final = 16 * 1024
_CONT, _TEXT, _BINARY, _CLOSE, _PING, _PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_PROTOCOL_ERROR, _UNSUPPORTED, _TOO_BIG = 1002, 1003, 1009


class _Failure(Exception):
    """The peer broke the protocol: close with `code`."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def handshake_response(head: RequestHead) -> bytes | None:
    """The 101 response for a valid upgrade request; None to refuse it (ValueError for a
    key that is not base64)."""
    key = head.get("sec-websocket-key")
    valid = (
        head.wants_websocket
        and "upgrade" in head.tokens("connection")
        and head.get("sec-websocket-version") == "13"
        and head.path == PATH
    )
    if not valid or key is None or len(base64.b64decode(key, validate=True)) != 16:
        return None
    return accept_response(accept_key(key))


class WebSocketProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._open = False  # after the handshake
        self._closing = False  # a close frame was sent: read nothing more
        self._fragments: list[bytes] | None = None  # a fragmented message in progress
        self._fragment_bytes = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self._buffer += data
        try:
            if not self._open and not self._handshake():
                return
            self._frames()
        except _Failure as failure:
            self._close(failure.code)

    def pause_writing(self) -> None:
        # A client that does not read its replies stops being read (bounded buffers).
        assert self._transport is not None
        self._transport.pause_reading()

    def resume_writing(self) -> None:
        assert self._transport is not None
        self._transport.resume_reading()

    def _handshake(self) -> bool:
        transport = self._transport
        assert transport is not None
        try:
            end = find_head_end(self._buffer, _MAX_HEAD_BYTES)
            if end is None:
                return False
            response = handshake_response(parse_head(bytes(self._buffer[:end])))
        except (HeadError, ValueError):
            response = None
        if response is None:
            transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            transport.close()
            self._closing = True
            return False
        del self._buffer[:end]
        transport.write(response)
        self._open = True
        return True

    def _frames(self) -> None:
        """Handle every complete frame in the buffer; keep the rest for the next read."""
        buffer, offset = self._buffer, 0
        while not self._closing:
            parsed = _parse_frame(buffer, offset)
            if parsed is None:
                break
            fin, opcode, payload, offset = parsed
            self._on_frame(fin, opcode, payload)
        del buffer[:offset]  # once per read, not per frame: no quadratic copying

    def _on_frame(self, fin: bool, opcode: int, payload: bytes) -> None:
        if opcode >= _CLOSE:
            self._on_control(opcode, payload)
        elif opcode == _CONT:
            if self._fragments is None:
                raise _Failure(_PROTOCOL_ERROR)
            self._add_fragment(payload)
            if fin:
                message, self._fragments = b"".join(self._fragments), None
                self._on_message(message)
        elif self._fragments is not None:
            raise _Failure(_PROTOCOL_ERROR)  # a new message inside a fragmented one
        elif opcode == _TEXT:
            raise _Failure(_UNSUPPORTED)  # OpAMP messages are binary
        elif opcode == _BINARY and fin:
            self._on_message(payload)
        elif opcode == _BINARY:
            self._fragments, self._fragment_bytes = [], 0
            self._add_fragment(payload)
        else:
            raise _Failure(_PROTOCOL_ERROR)  # reserved opcode

    def _add_fragment(self, payload: bytes) -> None:
        assert self._fragments is not None
        self._fragment_bytes += len(payload)
        if self._fragment_bytes > MAX_MESSAGE_BYTES:
            raise _Failure(_TOO_BIG)
        self._fragments.append(payload)

    def _on_control(self, opcode: int, payload: bytes) -> None:
        assert self._transport is not None
        if opcode == _PING:
            self._transport.write(encode_frame(_PONG, payload))
        elif opcode == _CLOSE:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1000
            self._close(code)  # echo the code; the server closes TCP first (section 7.1.1)
        elif opcode != _PONG:
            raise _Failure(_PROTOCOL_ERROR)

    def _on_message(self, message: bytes) -> None:
        assert self._transport is not None
        try:
            reply = answer_ws(message)
        except Exception:  # a bad OpAMP header or protobuf: the operator closes with 1007
            self._close(1007)
            return
        self._transport.write(encode_frame(_BINARY, reply))

    def _close(self, code: int) -> None:
        assert self._transport is not None
        if not self._closing:
            self._closing = True
            self._transport.write(encode_frame(_CLOSE, code.to_bytes(2, "big")))
            self._transport.close()  # flushes what was written first


def _parse_frame(buffer: bytearray, offset: int) -> tuple[bool, int, bytes, int] | None:
    """(fin, opcode, unmasked payload, next offset) of the frame at `offset`; None if
    incomplete. Raises _Failure for what a server must refuse."""
    if len(buffer) - offset < 2:
        return None
    first, second = buffer[offset], buffer[offset + 1]
    opcode, length = first & 0x0F, second & 0x7F
    if first & 0x70 or not second & 0x80:
        raise _Failure(_PROTOCOL_ERROR)  # RSV bits without an extension; an unmasked frame
    if opcode >= _CLOSE and (length > 125 or not first & 0x80):
        raise _Failure(_PROTOCOL_ERROR)  # control frames are short and never fragmented
    start = offset + 2
    if length >= 126:
        size = 2 if length == 126 else 8
        if len(buffer) - start < size:
            return None
        length = int.from_bytes(buffer[start : start + size], "big")
        start += size
        if length >= 1 << 63:
            raise _Failure(_PROTOCOL_ERROR)
    if length > MAX_MESSAGE_BYTES:
        raise _Failure(_TOO_BIG)
    end = start + 4 + length
    if len(buffer) < end:
        return None
    mask = bytes(buffer[start : start + 4])
    with memoryview(buffer) as view:  # released at once: the bytearray is resized later
        payload = apply_mask(view[start + 4 : end], mask)
    return bool(first & 0x80), opcode, payload, end


async def own_ws_server(host: str, port: int) -> Running:
    loop = asyncio.get_running_loop()
    return asyncio_running(await loop.create_server(WebSocketProtocol, host, port))
