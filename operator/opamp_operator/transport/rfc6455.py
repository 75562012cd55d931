"""RFC 6455 for a server, sans I/O: the upgrade's checks and key, frames in and out.

`Reader` turns the bytes a client sends into whole events (a message, a ping, a pong, a
close), enforcing what a server must: masked frames, no RSV bits (no extension is ever
negotiated), short unfragmented control frames, continuation frames only inside a
fragmented message, a size cap per message, valid close codes and UTF-8 close reasons
and text. A rule broken raises `Failure` with the close code to send. The encoders build
the unmasked frames a server sends. Nothing here touches a socket or a clock.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Final

from .head import RequestHead

try:  # websockets' C helper (what websockets itself uses), else its pure-Python one
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - the wheel ships it for this platform
    from websockets.utils import apply_mask

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
NORMAL_CLOSURE, GOING_AWAY, PROTOCOL_ERROR, UNSUPPORTED_DATA = 1000, 1001, 1002, 1003
NO_STATUS, INVALID_DATA, POLICY_VIOLATION, MESSAGE_TOO_BIG = 1005, 1007, 1008, 1009
INTERNAL_ERROR: Final = 1011
_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_DATA_OPCODES: Final = frozenset({CONTINUATION, TEXT, BINARY})
# Codes a peer may send (section 7.4; 1012-1014 registered with IANA since), as websockets.
_VALID_CLOSE_CODES: Final = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011})
_MORE_CLOSE_CODES: Final = frozenset({1012, 1013, 1014})

#: (opcode, payload): a whole message (BINARY or TEXT, fragments joined) or a control frame.
Event = tuple[int, bytes]


class Failure(Exception):
    """The client broke the protocol: close with `code`; `detail` says how."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class BadUpgrade(Exception):
    """The upgrade request is not one we accept: answer `status` (and `headers`)."""

    def __init__(self, status: int, detail: str, headers: tuple[tuple[str, str], ...] = ()):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers


def check_upgrade(head: RequestHead) -> str:
    """The Sec-WebSocket-Accept for a valid upgrade (section 4.2.1); else BadUpgrade with
    the status websockets answers: 505 for HTTP/1.0, 426 for a missing Upgrade or
    Connection token, 400 for a bad key or version (426 names the version we speak)."""
    if head.version != "HTTP/1.1":
        raise BadUpgrade(505, f"unsupported HTTP version {head.version}")
    if "upgrade" not in head.tokens("connection"):
        raise BadUpgrade(426, "missing 'upgrade' in the Connection header", _UPGRADE)
    if head.tokens("upgrade") != {"websocket"}:
        raise BadUpgrade(426, "the Upgrade header must be 'websocket'", _UPGRADE)
    key = head.get("sec-websocket-key")
    if key is None:
        raise BadUpgrade(400, "missing or repeated Sec-WebSocket-Key header")
    try:
        valid_key = len(base64.b64decode(key, validate=True)) == 16
    except ValueError:
        valid_key = False
    if not valid_key:
        raise BadUpgrade(400, "invalid Sec-WebSocket-Key header")
    if head.get("sec-websocket-version") != "13":
        raise BadUpgrade(
            400, "Sec-WebSocket-Version must be 13", (("Sec-WebSocket-Version", "13"),)
        )
    return accept_key(key)


_UPGRADE: Final = (("Upgrade", "websocket"),)


