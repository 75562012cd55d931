"""The OpAMP WebSocket message header.

Over WebSocket, every binary message is a header followed by one serialized
protobuf message (AgentToServer or ServerToAgent). The header is an unsigned
64-bit integer in protobuf varint encoding; the specification defines only the
value 0, and a receiver must reject others. (Plain HTTP carries no header.)
"""

from __future__ import annotations

from typing import Final

from opamp_operator.opamp.errors import FrameError

#: The only header value the specification defines.
WS_HEADER_VALUE: Final = 0

#: A 64-bit value needs at most ten 7-bit groups.
MAX_VARINT_BYTES: Final = 10

_UINT64_MAX: Final = (1 << 64) - 1
_ENCODED_HEADER: Final = b"\x00"


def encode_varint(value: int) -> bytes:
    """Encode an unsigned 64-bit integer as a protobuf varint."""
    if not 0 <= value <= _UINT64_MAX:
        raise ValueError(f"varint value out of uint64 range: {value}")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_varint(data: bytes, offset: int = 0) -> tuple[int, int]:
    """Decode a protobuf varint at `offset`; return (value, offset just past it).

    Raises FrameError (reason "truncated_header") when the data ends inside the
    varint, and (reason "overlong_header") when it runs past ten bytes or past
    64 bits. Non-minimal encodings (e.g. 0x80 0x00 for zero) are accepted, as
    protobuf decoders accept them.
    """
    value = 0
    for index in range(MAX_VARINT_BYTES):
        position = offset + index
        if position >= len(data):
            raise FrameError(
                f"header varint truncated after {index} byte(s)", reason="truncated_header"
            )
        byte = data[position]
        # The tenth group holds only bit 63: anything above 1 there overflows.
        if index == MAX_VARINT_BYTES - 1 and byte > 1:
            raise FrameError("header varint overflows 64 bits", reason="overlong_header")
        value |= (byte & 0x7F) << (7 * index)
        if byte < 0x80:
            return value, position + 1
    raise FrameError(
        f"header varint longer than {MAX_VARINT_BYTES} bytes", reason="overlong_header"
    )


def encode_ws_frame(message_bytes: bytes) -> bytes:
    """Prefix a serialized protobuf message with the OpAMP WebSocket header."""
    return _ENCODED_HEADER + message_bytes


def decode_ws_frame(frame: bytes) -> bytes:
    """Strip and check the OpAMP WebSocket header; return the protobuf payload.

    The payload may be empty: that is a valid, all-default message.
    Raises FrameError with reason "empty_frame", "truncated_header",
    "overlong_header" or "unknown_header".
    """
    if not frame:
        raise FrameError("empty WebSocket message: no OpAMP header", reason="empty_frame")
    header, payload_start = decode_varint(frame)
    if header != WS_HEADER_VALUE:
        raise FrameError(f"unknown OpAMP header value {header}", reason="unknown_header")
    return frame[payload_start:]
