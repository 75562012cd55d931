"""OpAMP over WebSocket: one session per connection, binary messages with the OpAMP header.

Relies on these websockets 17 internals (checked against 17.4; re-check on upgrade):
- `ServerConnection(protocol, server, ...)` is an asyncio protocol; its `connection_made`
  schedules `server.handler(connection)` and registers the task in `server.handler_tasks`,
  and `handshake()` consults `server.is_serving()` (503 while shutting down). Our `server`
  is a real `websockets.asyncio.server.Server` wrapping the listener's asyncio server.
- `handle_connection` below mirrors `serve()`'s inner `protocol_handler`: handshake under a
  timeout, abort unless OPEN, `start_keepalive()`, close the connection at the end, and
  discard the task from `server.handler_tasks`.
- `Connection.connection_lost` cancels `keepalive_task` (ours runs only while a ping is out;
  our override also cancels the timer between pings).
- `Connection.close(code, reason)` waits for the closing handshake, at most close_timeout,
  then drops the TCP connection; it never raises ConnectionClosed. Before that it waits for
  the write buffer to drain, without a timeout: `OpAMPConnection.close_within` bounds both.
- What `slim` (transport/slim.py) drops or makes lazy once a connection is OPEN.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any, Final

from websockets.asyncio.server import Server, ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response
from websockets.protocol import OPEN
from websockets.server import ServerProtocol

from opamp_operator import metrics
from opamp_operator.config import ListenerSettings
from opamp_operator.fleet.ledger import NO_LEDGER, SessionLedger
from opamp_operator.fleet.model import Reason, Transport
from opamp_operator.fleet.registry import Fleet
from opamp_operator.opamp.frames import encode_ws_frame
from opamp_operator.opamp.messages import ServerToAgent

from .auth import AgentAuth, PodBinding, Refused
from .cycles import release
from .describe import remote_addr
from .instanceuid import describe
from .keepalive import ping_due, quiet_before_ping
from .slim import slim
from .wsmessage import Rejection, read_message
from .wssession import MESSAGES, AskFullState, Closed, SessionRules, push_buffer_limit

log = logging.getLogger(__name__)
# websockets' own per-connection logs ("connection open" at INFO...), kept apart so that a
# large fleet's churn can be silenced without hiding ours.
protocol_log = logging.getLogger(__name__ + ".protocol")


class _RedactCredentials(logging.Filter):
    """websockets logs every request header at DEBUG ("< %s: %s"): never a credential."""

    HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 2 and str(args[0]).lower() in self.HEADERS:
            record.args = (args[0], "<redacted>")
        return True


protocol_log.addFilter(_RedactCredentials())

_MAX_QUEUE: Final = 4  # unread messages buffered per connection before reading pauses
_CLOSE_REASON_BYTES: Final = 123  # the most a close frame's reason may hold
_TIMER_SLACK: Final = 0.001  # a timer may fire this early: the ping is due then
# Close codes websockets sends itself when a peer breaks the protocol, as metric reasons.
FAILURE_REASONS: Final[Mapping[int, str]] = {
    CloseCode.PROTOCOL_ERROR: "websocket_protocol_error",
    CloseCode.INVALID_DATA: "invalid_utf8",
    CloseCode.MESSAGE_TOO_BIG: "message_too_big",
}


class OpAMPConnection(ServerConnection):
    """A websockets connection that knows when its TCP connection was accepted, and spares
    agents judged by their heartbeats the pings while they heartbeat (`keepalive`)."""

    # Slots, not instance attributes: Python shares one key table among the instances of a
    # class only up to 29 attributes; websockets sets 27, so with ours in the instance dict
    # every connection had a dict of its own (measured: 1.6 KiB instead of 0.4 KiB).
    __slots__ = (
        "_ping_timer",
        "accepted_at",
        "binding",
        "capabilities",
        "header_uid",
        "heard_at",
        "pending_token",
        "pinged_at",
        "quiet_seconds",
    )
    accepted_at: float  # loop time
    header_uid: bytes | None  # what its OpAMP-Instance-UID request header named
    pending_token: str | None  # a ServiceAccount token to review before the upgrade
    binding: PodBinding | None  # the Pod its ServiceAccount token is bound to
    heard_at: float  # loop time of the last OpAMP message
    capabilities: int  # as last stated by the agent (0: not yet)
    # Judged by its heartbeats: ping only after this much quiet (None: every ping_interval).
    quiet_seconds: float | None
    pinged_at: float  # loop time of the last pong (at first: of the accept)
    _ping_timer: asyncio.TimerHandle | None  # when to look again (between pings)

    def __init__(
        self,
        protocol: ServerProtocol,
        server: Server,
        accepted_at: float,
        header_uid: bytes | None,
        **options: Any,
    ) -> None:
        super().__init__(protocol, server, **options)
        self.accepted_at = self.heard_at = self.pinged_at = accepted_at
        self.header_uid = header_uid
        self.pending_token = None
        self.binding = None
        self.capabilities = 0
        self.quiet_seconds = None
        self._ping_timer = None

    def start_keepalive(self) -> None:
        """websockets' keepalive, except for agents judged by their heartbeats: those are
        pinged only once quiet for the heartbeat timeout (`quiet_seconds`, set by the
        endpoint), since their messages prove them alive as pongs do; so heartbeating fleets
        send no pings (at 10,000 agents the pings every 20 s were 500 a second, more than the
        heartbeats, and 15 % of the operator's steady CPU). Agents judged by their connection
        are pinged every `ping_interval` whatever they send, as websockets does: a peer that
        floods and then stops reading must get a ping while its pong can still be seen
        missing (pinged only once quiet, our buffer to it is already full).

        Between pings a timer waits, not a task: a task asleep in every connection (its
        coroutine, the sleep's future) cost ~1 KiB per agent; one runs only for a ping."""
        if self.ping_interval is not None:
            self.pinged_at = self.heard_at
            self._arm_keepalive()

    def _ping_due(self) -> float:
        assert self.ping_interval is not None
        return ping_due(self.pinged_at, self.heard_at, self.quiet_seconds, self.ping_interval)

    def _arm_keepalive(self) -> None:
        self._ping_timer = self.loop.call_at(self._ping_due(), self._keepalive_due)

    def _keepalive_due(self) -> None:
        self._ping_timer = None
        if self._ping_due() > self.loop.time() + _TIMER_SLACK:
            self._arm_keepalive()  # heard from since the timer was set: not quiet yet
            return
        self.keepalive_task = self.loop.create_task(self.keepalive())

    async def keepalive(self) -> None:
        """One ping, then the timer again (`start_keepalive`); cancelled by websockets'
        connection_lost while the ping is out."""
        try:
            try:
                # The ping's write is inside the timeout too: a peer that stopped
                # reading (its receive window full) stalls it.
                async with asyncio.timeout(self.ping_timeout):
                    await (await self.ping())
            except TimeoutError:
                await self._fail_keepalive()
                return
        except ConnectionClosed:
            return
        except Exception:
            self.logger.error("keepalive ping failed", exc_info=True)
            return
        self.pinged_at = self.loop.time()
        self.keepalive_task = None
        self._arm_keepalive()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._ping_timer is not None:
            self._ping_timer.cancel()
            self._ping_timer = None
        super().connection_lost(exc)
        release(self.transport)
        # An agent gone without a closing handshake leaves websockets' parser an EOFError
        # (`protocol.parser_exc`) whose traceback holds the parser's frame, and so the
        # protocol: a cycle per dropped agent that only a full collection would free.
        parser_exc = self.protocol.parser_exc
        if parser_exc is not None:
            parser_exc.__traceback__ = None

    async def close_within(self, code: int, reason: str) -> None:
        """`close`, all of it within close_timeout: websockets' own waits for the write
        buffer to drain first, for ever if the peer reads nothing (a slow consumer)."""
        try:
            async with asyncio.timeout(self.close_timeout or 1.0):
                await self.close(code, reason)
        except TimeoutError:
            self.transport.abort()

    async def _fail_keepalive(self) -> None:
        """Close with 1011 as websockets does; drop the TCP connection if even the close
        frame cannot be written within the close timeout (a peer that reads nothing)."""
        try:
            async with asyncio.timeout(self.close_timeout or 1.0), self.send_context():
                self.protocol.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
        except (TimeoutError, ConnectionClosed):
            pass
        self.transport.abort()


class WebSocketChannel:
    """One agent's WebSocket as the fleet sees it; also sends server-initiated messages."""

    _push_bytes: int = 0  # framed bytes of the pushes in flight (set at the first push)

    def __init__(self, connection: OpAMPConnection, endpoint: WebSocketEndpoint) -> None:
        self.connection = connection
        self._endpoint = endpoint
        self._remote_addr = remote_addr(connection.transport.get_extra_info("peername"))
        self.close_reason: str = Reason.CONNECTION_CLOSED
        self._closing: asyncio.Task[None] | None = None
        # One per server-initiated message in flight; made at the first (an empty set is
        # 216 bytes, and most connections never get one).
        self._pushes: set[asyncio.Task[None]] | None = None
        # The uids its messages may carry when the upgrade named one (OpAMP-Instance-UID):
        # that one, and any the server assigned it since (a duplicate switching uid).
        header = connection.header_uid
        self.allowed_uids: set[bytes] | None = None if header is None else {header}

    @property
    def transport(self) -> Transport:
        return Transport.WEBSOCKET

    @property
    def remote_addr(self) -> str:
        return self._remote_addr

    @property
    def service_account(self) -> str | None:
        binding = self.connection.binding
        return None if binding is None else binding.identity.service_account

    async def send(self, message: ServerToAgent) -> None:
        """Send one ServerToAgent; raises websockets' ConnectionClosed if the socket is gone."""
        await self.connection.send(encode_ws_frame(message.SerializeToString()))

    def offer(self, message: ServerToAgent) -> bool:
        """Send a server-initiated message (e.g. a new remote config) from a task; never blocks.

        False once the connection is closing: the fleet sends it again in the next session.
        A peer that stops reading is closed as a slow consumer once more than
        `push_buffer_limit` bytes wait for it, unsent or unread (as in ownws.OwnChannel):
        each push is a task holding its frame until the peer drains, so without the bound
        a fleet-wide config change would queue every one of them in our memory.
        """
        if self._closing is not None:
            return False
        frame = encode_ws_frame(message.SerializeToString())
        unread = self.connection.transport.get_write_buffer_size() + self._push_bytes
        if unread > self._endpoint.push_buffer_limit:
            detail = f"slow consumer: {unread} bytes unread"
            self._endpoint.reject(self, "slow_consumer", CloseCode.POLICY_VIOLATION, detail)
            return False
        self._push_bytes += len(frame)
        task = asyncio.get_running_loop().create_task(self._push(frame))
        if self._pushes is None:
            self._pushes = set()
        self._pushes.add(task)
        task.add_done_callback(self._pushes.discard)
        return True

    async def _push(self, frame: bytes) -> None:
        try:
            await self.connection.send(frame)
        except ConnectionClosed:
            pass  # the agent reports the old config hash when it reconnects and gets it then
        except Exception:
            log.exception("pushing a message to the agent at %s failed", self._remote_addr)
        finally:
            self._push_bytes -= len(frame)

    def request_close(self, reason: str) -> None:
        """Start the closing handshake with `reason` (1001 when the operator goes, else 1000)."""
        going_away = reason in (Reason.OPERATOR_SHUTDOWN, Reason.OPERATOR_RESTART)
        code = CloseCode.GOING_AWAY if going_away else CloseCode.NORMAL_CLOSURE
        self.close(code, reason, reason)

    def close(self, code: int, text: str, reason: str) -> None:
        """Close with `code` and `text`; `reason` is what the fleet is told. Idempotent."""
        if self._closing is not None:
            return
        self.close_reason = reason
        text = text.encode()[:_CLOSE_REASON_BYTES].decode(errors="ignore")
        self._closing = asyncio.get_running_loop().create_task(
            self.connection.close_within(code, text)
        )
        self._closing.add_done_callback(_log_close_failure)

    async def finish(self) -> None:
        """Close normally unless a close is already under way; wait until the socket is gone."""
        self.close(CloseCode.NORMAL_CLOSURE, "", self.close_reason)
        assert self._closing is not None
        # wait() neither raises the task's error (logged by its callback) nor cancels it.
        await asyncio.wait({self._closing})  # bounded by the connection's close_timeout


def _log_close_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("closing a WebSocket failed: %r", task.exception())


class WebSocketEndpoint:
    """Creates websockets connections for the front protocol and runs their sessions."""

    def __init__(
        self,
        settings: ListenerSettings,
        fleet: Fleet,
        ledger: SessionLedger = NO_LEDGER,
        auth: AgentAuth | None = None,
    ) -> None:
        self._settings = settings
        self._fleet = fleet
        self._ledger = ledger
        self._auth = auth
        self.channels: set[WebSocketChannel] = set()
        self._rules = SessionRules(fleet, quiet_before_ping(fleet.settings, settings))
        self.push_buffer_limit = push_buffer_limit(settings)  # `WebSocketChannel.offer`

    def new_connection(
        self, server: Server, accepted_at: float, header_uid: bytes | None = None
    ) -> OpAMPConnection:
        settings = self._settings
        protocol = ServerProtocol(
            # No permessage-deflate: its zlib state costs ~hundreds of KiB per connection,
            # too much for tens of thousands of agents sending small messages.
            extensions=None,
            max_size=settings.max_message_bytes,
            logger=protocol_log,
        )
        connection = OpAMPConnection(
            protocol,
            server,
            accepted_at,
            header_uid,
            ping_interval=settings.ping_interval_seconds,
            ping_timeout=settings.ping_timeout_seconds,
            close_timeout=settings.close_timeout_seconds,
            max_queue=_MAX_QUEUE,
        )
        return connection

    async def handle_connection(self, connection: ServerConnection) -> None:
        """`Server.handler`: handshake, session, close; never raises."""
        assert isinstance(connection, OpAMPConnection)
        server = connection.server
        deadline = connection.accepted_at + self._settings.handshake_timeout_seconds
        try:
            try:
                async with asyncio.timeout_at(deadline):
                    await connection.handshake(self._review_upgrade, server_header=None)
            except TimeoutError:
                self._count_bad_input("handshake_timeout", connection, "no WebSocket handshake")
                connection.transport.abort()
                return
            if connection.protocol.state is not OPEN:
                self._count_refused_handshake(connection)
                connection.transport.abort()  # refused (response already sent) or gone
                return
            slim(connection)
            server.all_connections.add(connection)
            try:
                await self._run(connection, deadline)
            finally:
                server.all_connections.discard(connection)
        except Exception:
            log.exception("WebSocket connection handler failed")
            connection.transport.abort()
        except asyncio.CancelledError:
            connection.transport.abort()  # stop() gave up waiting for this connection
            raise
        finally:
            task = asyncio.current_task()
            if task is not None:
                server.handler_tasks.discard(task)

    async def _review_upgrade(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        """websockets' process_request: review a ServiceAccount token; refuse with 401/503."""
        assert isinstance(connection, OpAMPConnection)
        token, connection.pending_token = connection.pending_token, None
        if token is None or self._auth is None:
            return None
        peer = remote_addr(connection.transport.get_extra_info("peername"))
        outcome = await self._auth.identify(token, Transport.WEBSOCKET.value, peer)
        if isinstance(outcome, Refused):
            response = connection.respond(outcome.status, outcome.detail + "\n")
            for name, value in outcome.headers:
                response.headers[name] = value
            return response
        connection.binding = PodBinding(outcome)
        return None

    async def _run(self, connection: OpAMPConnection, deadline: float) -> None:
        channel = WebSocketChannel(connection, self)
        self.channels.add(channel)
        gauge = metrics.connections_open.labels(Transport.WEBSOCKET.value)
        gauge.inc()
        connection.start_keepalive()
        try:
            await self._receive(channel, deadline)
        finally:
            # Tell the fleet at once, not after the closing handshake.
            self._fleet.channel_closed(channel, channel.close_reason)
            gauge.dec()
            self.channels.discard(channel)
            await channel.finish()

    async def _receive(self, channel: WebSocketChannel, first_deadline: float) -> None:
        connection = channel.connection
        try:
            try:
                async with asyncio.timeout_at(first_deadline):
                    data = await connection.recv()
            except TimeoutError:
                detail = f"no OpAMP message within {self._settings.handshake_timeout_seconds:g}s"
                self.reject(channel, "first_message_timeout", CloseCode.POLICY_VIOLATION, detail)
                return
            while await self._on_message(channel, data):
                data = b""  # not kept while waiting for the next one (quiet for 30 s)
                # recv() returns at once while messages are queued, so without this a
                # client sending as fast as it can would hold the event loop for every
                # other agent (measured: 1.1 s replies to others behind one such client).
                await asyncio.sleep(0)
                data = await connection.recv()
        except ConnectionClosed as closed:
            self._note_close(channel, closed)

    async def _on_message(self, channel: WebSocketChannel, data: str | bytes) -> bool:
        """Handle one message; False when the connection is being closed."""
        started = time.perf_counter()
        if isinstance(data, str):
            detail = "OpAMP messages are binary; got a text message"
            self.reject(channel, "text_message", CloseCode.UNSUPPORTED_DATA, detail)
            return False
        connection, allowed = channel.connection, channel.allowed_uids
        message = read_message(data, connection.header_uid, allowed)
        if isinstance(message, Rejection):
            self.reject(channel, *message)
            return False
        outcome = self._rules.apply(channel, connection, allowed, message)
        if not (outcome is None or isinstance(outcome, ServerToAgent)):  # most are: not here
            if isinstance(outcome, Closed):
                return False
            if isinstance(outcome, AskFullState):
                await channel.send(outcome.request)  # not handled: its full state first
                return True
            await self._ledger.recorded()  # its row first: the reply acknowledges the session
            outcome = outcome.reply
        if outcome is not None:
            await channel.send(outcome)
        MESSAGES.handled(time.perf_counter() - started)
        return True

    def reject(self, channel: WebSocketChannel, reason: str, code: int, detail: str) -> None:
        self._count_bad_input(reason, channel.connection, detail)
        channel.close(code, detail, Reason.PROTOCOL_ERROR)

    def _note_close(self, channel: WebSocketChannel, closed: ConnectionClosed) -> None:
        """Count protocol violations that websockets itself closed the connection for."""
        sent = closed.sent
        we_failed = sent is not None and (closed.rcvd is None or closed.rcvd_then_sent is False)
        if sent is not None and we_failed and sent.code in FAILURE_REASONS:
            if channel.close_reason == Reason.CONNECTION_CLOSED:
                channel.close_reason = Reason.PROTOCOL_ERROR
            self._count_bad_input(FAILURE_REASONS[sent.code], channel.connection, sent.reason)

    def _count_refused_handshake(self, connection: ServerConnection) -> None:
        response = connection.response
        # 503: refused because we are shutting down, not the peer's fault.
        # 401/503 from the token review: counted as auth failures already.
        if response is not None and response.status_code not in (101, 401, 503):
            detail = f"upgrade refused with {response.status_code}"
            self._count_bad_input("bad_handshake", connection, detail)

    def _count_bad_input(self, reason: str, connection: ServerConnection, detail: str) -> None:
        metrics.bad_input.labels(Transport.WEBSOCKET.value, reason).inc()
        peer = remote_addr(connection.transport.get_extra_info("peername"))
        agent = describe(getattr(connection, "header_uid", None))
        log.warning("closing the OpAMP WebSocket from %s%s: %s (%s)", peer, agent, detail, reason)