def accept_key(key: str) -> str:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (section 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()


def accept_response(accept: str) -> bytes:
    """The 101 answer: no extension, no subprotocol, no Server header (as websockets is set)."""
    return (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
    ).encode()


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """One final, unmasked frame (servers never mask)."""
    length = len(payload)
    if length < 126:
        return bytes((0x80 | opcode, length)) + payload
    if length < 1 << 16:
        return bytes((0x80 | opcode, 126)) + length.to_bytes(2, "big") + payload
    return bytes((0x80 | opcode, 127)) + length.to_bytes(8, "big") + payload


def encode_close(code: int, reason: str) -> bytes:
    """A close frame; the reason is cut (at a character boundary) to fit in 125 bytes."""
    text = reason.encode()[:123].decode(errors="ignore").encode()
    return encode_frame(CLOSE, code.to_bytes(2, "big") + text)


def parse_close(payload: bytes) -> tuple[int, str]:
    """The code and reason of a close frame's payload (NO_STATUS when empty)."""
    if not payload:
        return NO_STATUS, ""
    if len(payload) == 1:
        raise Failure(PROTOCOL_ERROR, "close frame with a 1-byte payload")
    code = int.from_bytes(payload[:2], "big")
    if not (code in _VALID_CLOSE_CODES or code in _MORE_CLOSE_CODES or 3000 <= code < 5000):
        raise Failure(PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        return code, payload[2:].decode()
    except UnicodeDecodeError as error:
        raise Failure(INVALID_DATA, f"close reason is not UTF-8: {error}") from None


class Reader:
    """A client's byte stream in, whole events out (`feed`, then `next_event` until None)."""

    __slots__ = ("_buffer", "_fragments", "_kind", "_max_size", "_offset", "_size")

    def __init__(self, max_size: int) -> None:
        self._max_size = max_size
        self._buffer = bytearray()
        self._offset = 0  # where the first unread frame starts
        self._fragments: list[bytes] | None = None  # a fragmented message in progress
        self._kind = BINARY  # its opcode
        self._size = 0  # its bytes so far

    def feed(self, data: bytes) -> None:
        self._buffer += data

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as events."""
        return len(self._buffer) - self._offset

    def next_event(self) -> Event | None:
        """The next whole event; None when more bytes are needed."""
        while True:
            frame = self._next_frame()
            if frame is None:
                # Drop what was read once per read, not per frame: no quadratic copying.
                del self._buffer[: self._offset]
                self._offset = 0
                return None
            event = self._assemble(*frame)
            if event is not None:
                return event

    def _assemble(self, fin: bool, opcode: int, payload: bytes) -> Event | None:
        if opcode >= CLOSE:
            return opcode, payload  # control frames may come between fragments
        if opcode == CONTINUATION:
            fragments = self._fragments
            if fragments is None:
                raise Failure(PROTOCOL_ERROR, "unexpected continuation frame")
            self._size += len(payload)
            if self._size > self._max_size:
                raise Failure(MESSAGE_TOO_BIG, f"message over {self._max_size} bytes")
            fragments.append(payload)
            if not fin:
                return None
            self._fragments = None
            return self._message(self._kind, b"".join(fragments))
        if self._fragments is not None:
            raise Failure(PROTOCOL_ERROR, "new message inside a fragmented one")
        if fin:
            return self._message(opcode, payload)
        self._fragments, self._kind, self._size = [payload], opcode, len(payload)
        return None

    @staticmethod
    def _message(opcode: int, payload: bytes) -> Event:
        if opcode == TEXT:
            try:
                payload.decode()
            except UnicodeDecodeError as error:
                raise Failure(INVALID_DATA, f"text message is not UTF-8: {error}") from None
        return opcode, payload

    def _next_frame(self) -> tuple[bool, int, bytes] | None:
        """(fin, opcode, unmasked payload) of the next complete frame; None if incomplete."""
        buffer, offset = self._buffer, self._offset
        available = len(buffer) - offset
        if available < 2:
            return None
        first, second = buffer[offset], buffer[offset + 1]
        opcode, length = first & 0x0F, second & 0x7F
        if first & 0x70 or not second & 0x80 or opcode not in _DATA_OPCODES:
            _check_first_bytes(first, second)  # raises, unless a valid control frame
        start = offset + 2
        if length >= 126:
            size = 2 if length == 126 else 8
            if available < 2 + size:
                return None
            length = int.from_bytes(buffer[start : start + size], "big")
            start += size
            if length >> 63:
                raise Failure(PROTOCOL_ERROR, "frame length's top bit set")
        if length > self._max_size:
            raise Failure(MESSAGE_TOO_BIG, f"message over {self._max_size} bytes")
        end = start + 4 + length
        if len(buffer) < end:
            return None
        mask = bytes(buffer[start : start + 4])
        with memoryview(buffer) as view:  # released at once: the bytearray is resized later
            payload = apply_mask(view[start + 4 : end], mask)
        self._offset = end
        return bool(first & 0x80), opcode, payload


def _check_first_bytes(first: int, second: int) -> None:
    """Raise for what a server refuses in a frame's first two bytes (a valid control frame
    passes): RSV bits (no extension is negotiated), no mask, a reserved opcode, a control
    frame that is long or fragmented."""
    opcode = first & 0x0F
    if first & 0x70:
        raise Failure(PROTOCOL_ERROR, "reserved bits must be 0")
    if not second & 0x80:
        raise Failure(PROTOCOL_ERROR, "incorrect masking")
    if opcode < CLOSE or opcode > PONG:
        raise Failure(PROTOCOL_ERROR, f"invalid opcode {opcode:#x}")
    if second & 0x7F > 125:
        raise Failure(PROTOCOL_ERROR, "control frame too long")
    if not first & 0x80:
        raise Failure(PROTOCOL_ERROR, "fragmented control frame")
