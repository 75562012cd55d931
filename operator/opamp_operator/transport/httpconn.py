"""One keep-alive HTTP connection of OpAMP agents: an asyncio protocol over `http11`.

Each request is answered inside `data_received`, with no task, stream or response object
per request (docs/framing.md measured aiohttp's server at half this cost's speed). Only a
request that needs an await (a ServiceAccount token's review, a new session's ledger row)
leaves that path: reading pauses, the await runs in a task, and the bytes buffered meanwhile
are handled in order once it is done, so pipelined requests are answered in order.

Timeouts: a connection idle between requests closes after `http_keepalive_seconds`; a
request whose head or body is not complete within `handshake_timeout_seconds` of its first
byte gets 408. A response that ends the connection while the client may still be sending
(an early refusal, a body too large) lingers: what comes is read and dropped for up to
2 s, so the client sees the answer rather than a reset.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from http import HTTPStatus
from typing import Any, Final, cast

from opamp_operator import metrics
from opamp_operator.fleet.model import Transport

from .auth import Admission, PodIdentity
from .cycles import release
from .describe import remote_addr
from .head import RequestHead
from .http import MESSAGES, TEXT, HttpEndpoint, Reply
from .http11 import (
    CONTINUE,
    HttpError,
    RequestReader,
    expects_continue,
    render_response,
    wants_close,
)

log = logging.getLogger(__name__)

LINGER_SECONDS: Final = 2.0
_TIMER_SLACK: Final = 0.001  # a timer may fire this early: the deadline is due then
_SHUTTING_DOWN: Final = Reply(HTTPStatus.SERVICE_UNAVAILABLE, b"shutting down\n", TEXT, close=True)
_INTERNAL: Final = Reply(HTTPStatus.INTERNAL_SERVER_ERROR, b"internal error\n", TEXT, close=True)


class HttpServer:
    """The endpoint's connections: made for the listener, kept until closed, shut down."""

    def __init__(self, endpoint: HttpEndpoint) -> None:
        self.endpoint = endpoint
        self.connections: set[HttpConnection] = set()
        self.serving = True  # False once shutting down: responses close their connection
        self.gauge = metrics.connections_open.labels(Transport.HTTP.value)

    def new_connection(self) -> HttpConnection:
        """The protocol that takes over one connection (its first head is re-read)."""
        return HttpConnection(self)

    async def shutdown(self, within_seconds: float) -> None:
        """Close idle connections now, the others after the response under way; wait
        `within_seconds` at most, then drop what is left."""
        self.serving = False
        connections = list(self.connections)
        for connection in connections:
            connection.shut_down()
        if connections:
            await asyncio.wait([c.closed for c in connections], timeout=within_seconds)
        for connection in connections:
            connection.abort()


