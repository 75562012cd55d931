"""HTTP/1.1 requests on a keep-alive connection, and our responses: pure, bounded.

The server side of RFC 9112 that OpAMP over plain HTTP needs: request heads (parsed by
`head.py`, as the front protocol parses every connection's first one), bodies framed by
Content-Length or chunked transfer coding, pipelined requests one after another. What
smuggling relies on is refused (RFC 9112 section 6.3): Content-Length together with
Transfer-Encoding, differing Content-Lengths, a transfer coding other than chunked, any
transfer coding on HTTP/1.0. Every buffer is bounded: a head by `max_head_bytes`, a body
(and a chunked body's trailers) by `max_body_bytes`.

`RequestReader` is fed bytes and yields, in turn, a request's head and then its whole body;
any error is an `HttpError` carrying the status to answer and the `opamp_bad_input_total`
reason. After one the stream cannot be trusted: answer, then close.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from email.utils import formatdate
from http import HTTPStatus
from typing import Final

from .head import HeadError, RequestHead, find_head_end, parse_head

_CRLF: Final = b"\r\n"
_MAX_CHUNK_LINE: Final = 1024  # a chunk-size line, extensions included
_HEX: Final = frozenset(b"0123456789abcdefABCDEF")
_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS = range(6)


class HttpError(Exception):
    """The request cannot be served: answer `status` and close; `reason` is the metric's."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason


class RequestReader:
    """Bytes in; a head, then its body, for each request in order (see `next_event`)."""

    __slots__ = (
        "_body",
        "_buffer",
        "_left",
        "_max_body",
        "_max_head",
        "_state",
        "_trailer_bytes",
    )

    def __init__(self, max_head_bytes: int, max_body_bytes: int) -> None:
        self._max_head = max_head_bytes
        self._max_body = max_body_bytes
        self._buffer = bytearray()
        self._state = _HEAD
        self._left = 0  # body bytes still to come (Content-Length), or of this chunk
        self._body = bytearray()  # a chunked body, as it arrives
        self._trailer_bytes = 0

    @property
    def between_requests(self) -> bool:
        """No byte of a next request buffered: the connection is idle (keep-alive)."""
        buffer = self._buffer
        return self._state == _HEAD and (not buffer or (len(buffer) <= 2 and buffer in _CRLF))

    @property
    def in_body(self) -> bool:
        """A head was returned and its body not yet."""
        return self._state != _HEAD

    @property
    def awaiting_body(self) -> bool:
        """A head was returned and part of its body has still to arrive."""
        if self._state == _LENGTH:
            return len(self._buffer) < self._left
        return self._state != _HEAD

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_event(self) -> RequestHead | bytes | None:
        """The next head (`RequestHead`) or body (`bytes`), or None until more bytes come.

        A head is always followed by its body (b"" when it has none) before the next head.
        Raises HttpError for what cannot be parsed or exceeds its bound.
        """
        if self._state == _HEAD:
            return self._read_head()
        if self._state == _LENGTH:
            return self._read_length()
        return self._read_chunked()

    # -- heads -----------------------------------------------------------------------------

    def _read_head(self) -> RequestHead | None:
        buffer = self._buffer
        # RFC 9112 section 2.2: ignore empty lines before a request line (some clients
        # send a CRLF after a body).
        while buffer.startswith(_CRLF):
            del buffer[:2]
        try:
            end = find_head_end(buffer, self._max_head)
            if end is None:
                return None
            head = parse_head(bytes(buffer[:end]))
        except HeadError as error:
            raise HttpError(error.status, error.reason, str(error)) from None
        del buffer[:end]
        self._start_body(head)
        return head

    def _start_body(self, head: RequestHead) -> None:
        fields = head.fields
        codings = fields.get("transfer-encoding")
        lengths = fields.get("content-length", ())
        if codings is not None:
            if lengths:
                raise _bad("both Content-Length and Transfer-Encoding")
            if head.version == "HTTP/1.0":
                raise _bad("Transfer-Encoding in an HTTP/1.0 request")
            if len(codings) != 1 or head.tokens("transfer-encoding") != {"chunked"}:
                raise HttpError(
                    HTTPStatus.NOT_IMPLEMENTED, "bad_request", "only chunked transfer coding"
                )
            self._state, self._body, self._trailer_bytes = _CHUNK_SIZE, bytearray(), 0
            return
        length = _content_length(lengths)
        if length > self._max_body:
            raise self._too_large()
        self._state, self._left = _LENGTH, length

    # -- Content-Length bodies -------------------------------------------------------------

    def _read_length(self) -> bytes | None:
        left = self._left
        if len(self._buffer) < left:
            return None
        body = bytes(self._buffer[:left])
        del self._buffer[:left]
        self._state = _HEAD
        return body

    # -- chunked bodies ----------------------------------------------------------------------

    def _read_chunked(self) -> bytes | None:
        while True:
            state = self._state
            if state == _CHUNK_SIZE:
                if not self._chunk_size():
                    return None
            elif state == _CHUNK_DATA:
                if not self._chunk_data():
                    return None
            elif state == _CHUNK_END:
                if len(self._buffer) < 2:
                    return None
                if self._buffer[:2] != _CRLF:
                    raise _bad("chunk data not followed by CRLF")
                del self._buffer[:2]
                self._state = _CHUNK_SIZE
            elif not self._trailers():
                return None
            else:
                body, self._body = bytes(self._body), bytearray()
                self._state = _HEAD
                return body

    def _chunk_size(self) -> bool:
        line = self._line(_MAX_CHUNK_LINE, "chunk-size line")
        if line is None:
            return False
        digits = line.split(b";", 1)[0].rstrip(b" \t")
        if not digits or not set(digits) <= _HEX or len(digits) > 16:
            raise _bad("malformed chunk size")
        size = int(digits, 16)
        if len(self._body) + size > self._max_body:
            raise self._too_large()
        self._left = size
        self._state = _CHUNK_DATA if size else _TRAILERS
        return True

    def _chunk_data(self) -> bool:
        take = min(self._left, len(self._buffer))
        self._body += self._buffer[:take]
        del self._buffer[:take]
        self._left -= take
        if self._left:
            return False
        self._state = _CHUNK_END
        return True

    def _trailers(self) -> bool:
        """Skip trailer fields up to the empty line; True once it came."""
        while (line := self._line(self._max_head, "trailer section")) is not None:
            self._trailer_bytes += len(line) + 2
            if self._trailer_bytes > self._max_head:
                raise HttpError(
                    HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "head_too_large",
                    f"trailer section longer than {self._max_head} bytes",
                )
            if not line:
                return True
        return False

    def _line(self, limit: int, what: str) -> bytes | None:
        end = self._buffer.find(_CRLF, 0, limit + 2)
        if end < 0:
            if len(self._buffer) > limit:
                raise _bad(f"{what} longer than {limit} bytes")
            return None
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 2]
        return line

    def _too_large(self) -> HttpError:
        return HttpError(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "too_large", f"body exceeds {self._max_body} bytes"
        )


