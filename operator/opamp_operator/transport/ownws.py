"""OpAMP over WebSocket with our own framing (`--websocket-framing own`): one asyncio
protocol per connection, which is also the fleet's channel.

The opt-in alternative to websockets (transport/websocket.py), measured in docs/framing.md:
each message is answered inside `data_received`, with no task, future or queue per message.
Only a message that needs an await (a new session's ledger row, a send waiting for drain,
the token review before the upgrade) leaves that path: reading pauses, the await runs in a
task, and the frames buffered meanwhile are handled in order once it is done. The rules per
message (uid header, Pod binding, capabilities, metrics) are the websockets path's, shared:
`wsmessage.read_message`, then `wssession.SessionRules`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Coroutine
from typing import Any, Final, cast

from opamp_operator import metrics
from opamp_operator.config import ListenerSettings
from opamp_operator.fleet.ledger import NO_LEDGER, SessionLedger
from opamp_operator.fleet.model import Reason, Transport
from opamp_operator.fleet.registry import Fleet
from opamp_operator.opamp.frames import encode_ws_frame
from opamp_operator.opamp.messages import ServerToAgent

from . import rfc6455 as ws
from .auth import AgentAuth, PodBinding, Refused
from .cycles import release
from .describe import remote_addr
from .front import Refusal, render_response
from .instanceuid import describe
from .keepalive import ping_due, quiet_before_ping
from .websocket import FAILURE_REASONS
from .wsmessage import Rejection, read_message
from .wssession import MESSAGES, AskFullState, Opened, SessionRules, push_buffer_limit

log = logging.getLogger(__name__)

_TIMER_SLACK: Final = 0.001  # a timer may fire this early: the ping is due then
_EVENTS_PER_TURN: Final = 64  # frames handled per read before yielding the loop to others
_HANDSHAKE, _OPEN, _CLOSING, _CLOSED = range(4)


class ChannelClosed(ConnectionError):
    """`send` on a WebSocket that is closing or gone."""


class OwnEndpoint:
    """Makes our WebSocket protocols for the listener and keeps the open ones."""

    def __init__(
        self,
        settings: ListenerSettings,
        fleet: Fleet,
        ledger: SessionLedger = NO_LEDGER,
        auth: AgentAuth | None = None,
    ) -> None:
        self.settings = settings
        self.fleet = fleet
        self.ledger = ledger
        self.auth = auth
        self.channels: set[OwnChannel] = set()  # open: upgraded, not closing
        self.connections: set[OwnChannel] = set()  # until their TCP connection is gone
        self.serving = True  # False once the listener stops: upgrades under review get 503
        self.gauge = metrics.connections_open.labels(Transport.WEBSOCKET.value)
        self.rules = SessionRules(fleet, quiet_before_ping(fleet.settings, settings))
        self.push_buffer_limit = push_buffer_limit(settings)  # `OwnChannel.offer`

    def new_connection(
        self, accept: str, accepted_at: float, header_uid: bytes | None, token: str | None
    ) -> OwnChannel:
        """The protocol that answers the checked upgrade (`accept`: its key) and runs it."""
        return OwnChannel(self, accept, accepted_at, header_uid, token)

    async def wait_closed(self, within_seconds: float) -> None:
        """Wait for every connection to end; drop those left after `within_seconds`."""
        connections = list(self.connections)
        if connections:
            await asyncio.wait([c.closed for c in connections], timeout=within_seconds)
        for connection in connections:
            connection.abort()

    def count_bad_input(self, reason: str, peer: str, uid: bytes | None, detail: str) -> None:
        metrics.bad_input.labels(Transport.WEBSOCKET.value, reason).inc()
        agent = describe(uid)
        log.warning("closing the OpAMP WebSocket from %s%s: %s (%s)", peer, agent, detail, reason)


class OwnChannel(asyncio.Protocol):
    """One agent's WebSocket: the RFC 6455 server side over an asyncio transport, and the
    channel the fleet sees (send, offer, request_close, as WebSocketChannel)."""

    __slots__ = (
        "_accept",
        "_busy",
        "_close_timer",
        "_drained",
        "_ended",
        "_endpoint",
        "_first_timer",
        "_head_left",
        "_ping_payload",
        "_ping_timer",
        "_pong_timer",
        "_reader",
        "_reading",
        "_remote_addr",
        "_state",
        "_token",
        "_wire",
        "_write_paused",
        "accepted_at",
        "allowed_uids",
        "binding",
        "capabilities",
        "close_reason",
        "closed",
        "header_uid",
        "heard_at",
        "pinged_at",
        "quiet_seconds",
    )

    def __init__(
        self,
        endpoint: OwnEndpoint,
        accept: str,
        accepted_at: float,
        header_uid: bytes | None,
        token: str | None,
    ) -> None:
        self._endpoint = endpoint
        self._accept = accept
        self._token = token  # a ServiceAccount token to review before the upgrade
        self._reader = ws.Reader(endpoint.settings.max_message_bytes)
        self._wire: asyncio.Transport | None = None
        self._remote_addr = "unknown"
        self._state = _HANDSHAKE
        self._head_left = True  # the request head comes first in data_received
        self._busy = False  # an await is under way: frames wait in the reader
        self._reading = True
        self._write_paused = False
        self._drained: asyncio.Future[None] | None = None
        self._ended = False  # the fleet was told the channel closed
        self._first_timer: asyncio.TimerHandle | None = None
        self._ping_timer: asyncio.TimerHandle | None = None
        self._pong_timer: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._ping_payload: bytes | None = None
        self.accepted_at = self.heard_at = self.pinged_at = accepted_at
        self.header_uid = header_uid
        # The uids its messages may carry when the upgrade named one (OpAMP-Instance-UID):
        # that one, and any the server assigned it since (a duplicate switching uid).
        self.allowed_uids: set[bytes] | None = None if header_uid is None else {header_uid}
        self.binding: PodBinding | None = None
        self.capabilities = 0
        # Judged by its heartbeats: ping only after this much quiet (None: every ping_interval).
        self.quiet_seconds: float | None = None
        self.close_reason: str = Reason.CONNECTION_CLOSED
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- the channel, as the fleet and the listener use it ----------------------------------

    @property
    def transport(self) -> Transport:
        return Transport.WEBSOCKET

    @property
    def remote_addr(self) -> str:
        return self._remote_addr

    @property
    def service_account(self) -> str | None:
        binding = self.binding
        return None if binding is None else binding.identity.service_account

    async def send(self, message: ServerToAgent) -> None:
        """Send one ServerToAgent once the peer reads; raises ChannelClosed if closing."""
        while self._write_paused and self._drained is not None:
            await asyncio.shield(self._drained)
        if self._state != _OPEN:
            raise ChannelClosed(f"the WebSocket from {self._remote_addr} is closed")
        self._write_message(message)

    def offer(self, message: ServerToAgent) -> bool:
        """Send a server-initiated message now (buffered if the peer is slow); never blocks.

        False once the connection is closing: the fleet sends it again in the next session.
        A peer that stops reading is closed as a slow consumer once more than
        `push_buffer_limit` bytes wait for it, so the buffer stays bounded."""
        if self._state != _OPEN:
            return False
        assert self._wire is not None
        unread = self._wire.get_write_buffer_size()
        if unread > self._endpoint.push_buffer_limit:
            detail = f"slow consumer: {unread} bytes unread"
            self._reject("slow_consumer", ws.POLICY_VIOLATION, detail)
            return False
        self._write_message(message)
        return True

    def request_close(self, reason: str) -> None:
        """Start the closing handshake with `reason` (1001 when the operator goes, else 1000)."""
        going_away = reason in (Reason.OPERATOR_SHUTDOWN, Reason.OPERATOR_RESTART)
        code = ws.GOING_AWAY if going_away else ws.NORMAL_CLOSURE
        self.close(code, reason, reason)

    def close(self, code: int, text: str, reason: str) -> None:
        """Close with `code` and `text`; `reason` is what the fleet is told. Idempotent."""
        if self._state >= _CLOSING:
            return
        self.close_reason = reason
        if self._state == _HANDSHAKE:
            self.abort()  # not upgraded yet: nothing to say in a close frame
            return
        self._send_close(code, text, close_tcp=False)

    async def finish(self) -> None:
        """Close normally unless a close is already under way; wait until the socket is gone."""
        self.close(ws.NORMAL_CLOSURE, "", self.close_reason)
        await asyncio.wait([self.closed])  # bounded by close_timeout_seconds

    def abort(self) -> None:
        if self._wire is not None:
            self._wire.abort()

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, but uvloop's does not inherit asyncio.Transport.
        wire = self._wire = cast(asyncio.Transport, transport)
        self._remote_addr = remote_addr(wire.get_extra_info("peername"))
        self._endpoint.connections.add(self)
        loop = asyncio.get_running_loop()
        deadline = self.accepted_at + self._endpoint.settings.handshake_timeout_seconds
        self._first_timer = loop.call_at(deadline, self._first_message_late)
        token, self._token = self._token, None
        if token is not None and self._endpoint.auth is not None:
            self._run(self._review(token))  # reading resumes once the upgrade is answered
        else:
            self._open()

    def data_received(self, data: bytes) -> None:
        if self._head_left:
            # The front protocol hands over everything it read, the request head first
            # (it parsed it whole); what follows may already be frames.
            self._head_left = False
            data = data[data.index(b"\r\n\r\n") + 4 :]
        self._reader.feed(data)
        if not self._busy:
            self._handle_frames()

    def eof_received(self) -> bool | None:
        return None  # close: a peer that half-closes without a close frame is gone

    def pause_writing(self) -> None:
        # A peer that does not read its replies stops being read (bounded buffers both ways).
        self._write_paused = True
        if self._drained is None:
            self._drained = asyncio.get_running_loop().create_future()
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_senders()
        self._update_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._state = _CLOSED
        self._endpoint.connections.discard(self)
        self._end()
        for timer in (self._first_timer, self._close_timer):
            if timer is not None:
                timer.cancel()
        self._first_timer = self._close_timer = None
        self._write_paused = False
        self._wake_senders()
        if not self.closed.done():
            self.closed.set_result(None)
        release(self._wire)

    # -- the upgrade -------------------------------------------------------------------------

    async def _review(self, token: str) -> None:
        """Review a ServiceAccount token before the upgrade; refuse with 401/503."""
        endpoint = self._endpoint
        assert endpoint.auth is not None
        peer = self._remote_addr
        outcome = await endpoint.auth.identify(token, Transport.WEBSOCKET.value, peer)
        if self._state != _HANDSHAKE:
            return  # gone, or timed out, while reviewed
        if isinstance(outcome, Refused):
            self._refuse(Refusal(outcome.status, outcome.detail, outcome.headers))
            return
        self.binding = PodBinding(outcome)
        self._open()

    def _refuse(self, refusal: Refusal) -> None:
        assert self._wire is not None
        self._state = _CLOSING
        self._wire.write(render_response(refusal))
        self._wire.close()

    def _open(self) -> None:
        wire, endpoint = self._wire, self._endpoint
        assert wire is not None
        if not endpoint.serving:
            self._refuse(Refusal(503, "shutting down"))
            return
        wire.write(ws.accept_response(self._accept))
        self._state = _OPEN
        endpoint.channels.add(self)
        endpoint.gauge.inc()
        self._start_keepalive()

    # -- frames --------------------------------------------------------------------------------

    def _handle_frames(self) -> None:
        """Every complete event in the reader, in order, until one needs an await; at most
        _EVENTS_PER_TURN, then the rest in a later turn of the loop with reading paused.
        One read can hold thousands of small messages (a client sending as fast as it can):
        handled in one go they held the loop for every other agent (0.67 s for an HTTP
        poll beside such a client under the suite's load; `test_slow_reader_...`)."""
        reader = self._reader
        handled = 0
        while not self._busy and _OPEN <= self._state <= _CLOSING:
            if handled == _EVENTS_PER_TURN:
                self._busy = True
                self._update_reading()
                asyncio.get_running_loop().call_soon(self._next_turn)
                return
            handled += 1
            try:
                event = reader.next_event()
                if event is None:
                    return
                opcode, payload = event
                if opcode == ws.BINARY:
                    if self._state == _OPEN:
                        self._on_message(payload)
                elif opcode == ws.PONG:
                    self._on_pong(payload)
                elif opcode == ws.PING:
                    if self._state == _OPEN:
                        self._write(ws.encode_frame(ws.PONG, payload))
                elif opcode == ws.CLOSE:
                    self._on_close(payload)
                elif self._state == _OPEN:  # text
                    detail = "OpAMP messages are binary; got a text message"
                    self._reject("text_message", ws.UNSUPPORTED_DATA, detail)
            except ws.Failure as failure:
                self._fail(failure)
                return
            except Exception:
                log.exception("handling a WebSocket frame from %s failed", self._remote_addr)
                self.close(ws.INTERNAL_ERROR, "internal error", Reason.CONNECTION_CLOSED)
                return

    def _next_turn(self) -> None:
        self._busy = False
        self._update_reading()
        self._handle_frames()

    def _on_close(self, payload: bytes) -> None:
        ws.parse_close(payload)  # raises for an invalid code or reason
        if self._state == _OPEN:
            # Echo it (section 5.5.1); the server closes the TCP connection first (7.1.1).
            self._state = _CLOSING
            self._end()
            self._write(ws.encode_frame(ws.CLOSE, payload))
            self._arm_close_timer()
        assert self._wire is not None
        self._wire.close()

    def _fail(self, failure: ws.Failure) -> None:
        """The peer broke the protocol: count it as websockets' own closes are, close."""
        reason = FAILURE_REASONS.get(failure.code)
        if reason is not None and self._state == _OPEN:
            if self.close_reason == Reason.CONNECTION_CLOSED:
                self.close_reason = Reason.PROTOCOL_ERROR
            self._endpoint.count_bad_input(
                reason, self._remote_addr, self.header_uid, failure.detail
            )
        if self._state == _OPEN:
            self._send_close(failure.code, failure.detail, close_tcp=True)
        elif self._wire is not None:
            self._wire.close()

    def _send_close(self, code: int, text: str, *, close_tcp: bool) -> None:
        """Send a close frame; wait (close_timeout) for the peer's unless `close_tcp`."""
        self._state = _CLOSING
        self._end()
        self._write(ws.encode_close(code, text))
        self._arm_close_timer()
        if close_tcp and self._wire is not None:
            self._wire.close()  # flushes the close frame first

    def _arm_close_timer(self) -> None:
        if self._close_timer is None:
            timeout = self._endpoint.settings.close_timeout_seconds
            self._close_timer = asyncio.get_running_loop().call_later(timeout, self.abort)

    # -- messages --------------------------------------------------------------------------------

    def _on_message(self, data: bytes) -> None:
        """Handle one OpAMP message; answer it now unless an await must come first."""
        started = time.perf_counter()
        if self._first_timer is not None:
            self._first_timer.cancel()
            self._first_timer = None
        allowed = self.allowed_uids
        message = read_message(data, self.header_uid, allowed)
        if isinstance(message, Rejection):
            self._reject(*message)
            return
        outcome = self._endpoint.rules.apply(self, self, allowed, message)
        if outcome is None or isinstance(outcome, ServerToAgent):  # most: tested first
            if outcome is not None:
                self._write_message(outcome)
            MESSAGES.handled(time.perf_counter() - started)
        elif isinstance(outcome, Opened):
            self._run(self._reply_once_recorded(outcome.reply, started))
        elif isinstance(outcome, AskFullState):
            self._write_message(outcome.request)  # not handled: its full state first
        # else Closed: the rules closed the channel

    async def _reply_once_recorded(self, reply: ServerToAgent | None, started: float) -> None:
        await self._endpoint.ledger.recorded()  # its row first: the reply acknowledges it
        if reply is not None and self._state == _OPEN:
            self._write_message(reply)
        MESSAGES.handled(time.perf_counter() - started)

    def _reject(self, reason: str, code: int, detail: str) -> None:
        self._endpoint.count_bad_input(reason, self._remote_addr, self.header_uid, detail)
        self.close(code, detail, Reason.PROTOCOL_ERROR)

    def _first_message_late(self) -> None:
        self._first_timer = None
        detail = f"no OpAMP message within {self._endpoint.settings.handshake_timeout_seconds:g}s"
        if self._state == _HANDSHAKE:
            self._endpoint.count_bad_input(
                "handshake_timeout", self._remote_addr, self.header_uid, "no WebSocket handshake"
            )
            self.abort()
        elif self._state == _OPEN:
            self._reject("first_message_timeout", ws.POLICY_VIOLATION, detail)

    # -- keepalive (as OpAMPConnection.start_keepalive: see why there) ----------------------------

    def _start_keepalive(self) -> None:
        self.pinged_at = self.heard_at
        self._arm_keepalive()

    def _ping_due(self) -> float:
        interval = self._endpoint.settings.ping_interval_seconds
        return ping_due(self.pinged_at, self.heard_at, self.quiet_seconds, interval)

    def _arm_keepalive(self) -> None:
        loop = asyncio.get_running_loop()
        self._ping_timer = loop.call_at(self._ping_due(), self._keepalive_due)

    def _keepalive_due(self) -> None:
        self._ping_timer = None
        if self._state != _OPEN:
            return
        loop = asyncio.get_running_loop()
        if self._ping_due() > loop.time() + _TIMER_SLACK:
            self._arm_keepalive()  # heard from since the timer was set: not quiet yet
            return
        self._ping_payload = payload = os.urandom(4)
        self._write(ws.encode_frame(ws.PING, payload))
        timeout = self._endpoint.settings.ping_timeout_seconds
        self._pong_timer = loop.call_later(timeout, self._pong_missing)

    def _on_pong(self, payload: bytes) -> None:
        if self._ping_payload is None or payload != self._ping_payload:
            return  # unsolicited, or for an older ping: ignored as websockets does
        self._ping_payload = None
        if self._pong_timer is not None:
            self._pong_timer.cancel()
            self._pong_timer = None
        if self._state == _OPEN:
            self.pinged_at = asyncio.get_running_loop().time()
            self._arm_keepalive()

    def _pong_missing(self) -> None:
        """Close with 1011 as websockets does, then drop the TCP connection."""
        self._pong_timer = None
        if self._state == _OPEN:
            self._send_close(ws.INTERNAL_ERROR, "keepalive ping timeout", close_tcp=True)
        self.abort()

    # -- plumbing ----------------------------------------------------------------------------------

    def _write_message(self, message: ServerToAgent) -> None:
        self._write(ws.encode_frame(ws.BINARY, encode_ws_frame(message.SerializeToString())))

    def _write(self, data: bytes) -> None:
        wire = self._wire
        if wire is not None and not wire.is_closing():
            wire.write(data)

    def _run(self, step: Coroutine[Any, Any, None]) -> None:
        """Run `step` with reading paused; then handle the frames that came meanwhile."""
        self._busy = True
        self._update_reading()
        task = asyncio.get_running_loop().create_task(step)
        task.add_done_callback(self._step_done)

    def _step_done(self, task: asyncio.Task[None]) -> None:
        self._busy = False
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "a WebSocket step for %s failed", self._remote_addr, exc_info=task.exception()
            )
            self.close(ws.INTERNAL_ERROR, "internal error", Reason.CONNECTION_CLOSED)
        self._update_reading()
        self._handle_frames()

    def _update_reading(self) -> None:
        wire = self._wire
        want = not self._busy and not self._write_paused
        if wire is None or want == self._reading or self._state == _CLOSED:
            return
        self._reading = want
        if want:
            wire.resume_reading()
        else:
            wire.pause_reading()

    def _wake_senders(self) -> None:
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    def _end(self) -> None:
        """Tell the fleet once, at the first sign of the end (not after the handshake)."""
        if self._ended:
            return
        self._ended = True
        for timer in (self._ping_timer, self._pong_timer):
            if timer is not None:
                timer.cancel()
        self._ping_timer = self._pong_timer = None
        endpoint = self._endpoint
        if self in endpoint.channels:
            endpoint.channels.discard(self)
            endpoint.gauge.dec()
            endpoint.fleet.channel_closed(self, self.close_reason)