class HttpConnection(asyncio.Protocol):
    __slots__ = (
        "_busy",
        "_deadline",
        "_eof",
        "_head",
        "_identity",
        "_lingering",
        "_peer",
        "_reader",
        "_reading",
        "_request_since",
        "_server",
        "_timer",
        "_wire",
        "_write_paused",
        "closed",
    )

    def __init__(self, server: HttpServer) -> None:
        settings = server.endpoint.settings
        self._server = server
        self._reader = RequestReader(settings.max_head_bytes, settings.max_message_bytes)
        self._wire: asyncio.Transport | None = None
        self._peer = "unknown"
        self._head: RequestHead | None = None  # of the request under way
        self._identity: PodIdentity | None = None  # its ServiceAccount token's, if reviewed
        self._busy = False  # an await is under way: bytes wait in the reader
        self._reading = True
        self._write_paused = False
        self._lingering = False  # the last response is sent: drop input, then close
        self._eof = False  # the client half-closed while an await was under way
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self._request_since = 0.0  # loop time of the first byte of the request under way
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, but uvloop's does not inherit asyncio.Transport.
        self._wire = cast(asyncio.Transport, transport)
        self._peer = remote_addr(self._wire.get_extra_info("peername"))
        self._server.connections.add(self)
        self._server.gauge.inc()
        self._request_since = asyncio.get_running_loop().time()

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return
        reader = self._reader
        if reader.between_requests:
            self._request_since = asyncio.get_running_loop().time()
        reader.feed(data)
        if not self._busy:
            self._process()

    def eof_received(self) -> bool | None:
        if self._busy:
            self._eof = True  # a client that half-closed after its request gets the answer
            return True
        return None  # close

    def pause_writing(self) -> None:
        # A client that does not read its responses stops being read (bounded both ways).
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()
        if not self._busy:
            self._process()

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self._server.connections:
            self._server.connections.discard(self)
            self._server.gauge.dec()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.closed.done():
            self.closed.set_result(None)
        release(self._wire)

    # -- for the server ----------------------------------------------------------------------

    def shut_down(self) -> None:
        """Close now if idle; otherwise the response under way closes (serving is off)."""
        if not self._busy and self._head is None and self._reader.between_requests:
            self._close()

    def abort(self) -> None:
        if self._wire is not None:
            self._wire.abort()

    # -- requests ----------------------------------------------------------------------------

    def _process(self) -> None:
        """Every complete head and body in the reader, in order, until one needs an await."""
        reader = self._reader
        while not self._busy and not self._write_paused and not self._lingering:
            try:
                event = reader.next_event()
            except HttpError as error:
                self._refuse_stream(error)
                return
            if event is None:
                self._arm_timeout()
                return
            try:
                if isinstance(event, RequestHead):
                    self._on_head(event)
                else:
                    self._on_body(event)
            except Exception:
                log.exception("OpAMP HTTP request from %s failed", self._peer)
                self._respond(_INTERNAL)
                return

    def _on_head(self, head: RequestHead) -> None:
        self._head, self._identity = head, None
        if not self._server.serving:
            self._respond(_SHUTTING_DOWN)
            return
        checked = self._server.endpoint.check_head(head, self._peer)
        if isinstance(checked, Reply):
            self._respond(checked, early=True)
        elif checked.token is not None:
            self._run(self._identify(checked))
        else:
            self._continue(head)

    async def _identify(self, admitted: Admission) -> None:
        assert admitted.token is not None
        outcome = await self._server.endpoint.identify(admitted.token, self._peer)
        if isinstance(outcome, Reply):
            self._respond(outcome, early=True)
            return
        self._identity = outcome
        if self._head is not None:
            self._continue(self._head)

    def _continue(self, head: RequestHead) -> None:
        """The head passed: a client waiting for `100 Continue` may send its body now."""
        if expects_continue(head) and self._reader.in_body:
            self._write(CONTINUE)

    def _on_body(self, body: bytes) -> None:
        head = self._head
        assert head is not None
        started = time.perf_counter()
        reply = self._server.endpoint.answer(head, body, self._peer, self._identity)
        if reply.recorded_first:
            self._run(self._reply_once_recorded(reply, started))
            return
        self._respond(reply)
        MESSAGES.handled(time.perf_counter() - started)

    async def _reply_once_recorded(self, reply: Reply, started: float) -> None:
        await self._server.endpoint.ledger.recorded()  # its row first: the reply acknowledges it
        self._respond(reply)
        MESSAGES.handled(time.perf_counter() - started)

    def _refuse_stream(self, error: HttpError) -> None:
        """What the reader refuses: answered, counted, logged once; the stream is lost."""
        head = self._head if self._reader.in_body else None
        reply = self._server.endpoint.bad(self._peer, error.reason, error.status, str(error), head)
        self._respond(reply, early=True, linger=True)

    # -- responses ---------------------------------------------------------------------------

    def _respond(self, reply: Reply, *, early: bool = False, linger: bool = False) -> None:
        """Send `reply` to the request under way. `early`: its body may be unread, so the
        connection ends after it, as it does for `reply.close` and a client asking to.
        `linger`: the client may still be sending, whatever the reader expects."""
        head, self._head = self._head, None
        close = early or reply.close or head is None or wants_close(head)
        close = close or self._eof or not self._server.serving
        self._write(
            render_response(
                reply.status, reply.body, reply.content_type, headers=reply.headers, close=close,
                keep_alive_1_0=head is not None and head.version == "HTTP/1.0",
            )
        )  # fmt: skip
        if close:
            self._close(linger=linger)
        elif not self._reader.between_requests:
            self._request_since = asyncio.get_running_loop().time()  # pipelined: next one

    def _close(self, *, linger: bool = False) -> None:
        """End the connection once the response is out; linger if input may still come."""
        wire = self._wire
        if wire is None or self._lingering:
            return
        self._lingering = True
        if not linger and not self._reader.awaiting_body:
            wire.close()
            return
        self._busy = False
        self._update_reading()  # read and drop what the client is still sending
        self._arm(asyncio.get_running_loop().time() + LINGER_SECONDS)

    def _write(self, data: bytes) -> None:
        wire = self._wire
        if wire is not None and not wire.is_closing():
            wire.write(data)

    # -- timeouts ----------------------------------------------------------------------------

    def _arm_timeout(self) -> None:
        """Waiting for bytes: the keep-alive timeout between requests, else the request's."""
        settings = self._server.endpoint.settings
        if self._reader.between_requests and self._head is None:
            since = asyncio.get_running_loop().time()
            self._arm(since + settings.http_keepalive_seconds)
        else:
            self._arm(self._request_since + settings.handshake_timeout_seconds)

    def _arm(self, deadline: float) -> None:
        """One timer per connection: moved earlier when needed, never just later (a timer
        that fires before the deadline sets itself again), so most requests arm none."""
        self._deadline = deadline
        timer = self._timer
        if timer is not None and timer.when() <= deadline:
            return
        if timer is not None:
            timer.cancel()
        self._timer = asyncio.get_running_loop().call_at(deadline, self._due)

    def _due(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        if loop.time() + _TIMER_SLACK < self._deadline:
            self._timer = loop.call_at(self._deadline, self._due)
            return
        wire = self._wire
        if wire is None or wire.is_closing():
            return
        if self._lingering or (self._reader.between_requests and self._head is None):
            wire.close()  # lingered long enough, or idle past the keep-alive timeout
        elif self._busy:
            self._arm(loop.time() + self._server.endpoint.settings.handshake_timeout_seconds)
        else:
            self._time_out()

    def _time_out(self) -> None:
        timeout = self._server.endpoint.settings.handshake_timeout_seconds
        if self._reader.in_body:
            reason, detail = "body_timeout", f"body not received within {timeout:g}s"
        else:
            reason, detail = "head_timeout", f"no complete request head within {timeout:g}s"
        head = self._head
        reply = self._server.endpoint.bad(
            self._peer, reason, HTTPStatus.REQUEST_TIMEOUT, detail, head
        )
        self._respond(reply, early=True)

    # -- awaits ------------------------------------------------------------------------------

    def _run(self, step: Coroutine[Any, Any, None]) -> None:
        """Run `step` with reading paused; then handle what came meanwhile."""
        self._busy = True
        self._update_reading()
        task = asyncio.get_running_loop().create_task(step)
        task.add_done_callback(self._step_done)

    def _step_done(self, task: asyncio.Task[None]) -> None:
        self._busy = False
        if not task.cancelled() and task.exception() is not None:
            log.error("an HTTP request from %s failed", self._peer, exc_info=task.exception())
            if self._head is not None:
                self._respond(_INTERNAL)
        self._update_reading()
        if not self._lingering:
            self._process()

    def _update_reading(self) -> None:
        wire = self._wire
        want = self._lingering or (not self._busy and not self._write_paused)
        if wire is None or want == self._reading or wire.is_closing():
            return
        self._reading = want
        if want:
            wire.resume_reading()
        else:
            wire.pause_reading()
