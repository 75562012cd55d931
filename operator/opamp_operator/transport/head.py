"""Parse the head (request line and headers) of an HTTP/1.1 request: pure, bounded.

The front protocol reads every connection's first head with it to route the connection, and
the HTTP connection (httpconn.py) every request's. It is strict and small: CRLF line ends,
no obsolete line folding, and it never looks past `max_bytes`; each line is matched by one
regular expression pass, in C (a loop over characters here was 18 % of a plain-HTTP
request's cost; one match per line 2.3x what this costs).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

_TERMINATOR: Final = b"\r\n\r\n"
_TOKEN_CLASS: Final = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_TOKEN: Final = re.compile(_TOKEN_CLASS)
_TARGET: Final = re.compile(r"[\x21-\x7e\x80-\xff]+")  # visible, no blanks or controls
_REQUEST_LINE: Final = re.compile(rf"({_TOKEN_CLASS}) ([\x21-\x7e\x80-\xff]+) (HTTP/\S*)")
_FIELD_LINES: Final = re.compile(rf"^({_TOKEN_CLASS}):[ \t]*([^\r\n]*)\r\n", re.M)
_NONE: Final[tuple[str, ...]] = ()


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
    fields: dict[str, list[str]]  # lowercased name -> its values, in order, repeats kept

    @property
    def path(self) -> str:
        """The target without its query string."""
        return self.target.split("?", 1)[0]

    def values(self, name: str) -> Sequence[str]:
        """Every value of header `name` (case-insensitive), in order."""
        return self.fields.get(name.lower(), _NONE)

    def get(self, name: str) -> str | None:
        """The header's value; None when absent or repeated (ambiguous)."""
        values = self.fields.get(name.lower())
        return values[0] if values is not None and len(values) == 1 else None

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
    first = text.index("\r\n")
    method, target, version = _request_line(text[:first])
    block = text[first + 2 : -2]  # every field line with its CRLF
    # One pass in C over all field lines: each must be a token name, a colon and a value
    # without CR or LF, from the start of its line; one match per line or it is refused
    # (obsolete folding, a bare CR or LF, a blank in a name all fail to match a line).
    found = _FIELD_LINES.findall(block)
    if len(found) != block.count("\n"):
        raise _bad_field_line(block)
    fields: dict[str, list[str]] = {}
    for name, value in found:
        fields.setdefault(name.lower(), []).append(value.rstrip(" \t"))
    return RequestHead(method, target, version, fields)


def _bad_field_line(block: str) -> HeadError:
    """The first field line that does not match, for the answer."""
    line = next(
        (line for line in block.split("\r\n") if not _FIELD_LINES.fullmatch(line + "\r\n")),
        block,
    )
    return HeadError(400, "bad_header", f"malformed header line {line[:80]!r}")


def _request_line(line: str) -> tuple[str, str, str]:
    match = _REQUEST_LINE.fullmatch(line)
    if match is None:
        raise _bad_request_line(line)
    method, target, version = match.groups()
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise HeadError(505, "bad_http_version", f"unsupported version {version[:20]!r}")
    return method, target, version


def _bad_request_line(line: str) -> HeadError:
    """What is wrong with a request line that does not match, for the answer."""
    parts = line.split(" ")
    if len(parts) != 3:
        return HeadError(400, "bad_request_line", f"malformed request line {line[:80]!r}")
    method, target, version = parts
    if not method or not _TOKEN.fullmatch(method):
        return HeadError(400, "bad_request_line", f"malformed method {method[:20]!r}")
    if not target or not _TARGET.fullmatch(target):
        return HeadError(400, "bad_request_line", "malformed request target")
    return HeadError(505, "bad_http_version", f"unsupported version {version[:20]!r}")
