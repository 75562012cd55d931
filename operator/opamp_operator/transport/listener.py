"""The OpAMP listener: one asyncio server, one port, WebSocket and HTTP on the same path."""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from http import HTTPStatus

from websockets.asyncio.server import Server
from websockets.frames import CloseCode

from opamp_operator import metrics
from opamp_operator.config import ListenerSettings
from opamp_operator.fleet.ledger import NO_LEDGER, SessionLedger
from opamp_operator.fleet.model import Reason, Transport
from opamp_operator.fleet.registry import Fleet
from opamp_operator.reviews import PoolSettings

from .auth import AgentAuth, ReviewToken
from .front import FrontProtocol, Refusal
from .head import RequestHead
from .http import HttpEndpoint
from .httpconn import HttpServer
from .instanceuid import HEADER, BadUidHeader, header_uid
from .ownws import OwnEndpoint
from .rfc6455 import BadUpgrade, check_upgrade
from .websocket import WebSocketEndpoint, protocol_log
from .wschannel import WsChannel

log = logging.getLogger(__name__)


def server_ssl_context(settings: ListenerSettings) -> ssl.SSLContext | None:
    """A TLS server context from the cert/key files (and a client CA: mTLS); None without TLS."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    if settings.tls_client_ca_file is not None:
        context.load_verify_locations(cafile=settings.tls_client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class OpAMPListener:
    """Serves OpAMP agents on `settings.host:settings.port` until `stop`."""

    def __init__(
        self,
        settings: ListenerSettings,
        fleet: Fleet,
        ledger: SessionLedger = NO_LEDGER,
        review: ReviewToken | None = None,
    ) -> None:
        """`review`: the TokenReview for agents' ServiceAccount tokens (see transport/auth)."""
        self.settings = settings
        self._fleet = fleet
        self._auth = _agent_auth(settings, review, fleet.settings.max_agents)
        self._websockets = WebSocketEndpoint(settings, fleet, ledger, self._auth)
        self._own = OwnEndpoint(settings, fleet, ledger, self._auth)  # --websocket-framing own
        self._http = HttpServer(HttpEndpoint(settings, fleet, self._auth, ledger))
        self._pending: set[FrontProtocol] = set()  # connections whose head is not read yet
        self._full = CapacityRefusals(settings.max_connections)
        self._ws_server: Server | None = None
        self._stopping = False
        self.port: int | None = None

    @property
    def ready(self) -> bool:
        """True while accepting connections."""
        server = self._ws_server
        return server is not None and not self._stopping and server.is_serving()

    @property
    def websocket_channels(self) -> tuple[WsChannel, ...]:
        """The open WebSocket channels (each can `send` and `request_close`)."""
        return (*self._websockets.channels, *self._own.channels)

    async def start(self) -> None:
        """Bind and start accepting; `.port` is then the port actually bound."""
        if self._ws_server is not None:
            raise RuntimeError("the OpAMP listener was already started")
        ssl_context = await asyncio.to_thread(server_ssl_context, self.settings)

        tls = ssl_context is not None
        handshake_timeout = self.settings.handshake_timeout_seconds if tls else None
        shutdown_timeout = self.settings.close_timeout_seconds if tls else None

        async def create_server() -> asyncio.Server:
            loop = asyncio.get_running_loop()
            return await loop.create_server(
                self._new_front,
                self.settings.host,
                self.settings.port,
                ssl=ssl_context,
                ssl_handshake_timeout=handshake_timeout,
                ssl_shutdown_timeout=shutdown_timeout,
                reuse_address=True,
            )

        # The websockets Server is the registry its ServerConnections expect (handler,
        # handler tasks, is_serving); awaiting it runs create_server above.
        handler = self._websockets.handle_connection
        self._ws_server = await Server(create_server, handler, protocol_log)
        self.port = int(self._ws_server.sockets[0].getsockname()[1])
        scheme = "wss/https" if ssl_context else "ws/http"
        log.info(
            "OpAMP listener on %s:%d%s (%s, auth %s, WebSocket framing %s)",
            self.settings.host, self.port, self.settings.path, scheme,
            "on" if self._auth.enabled else "off", self.settings.websocket_framing,
        )  # fmt: skip

    async def stop(
        self, reason: str = Reason.OPERATOR_SHUTDOWN, within_seconds: float | None = None
    ) -> None:
        """Stop accepting, close every WebSocket with 1001 and `reason`, wait (bounded by
        `stop_timeout_seconds` and `within_seconds`)."""
        server = self._ws_server
        if server is None or self._stopping:
            return
        self._stopping = True
        timeout = self.settings.stop_timeout_seconds
        if within_seconds is not None:
            timeout = min(timeout, within_seconds)
        # From now, not from when the last close was issued: issuing 10,000 closes took the
        # loop 2 s, and the wait after it ran over its share of the shutdown budget by that.
        deadline = asyncio.get_running_loop().time() + timeout
        server.server.close()  # stop accepting; handshakes under way now get 503
        self._own.serving = False
        for front in list(self._pending):
            front.close()
        channels = self.websocket_channels
        for channel in channels:
            channel.close(CloseCode.GOING_AWAY, reason, reason)
        tasks = [t for t in server.handler_tasks if t is not asyncio.current_task()]
        waits: list[asyncio.Future[object]] = []
        left = max(0.0, deadline - asyncio.get_running_loop().time())
        # Idle keep-alive connections close now, the others after their response.
        waits.append(asyncio.ensure_future(self._http.shutdown(left)))
        if tasks:
            waits.append(asyncio.ensure_future(asyncio.wait(tasks)))
        if self._own.connections:
            waits.append(asyncio.ensure_future(self._own.wait_closed(left)))
        if waits:
            _, late = await asyncio.wait(waits, timeout=left)
            for future in late:
                future.cancel()
        for task in server.handler_tasks:
            if not task.done():
                task.cancel()  # its connection did not close in time
        for connection in list(self._own.connections):
            connection.abort()  # likewise
        log.info("OpAMP listener stopped (%d WebSockets closed: %s)", len(channels), reason)
        self._auth.close()

    # -- routing ---------------------------------------------------------------------------

    def _at_capacity(self) -> bool:
        """As many connections open as the cap allows (this one, routed now, not counted)."""
        cap = self.settings.max_connections
        if cap is None:
            return False
        open_now = len(self._websockets.channels) + len(self._own.channels) + len(self._pending)
        return open_now + len(self._http.connections) >= cap

    def _new_front(self) -> FrontProtocol:
        return FrontProtocol(
            self._route,
            max_head_bytes=self.settings.max_head_bytes,
            head_timeout=self.settings.handshake_timeout_seconds,
            pending=self._pending,
        )

    def _route(
        self, head: RequestHead, peer: str, accepted_at: float
    ) -> asyncio.Protocol | Refusal:
        server = self._ws_server
        assert server is not None
        if self._at_capacity():
            return self._full.refuse(peer)
        if not head.wants_websocket:
            return self._http.new_connection()  # it checks path, method and token
        transport = Transport.WEBSOCKET.value
        if head.path != self.settings.path:
            metrics.bad_input.labels(transport, "not_found").inc()
            return Refusal(HTTPStatus.NOT_FOUND, "not found")
        authorization = [value.encode("latin-1") for value in head.values("authorization")]
        admission = self._auth.admit(authorization)
        if admission is None:
            metrics.auth_failures.labels(transport).inc()
            log.warning("refused an OpAMP WebSocket from %s: missing or wrong bearer token", peer)
            return Refusal(
                HTTPStatus.UNAUTHORIZED,
                "missing or wrong bearer token",
                (("WWW-Authenticate", "Bearer"),),
            )
        try:
            uid = header_uid(head.values(HEADER))
        except BadUidHeader as error:
            metrics.bad_input.labels(transport, error.reason).inc()
            log.warning("refused an OpAMP WebSocket from %s: %s", peer, error)
            return Refusal(HTTPStatus.BAD_REQUEST, str(error))
        if self._stopping:
            return Refusal(HTTPStatus.SERVICE_UNAVAILABLE, "shutting down")
        if self.settings.websocket_framing == "own":
            return self._own_upgrade(head, peer, accepted_at, uid, admission.token)
        connection = self._websockets.new_connection(server, accepted_at, uid)
        connection.pending_token = admission.token  # reviewed before the upgrade
        return connection

    def _own_upgrade(
        self, head: RequestHead, peer: str, accepted_at: float, uid: bytes | None, token: str | None
    ) -> asyncio.Protocol | Refusal:
        """Our framing: the upgrade checked here; a bad one answered and counted as
        websockets' are (`WebSocketEndpoint._count_refused_handshake`)."""
        try:
            accept = check_upgrade(head)
        except BadUpgrade as bad:
            detail = f"upgrade refused with {bad.status}"
            self._own.count_bad_input("bad_handshake", peer, uid, detail)
            return Refusal(bad.status, bad.detail, bad.headers)
        return self._own.new_connection(accept, accepted_at, uid, token)