def _content_length(values: Sequence[str]) -> int:
    """The body length the Content-Length headers give (0 without one).

    Repeats are allowed only with one value (RFC 9110 section 8.6): "5, 5" or two "5"s.
    """
    if not values:
        return 0
    found = {item.strip() for value in values for item in value.split(",")}
    if len(found) != 1:
        raise _bad("conflicting Content-Length values")
    text = found.pop()
    if not text.isdigit() or not text.isascii() or len(text) > 18:
        raise _bad(f"malformed Content-Length {text[:20]!r}")
    return int(text)


def _bad(detail: str) -> HttpError:
    return HttpError(HTTPStatus.BAD_REQUEST, "bad_request", detail)


def wants_close(head: RequestHead) -> bool:
    """Whether the client ends the connection after this request (RFC 9112 section 9.3)."""
    tokens = head.tokens("connection") if head.values("connection") else ()
    if head.version == "HTTP/1.0":
        return "keep-alive" not in tokens
    return "close" in tokens


def expects_continue(head: RequestHead) -> bool:
    """An HTTP/1.1 client waiting for `100 Continue` before it sends the body."""
    expect = head.get("expect")
    return head.version == "HTTP/1.1" and expect is not None and expect.lower() == "100-continue"


CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_PHRASES: Final = {status.value: status.phrase for status in HTTPStatus}


class _DateHeader:
    """The Date header's value (RFC 9110 section 6.6.1), formatted once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._value = ""

    def now(self) -> str:
        second = int(time.time())
        if second != self._second:
            self._second, self._value = second, formatdate(second, usegmt=True)
        return self._value


_date = _DateHeader().now


def render_response(
    status: int,
    body: bytes,
    content_type: str,
    *,
    headers: tuple[tuple[str, str], ...] = (),
    close: bool = False,
    keep_alive_1_0: bool = False,
) -> bytes:
    """A complete response: status line, headers, body (Content-Length framing)."""
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers) if headers else ""
    if close:
        extra += "Connection: close\r\n"
    elif keep_alive_1_0:
        extra += "Connection: keep-alive\r\n"  # HTTP/1.0 closes unless told otherwise
    head = (
        f"HTTP/1.1 {status} {_PHRASES.get(status, 'Status')}\r\nContent-Type: {content_type}"
        f"\r\nContent-Length: {len(body)}\r\nDate: {_date()}\r\n{extra}\r\n"
    )
    return head.encode("latin-1") + body
