"""OpAMP over plain HTTP: each POST carries one AgentToServer, its response one ServerToAgent.

Served by aiohttp's low-level server (`aiohttp.web.Server`): the front protocol hands it
the connection, and it keeps the connection for any later keep-alive requests, so every
check (path, method, token) runs here per request. What aiohttp's HTTP parser refuses
(conflicting or broken body framing, a bad request line or header, an oversized head on a
keep-alive request) is answered here too, as other bad input: 400, one log line, a count.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final

from aiohttp import HttpVersion11, hdrs, web
from aiohttp.http_exceptions import (
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
)
from aiohttp.web_request import BaseRequest

from opamp_operator import metrics
from opamp_operator.config import ListenerSettings
from opamp_operator.fleet.ledger import NO_LEDGER, SessionLedger
from opamp_operator.fleet.model import Transport
from opamp_operator.fleet.registry import Fleet
from opamp_operator.opamp.errors import MalformedMessage
from opamp_operator.opamp.generated import opamp_pb2
from opamp_operator.opamp.messages import (
    AgentToServer,
    ServerToAgent,
    error_response,
    parse_agent_to_server,
)

from .auth import Admission, AgentAuth, PodBinding, PodIdentity, Refused, note_refusal
from .body import (
    BadGzip,
    BodyTooLarge,
    accepts_gzip,
    gunzip_capped,
    gzip_compress,
    read_capped,
    salvage_instance_uid,
)
from .describe import message_kind, remote_addr
from .instanceuid import HEADER, MISMATCH, BadUidHeader, describe, header_uid, mismatch_detail

log = logging.getLogger(__name__)

CONTENT_TYPE: Final = "application/x-protobuf"
_LINGER_SECONDS: Final = 2.0  # how long aiohttp drains an unread body after an early answer
_HTTP: Final = Transport.HTTP.value
_MESSAGES: Final = metrics.MessageMetrics(_HTTP)
_IN_FLIGHT: Final = metrics.connections_open.labels(_HTTP)  # a look-up per request was 2 %
# Replies shorter than this go out uncompressed whatever the agent accepts: a heartbeat's
# reply is ~20 bytes, which gzip makes longer (18 bytes of header and trailer), and below
# one packet compression saves nothing on the wire. Compressing them took 5 % of the
# operator's CPU at 10,000 HTTP agents (docs/benchmarks.md). Go's gziphandler uses 1,400.
_GZIP_MIN_BYTES: Final = 1024


@dataclass(frozen=True, eq=False, slots=True)
class HttpChannel:
    """One HTTP request as the fleet sees it; there is no connection to close."""

    remote_addr: str
    service_account: str | None = None  # the ServiceAccount token's, when it sent one

    @property
    def transport(self) -> Transport:
        return Transport.HTTP

    def request_close(self, reason: str) -> None:
        """Nothing to close: the fleet tells HTTP agents in its next reply instead."""


class HttpEndpoint:
    def __init__(
        self,
        settings: ListenerSettings,
        fleet: Fleet,
        auth: AgentAuth,
        ledger: SessionLedger = NO_LEDGER,
    ) -> None:
        self._settings = settings
        self._fleet = fleet
        self._ledger = ledger
        self._auth = auth
        self.server: web.Server | None = None

    def create_server(self) -> web.Server:
        """The aiohttp server the connections belong to (needs a loop); see `new_connection`."""
        self.server = web.Server(self.handle)
        return self.server

    def new_connection(self) -> web.RequestHandler:
        """The protocol that takes over one connection (what `web.Server()` would make)."""
        assert self.server is not None
        settings = self._settings
        return _RequestHandler(
            self.server,
            loop=asyncio.get_running_loop(),
            auto_decompress=False,  # we gunzip ourselves, with a cap on the inflated size
            access_log=None,  # type: ignore[arg-type]  # None turns access logging off
            keepalive_timeout=settings.http_keepalive_seconds,
            lingering_time=_LINGER_SECONDS,
            # Keep-alive requests skip the front protocol: the same bound on their heads.
            max_line_size=settings.max_head_bytes,
            max_field_size=settings.max_head_bytes,
        )

    async def handle(self, request: BaseRequest) -> web.StreamResponse:
        """aiohttp's request handler: answer one POST; never raises."""
        _IN_FLIGHT.inc()
        try:
            return await self._handle(request)
        except Exception:
            log.exception("OpAMP HTTP request from %s failed", _peer(request))
            return _plain(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error")
        finally:
            _IN_FLIGHT.dec()

    async def _handle(self, request: BaseRequest) -> web.StreamResponse:
        admitted = self._check_head(request)
        if not isinstance(admitted, Admission):
            return admitted
        identity: PodIdentity | None = None
        if admitted.token is not None:
            outcome = await self._auth.identify(admitted.token, _HTTP, _peer(request))
            if isinstance(outcome, Refused):
                return _refused(outcome)
            identity = outcome
        settings = self._settings
        try:
            async with asyncio.timeout(settings.handshake_timeout_seconds):
                await _continue_if_expected(request)
                raw = await read_capped(request.content, settings.max_message_bytes)
        except TimeoutError:
            detail = f"body not received within {settings.handshake_timeout_seconds:g}s"
            return self._bad(request, "body_timeout", HTTPStatus.REQUEST_TIMEOUT, detail)
        except BodyTooLarge as error:
            return self._bad(request, "too_large", HTTPStatus.REQUEST_ENTITY_TOO_LARGE, str(error))
        started = time.perf_counter()
        data = raw
        if _content_encoding(request) == "gzip":
            try:
                data = gunzip_capped(raw, settings.max_message_bytes)
            except BodyTooLarge as error:
                status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
                return self._bad(request, "too_large", status, str(error))
            except BadGzip as error:
                return self._bad(request, "bad_gzip", HTTPStatus.BAD_REQUEST, str(error))
        try:
            message = parse_agent_to_server(data)
        except MalformedMessage:
            return self._malformed(request, data)
        refusal = self._check_uid_header(request, message) or self._check_binding(
            request, identity, message
        )
        if refusal is not None:
            return refusal
        account = None if identity is None else identity.service_account
        opened = self._fleet.sessions_opened
        reply = self._fleet.handle_message(HttpChannel(_peer(request), account), message)
        _MESSAGES.received(message_kind(message))
        if self._fleet.sessions_opened != opened:
            await self._ledger.recorded()  # its row first: the reply acknowledges the session
        response = self._reply(request, message, reply)
        _MESSAGES.handled(time.perf_counter() - started)
        return response

    def _check_head(self, request: BaseRequest) -> web.StreamResponse | Admission:
        """Everything that can be refused before reading the body."""
        if request.path != self._settings.path:
            return self._bad(request, "not_found", HTTPStatus.NOT_FOUND, "not found")
        if request.method != hdrs.METH_POST:
            response = self._bad(
                request, "method_not_allowed", HTTPStatus.METHOD_NOT_ALLOWED, "use POST"
            )
            response.headers[hdrs.ALLOW] = hdrs.METH_POST
            return response
        authorization = [v for k, v in request.raw_headers if k.lower() == b"authorization"]
        admitted = self._auth.admit(authorization)
        if admitted is None:
            metrics.auth_failures.labels(_HTTP).inc()
            log.warning("refused an OpAMP HTTP request from %s: bad token", _peer(request))
            response = _plain(HTTPStatus.UNAUTHORIZED, "missing or wrong bearer token")
            response.headers[hdrs.WWW_AUTHENTICATE] = "Bearer"
            return response
        if request.content_type != CONTENT_TYPE:
            detail = f"Content-Type must be {CONTENT_TYPE}"
            return self._bad(request, "bad_content_type", HTTPStatus.UNSUPPORTED_MEDIA_TYPE, detail)
        if _content_encoding(request) not in ("identity", "gzip"):
            detail = "Content-Encoding must be gzip or absent"
            return self._bad(request, "bad_encoding", HTTPStatus.UNSUPPORTED_MEDIA_TYPE, detail)
        length = request.content_length
        if length is not None and length > self._settings.max_message_bytes:
            detail = f"body exceeds {self._settings.max_message_bytes} bytes"
            return self._bad(request, "too_large", HTTPStatus.REQUEST_ENTITY_TOO_LARGE, detail)
        return admitted

    def _check_binding(
        self, request: BaseRequest, identity: PodIdentity | None, message: AgentToServer
    ) -> web.StreamResponse | None:
        """Refuse a message for another Pod's agent (403); ask for the full state if unsure."""
        if identity is None:
            return None
        checked = PodBinding(identity).check(message, self._fleet.description)
        if checked is None:
            return None
        if not isinstance(checked, Refused):
            return self._reply(request, message, checked)
        note_refusal(checked, _HTTP, _peer(request), identity.describe())
        uid = bytes(message.instance_uid)
        body = error_response(uid, opamp_pb2.ServerErrorResponseType_BadRequest, checked.detail)
        return web.Response(
            status=checked.status, body=body.SerializeToString(), content_type=CONTENT_TYPE
        )

    def _check_uid_header(
        self, request: BaseRequest, message: AgentToServer
    ) -> web.StreamResponse | None:
        """Refuse a request whose OpAMP-Instance-UID header is bad or names another agent."""
        uid = bytes(message.instance_uid)
        try:
            header = header_uid(request.headers.getall(HEADER, []))
        except BadUidHeader as error:
            return self._bad_request(request, error.reason, str(error), uid)
        if header is None or header == uid:
            return None
        return self._bad_request(request, MISMATCH, mismatch_detail(header, uid), uid)

    def _bad_request(
        self, request: BaseRequest, reason: str, detail: str, uid: bytes
    ) -> web.StreamResponse:
        """400 with a BAD_REQUEST ServerErrorResponse, as for a malformed message."""
        metrics.bad_input.labels(_HTTP, reason).inc()
        log.warning("refused an OpAMP HTTP request from %s: %s", _peer(request), detail)
        body = error_response(uid, opamp_pb2.ServerErrorResponseType_BadRequest, detail)
        return web.Response(
            status=HTTPStatus.BAD_REQUEST, body=body.SerializeToString(), content_type=CONTENT_TYPE
        )

    def _malformed(self, request: BaseRequest, data: bytes) -> web.StreamResponse:
        metrics.bad_input.labels(_HTTP, "malformed_message").inc()
        log.warning("refused an OpAMP HTTP request from %s: malformed message", _peer(request))
        uid = salvage_instance_uid(data)
        if uid is None:
            return _plain(HTTPStatus.BAD_REQUEST, "AgentToServer does not decode")
        body = error_response(
            uid, opamp_pb2.ServerErrorResponseType_BadRequest, "AgentToServer does not decode"
        ).SerializeToString()
        return web.Response(status=HTTPStatus.BAD_REQUEST, body=body, content_type=CONTENT_TYPE)

    def _reply(
        self, request: BaseRequest, message: AgentToServer, reply: ServerToAgent | None
    ) -> web.Response:
        if reply is None:  # after an AgentDisconnect: HTTP still needs a body
            reply = ServerToAgent(instance_uid=message.instance_uid)
        body = reply.SerializeToString()
        response = web.Response(body=body, content_type=CONTENT_TYPE)
        if len(body) >= _GZIP_MIN_BYTES and accepts_gzip(request.headers.get(hdrs.ACCEPT_ENCODING)):
            response.body = gzip_compress(body)
            response.headers[hdrs.CONTENT_ENCODING] = "gzip"
        return response

    def _bad(
        self, request: BaseRequest, reason: str, status: HTTPStatus, detail: str
    ) -> web.Response:
        metrics.bad_input.labels(_HTTP, reason).inc()
        agent = describe(_claimed_uid(request))
        log.warning("refused an OpAMP HTTP request from %s%s: %s", _peer(request), agent, detail)
        response = _plain(status, detail)
        if status >= HTTPStatus.REQUEST_TIMEOUT:
            response.force_close()  # the body may be unread or half-sent: do not reuse
        return response


class _RequestHandler(web.RequestHandler):
    """aiohttp's connection protocol, with what its parser refuses answered as bad input.

    aiohttp would log those at ERROR with a traceback (`Error handling request`) and count
    nothing: a client can fill the log at will.
    """

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        reason = _parser_reason(exc)
        detail = " ".join(str(exc.message).split())[:200] or "malformed request"
        metrics.bad_input.labels(_HTTP, reason).inc()
        log.warning(
            "refused an HTTP request from %s: %s (%s)", _peer(request), detail, reason,
            exc_info=exc if log.isEnabledFor(logging.DEBUG) else None,
        )  # fmt: skip
        response = _plain(HTTPStatus.BAD_REQUEST, detail)
        response.force_close()  # the parser lost its place in the stream
        return response


def _parser_reason(error: HttpProcessingError) -> str:
    """The `opamp_bad_input_total` reason, named as the front protocol names the same faults."""
    if isinstance(error, LineTooLong):
        return "head_too_large"
    if isinstance(error, BadStatusLine | InvalidURLError):
        return "bad_request_line"
    if isinstance(error, InvalidHeader):
        return "bad_header"
    return "bad_request"  # body framing: Content-Length with chunked, bad length or chunk size


async def _continue_if_expected(request: BaseRequest) -> None:
    """Answer `Expect: 100-continue` (curl sends it for larger bodies) once the head passed.

    aiohttp's low-level server leaves this to the handler; as in its default expect handler
    (web_urldispatcher), the interim response is written straight to the stream.
    """
    expect = request.headers.get(hdrs.EXPECT, "")
    if request.version == HttpVersion11 and expect.lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the interim response is not part of the body


def _claimed_uid(request: BaseRequest) -> bytes | None:
    """The uid the OpAMP-Instance-UID header names, for log lines (None if absent or bad)."""
    try:
        return header_uid(request.headers.getall(HEADER, []))
    except BadUidHeader:
        return None


def _refused(refusal: Refused) -> web.Response:
    response = _plain(HTTPStatus(refusal.status), refusal.detail)
    for name, value in refusal.headers:
        response.headers[name] = value
    return response


def _plain(status: HTTPStatus, detail: str) -> web.Response:
    return web.Response(status=status, text=detail + "\n")


def _content_encoding(request: BaseRequest) -> str:
    return request.headers.get(hdrs.CONTENT_ENCODING, "identity").strip().lower() or "identity"


def _peer(request: BaseRequest) -> str:
    transport = request.transport
    return remote_addr(transport.get_extra_info("peername") if transport else None)
