"""Parse the head (request line and headers) of an HTTP/1.1 request: pure, bounded.

The front protocol only needs the head to route a connection; websockets or aiohttp parse
it again, fully, after the hand-over. So this parser is strict and small: CRLF line ends,
no obsolete line folding, and it never looks past `max_bytes`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

_TERMINATOR: Final = b"\r\n\r\n"
_TOKEN_CHARS: Final = frozenset(
    b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


class HeadError(Exception):
    """The bytes are not a request head we accept; `status` is the HTTP answer."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class RequestHead:
    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]  # names lowercased, in order, repeats kept

    @property
    def path(self) -> str:
        """The target without its query string."""
        return self.target.split("?", 1)[0]

    def values(self, name: str) -> list[str]:
        """Every value of header `name` (case-insensitive), in order."""
        lowered = name.lower()
        return [value for key, value in self.headers if key == lowered]

    def get(self, name: str) -> str | None:
        """The header's value; None when absent or repeated (ambiguous)."""
        values = self.values(name)
        return values[0] if len(values) == 1 else None

    def tokens(self, name: str) -> set[str]:
        """Comma-separated tokens of every `name` header, lowercased (e.g. Upgrade)."""
        return {
            token.strip().lower()
            for value in self.values(name)
            for token in value.split(",")
            if token.strip()
        }

    @property
    def wants_websocket(self) -> bool:
        return self.method == "GET" and "websocket" in self.tokens("upgrade")


def find_head_end(buffer: bytes | bytearray, max_bytes: int) -> int | None:
    """Length of the head (terminator included) if complete; None if more bytes are needed.

    Raises HeadError 431 when no complete head fits in `max_bytes`.
    """
    end = buffer.find(_TERMINATOR, 0, max_bytes)
    if end >= 0:
        return end + len(_TERMINATOR)
    if buffer.find(b"\n\n", 0, max_bytes) >= 0:
        raise HeadError(400, "bad_head", "request head uses bare LF line ends")
    if len(buffer) >= max_bytes:
        raise HeadError(431, "head_too_large", f"request head longer than {max_bytes} bytes")
    return None


def parse_head(head: bytes) -> RequestHead:
    """Parse a complete head (as delimited by `find_head_end`)."""
    text = head.decode("latin-1")  # maps every byte: header values are opaque here
    lines = text.removesuffix("\r\n\r\n").split("\r\n")
    method, target, version = _request_line(lines[0])
    headers = tuple(_header(line) for line in lines[1:])
    return RequestHead(method, target, version, headers)


def _request_line(line: str) -> tuple[str, str, str]:
    parts = line.split(" ")
    if len(parts) != 3:
        raise HeadError(400, "bad_request_line", f"malformed request line {line[:80]!r}")
    method, target, version = parts
    if not method or not set(method.encode("latin-1")) <= _TOKEN_CHARS:
        raise HeadError(400, "bad_request_line", f"malformed method {method[:20]!r}")
    if not target or any(ch.isspace() or ord(ch) < 0x21 for ch in target):
        raise HeadError(400, "bad_request_line", "malformed request target")
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise HeadError(505, "bad_http_version", f"unsupported version {version[:20]!r}")
    return method, target, version


def _header(line: str) -> tuple[str, str]:
    name, sep, value = line.partition(":")
    if not sep or not name or not set(name.encode("latin-1")) <= _TOKEN_CHARS:
        # Also rejects obsolete line folding (a line starting with whitespace).
        raise HeadError(400, "bad_header", f"malformed header line {line[:80]!r}")
    return name.lower(), value.strip(" \t")