def _agent_auth(
    settings: ListenerSettings, review: ReviewToken | None, max_agents: int
) -> AgentAuth:
    if not settings.agent_serviceaccount_tokens:
        return AgentAuth(settings.agent_tokens)
    if review is None:
        raise ValueError("ServiceAccount tokens need a TokenReview function")
    # One cached answer per agent (~0.5 KiB each), so HTTP agents polling within the TTL
    # are never reviewed twice; threads and waiting reviews as the REST API's defaults.
    size = max_agents + 1024
    pool = PoolSettings(settings.agent_token_cache_seconds, size, 4, 64, "agent-auth")
    return AgentAuth(
        settings.agent_tokens, review, audience=settings.agent_token_audience, pool=pool
    )


class CapacityRefusals:
    """Connections refused at the cap: 503 with a jittered Retry-After (agents that all
    retry at once would meet a full replica again), counted; one log line a minute."""

    LOG_EVERY_SECONDS = 60.0

    def __init__(self, cap: int | None) -> None:
        self._cap = cap
        self._unlogged = 0
        self._logged_at: float | None = None

    def refuse(self, peer: str) -> Refusal:
        metrics.registrations_rejected.labels(reason="connection_limit").inc()
        self._unlogged += 1
        now = time.monotonic()
        if self._logged_at is None or now - self._logged_at >= self.LOG_EVERY_SECONDS:
            log.warning(
                "refused %d connection(s) (latest from %s): %s agent connections open, the "
                "cap from the open-files limit (ListenerSettings.max_connections)",
                self._unlogged, peer, self._cap,
            )  # fmt: skip
            self._unlogged, self._logged_at = 0, now
        retry = round(random.uniform(20.0, 40.0))
        detail = f"this replica holds its maximum of {self._cap} agent connections; retry later"
        return Refusal(HTTPStatus.SERVICE_UNAVAILABLE, detail, (("Retry-After", str(retry)),))
