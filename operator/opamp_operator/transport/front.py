"""The first protocol of every connection: read the request head, then hand the socket over.

The head is buffered (at most `max_head_bytes`), parsed, and given to a dispatch function
that returns either the protocol to take over the connection or a `Refusal`. The hand-over
is asyncio's documented protocol switch: `transport.set_protocol(new)`, then
`new.connection_made(transport)`, then `new.data_received(everything buffered so far)`.
The new protocol parses the request from its first byte, as if it had been there all along.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import cast

from opamp_operator import metrics

from .cycles import release
from .describe import remote_addr
from .head import HeadError, RequestHead, find_head_end, parse_head

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Answer the request with `status` and close, without handing the connection over."""

    status: int
    detail: str
    headers: tuple[tuple[str, str], ...] = ()


#: Decides what takes over a connection, given its head, the peer's address and when the
#: connection was accepted (loop time).
Dispatch = Callable[[RequestHead, str, float], asyncio.Protocol | Refusal]


class FrontProtocol(asyncio.Protocol):
    def __init__(
        self,
        dispatch: Dispatch,
        *,
        max_head_bytes: int,
        head_timeout: float,
        pending: set[FrontProtocol],
    ) -> None:
        self._dispatch = dispatch
        self._max_head_bytes = max_head_bytes
        self._head_timeout = head_timeout
        self._pending = pending  # the listener's set of connections still in this protocol
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._accepted_at = 0.0
        self._done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, but not always an asyncio.Transport subclass: uvloop's
        # TCPTransport implements the interface without inheriting it.
        self._transport = cast(asyncio.Transport, transport)
        loop = asyncio.get_running_loop()
        self._accepted_at = loop.time()
        self._timer = loop.call_later(self._head_timeout, self._timed_out)
        self._pending.add(self)

    def data_received(self, data: bytes) -> None:
        if self._done:
            return
        self._buffer += data
        try:
            end = find_head_end(self._buffer, self._max_head_bytes)
            if end is None:
                return
            head = parse_head(bytes(self._buffer[:end]))
        except HeadError as error:
            self._bad_head(error.reason, Refusal(error.status, str(error)))
            return
        self._finish()
        try:
            outcome = self._dispatch(head, self._peer(), self._accepted_at)
        except Exception:
            log.exception("routing a request from %s failed", self._peer())
            self._respond(Refusal(500, "internal error"))
            return
        if isinstance(outcome, Refusal):
            self._respond(outcome)
        else:
            self._hand_over(outcome)

    def eof_received(self) -> bool | None:
        self._finish()
        return None  # close: the peer hung up before sending a whole head

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish()
        release(self._transport)

    def close(self) -> None:
        """Drop the connection (listener shutdown) if it is still waiting for its head."""
        if not self._done and self._transport is not None:
            self._finish()
            self._transport.close()

    # -- internals -------------------------------------------------------------------------

    def _finish(self) -> None:
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pending.discard(self)

    def _peer(self) -> str:
        transport = self._transport
        return remote_addr(transport.get_extra_info("peername") if transport else None)

    def _timed_out(self) -> None:
        detail = f"no complete request head within {self._head_timeout:g}s"
        self._bad_head("head_timeout", Refusal(HTTPStatus.REQUEST_TIMEOUT, detail))

    def _bad_head(self, reason: str, refusal: Refusal) -> None:
        metrics.bad_input.labels("http", reason).inc()
        log.warning("refused a request from %s: %s", self._peer(), refusal.detail)
        self._finish()
        self._respond(refusal)

    def _respond(self, refusal: Refusal) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.write(render_response(refusal))
        transport.close()  # flushes the response first

    def _hand_over(self, protocol: asyncio.Protocol) -> None:
        transport = self._transport
        assert transport is not None
        buffered, self._buffer = bytes(self._buffer), bytearray()
        transport.set_protocol(protocol)
        try:
            protocol.connection_made(transport)
            protocol.data_received(buffered)
        except Exception:
            log.exception("handing the connection from %s over failed", self._peer())
            transport.abort()


def render_response(refusal: Refusal) -> bytes:
    """A complete `Connection: close` HTTP/1.1 response with a plain-text body."""
    body = (refusal.detail + "\n").encode()
    try:
        phrase = HTTPStatus(refusal.status).phrase
    except ValueError:
        phrase = "Error"
    lines = [
        f"HTTP/1.1 {refusal.status} {phrase}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in refusal.headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
