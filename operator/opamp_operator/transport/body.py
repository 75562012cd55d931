"""HTTP request and response bodies: bounded reads, bounded gunzip, uid salvage. Pure."""

from __future__ import annotations

import zlib
from typing import Final, Protocol

from opamp_operator.opamp.errors import FrameError
from opamp_operator.opamp.frames import decode_varint
from opamp_operator.opamp.messages import INSTANCE_UID_LENGTH

_GZIP_WBITS: Final = 16 + zlib.MAX_WBITS  # gzip header and trailer, not raw deflate or zlib
_INSTANCE_UID_FIELD: Final = 1
_MAX_GZIP_MEMBERS: Final = 16


class BodyTooLarge(Exception):
    """The body (or what it decompresses to) exceeds the limit."""


class BadGzip(Exception):
    """The body claims gzip but is not a complete, valid gzip stream."""


class ChunkSource(Protocol):
    async def readany(self) -> bytes: ...


async def read_capped(source: ChunkSource, limit: int) -> bytes:
    """Read a whole body, raising BodyTooLarge as soon as it passes `limit` bytes."""
    chunks: list[bytes] = []
    total = 0
    while chunk := await source.readany():
        total += len(chunk)
        if total > limit:
            raise BodyTooLarge(f"body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def gunzip_capped(data: bytes, limit: int) -> bytes:
    """Decompress gzip (several members allowed) without ever producing more than `limit` bytes.

    Decompression stops at `limit + 1` output bytes, so a gzip bomb costs at most that much
    memory before it is refused.
    """
    out = bytearray()
    remaining = data
    for _ in range(_MAX_GZIP_MEMBERS):
        decompressor = zlib.decompressobj(_GZIP_WBITS)
        try:
            out += decompressor.decompress(remaining, limit + 1 - len(out))
        except zlib.error as exc:
            raise BadGzip(f"not gzip: {exc}") from exc
        if len(out) > limit:
            raise BodyTooLarge(f"gzip body inflates past {limit} bytes")
        if not decompressor.eof:
            # Below the output cap, all input was consumed: the stream is cut short.
            raise BadGzip("gzip stream truncated")
        remaining = decompressor.unused_data
        if not remaining:
            return bytes(out)
    raise BadGzip(f"more than {_MAX_GZIP_MEMBERS} gzip members")


def gzip_compress(data: bytes) -> bytes:
    """gzip `data` (fast level: replies are small and the event loop waits)."""
    compressor = zlib.compressobj(1, zlib.DEFLATED, _GZIP_WBITS)
    return compressor.compress(data) + compressor.flush()


def accepts_gzip(accept_encoding: str | None) -> bool:
    """True when an Accept-Encoding header lists gzip without q=0."""
    if not accept_encoding:
        return False
    for item in accept_encoding.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() in ("gzip", "x-gzip"):
            quality = params.strip().lower().replace(" ", "")
            return quality not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


def salvage_instance_uid(data: bytes) -> bytes | None:
    """The instance_uid of an AgentToServer that does not decode as a whole, if readable.

    Walks the top-level fields until field 1 (a 16-byte length-delimited value) turns up,
    stopping at the first thing that does not parse. Lets a 400 reply name the agent.
    """
    offset = 0
    try:
        while offset < len(data):
            tag, offset = decode_varint(data, offset)
            field, wire_type = tag >> 3, tag & 7
            if wire_type == 0:
                _, offset = decode_varint(data, offset)
            elif wire_type == 1:
                offset += 8
            elif wire_type == 5:
                offset += 4
            elif wire_type == 2:
                length, offset = decode_varint(data, offset)
                value = data[offset : offset + length]
                offset += length
                if offset > len(data):
                    return None
                if field == _INSTANCE_UID_FIELD:
                    return value if len(value) == INSTANCE_UID_LENGTH else None
            else:
                return None  # groups (3, 4) and reserved types: give up
    except FrameError:
        return None
    return None
