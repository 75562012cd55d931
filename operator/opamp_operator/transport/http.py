"""OpAMP over plain HTTP: what each POST is answered with (one AgentToServer in, one
ServerToAgent out).

The endpoint decides; `httpconn.HttpConnection` carries the bytes (one per keep-alive
connection, handed over by the front protocol). A request is checked in two steps: its head
(path, method, token, content type and encoding) before the body is read or `100 Continue`
sent, then the body (gzip, protobuf, the OpAMP-Instance-UID header, the Pod binding) before
the fleet sees it. Every refusal is bad input: a status, one log line, a count.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final

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

from .auth import ADMITTED, Admission, AgentAuth, PodBinding, PodIdentity, Refused, note_refusal
from .body import (
    BadGzip,
    BodyTooLarge,
    accepts_gzip,
    gunzip_capped,
    gzip_compress,
    salvage_instance_uid,
)
from .describe import message_kind
from .head import RequestHead
from .instanceuid import HEADER, MISMATCH, BadUidHeader, describe, header_uid, mismatch_detail

log = logging.getLogger(__name__)

CONTENT_TYPE: Final = "application/x-protobuf"
TEXT: Final = "text/plain; charset=utf-8"
_HTTP: Final = Transport.HTTP.value
MESSAGES: Final = metrics.MessageMetrics(_HTTP)
# Replies shorter than this go out uncompressed whatever the agent accepts: a heartbeat's
# reply is ~20 bytes, which gzip makes longer (18 bytes of header and trailer), and below
# one packet compression saves nothing on the wire. Compressing them took 5 % of the
# operator's CPU at 10,000 HTTP agents (docs/benchmarks.md). Go's gziphandler uses 1,400.
_GZIP_MIN_BYTES: Final = 1024


@dataclass(frozen=True, slots=True)
class Reply:
    """One response. `close`: end the connection after it (the stream may be unread).
    `recorded_first`: the message opened a session, so the session's row comes first
    (`ledger.recorded()`): the reply acknowledges it."""

    status: int
    body: bytes
    content_type: str = CONTENT_TYPE
    headers: tuple[tuple[str, str], ...] = ()
    close: bool = False
    recorded_first: bool = False


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
    """The OpAMP HTTP endpoint's rules, shared by every connection."""

    def __init__(
        self,
        settings: ListenerSettings,
        fleet: Fleet,
        auth: AgentAuth,
        ledger: SessionLedger = NO_LEDGER,
    ) -> None:
        self.settings = settings
        self.fleet = fleet
        self.ledger = ledger
        self.auth = auth

    # -- the head ----------------------------------------------------------------------------

    def check_head(self, head: RequestHead, peer: str) -> Reply | Admission:
        """Everything that can be refused before reading the body."""
        if head.path != self.settings.path:
            return self.bad(peer, "not_found", HTTPStatus.NOT_FOUND, "not found", head)
        if head.method != "POST":
            refusal = self.bad(peer, "method_not_allowed", HTTPStatus.METHOD_NOT_ALLOWED,
                               "use POST", head)  # fmt: skip
            return _with_headers(refusal, ("Allow", "POST"))
        admitted = self._admit(head, peer)
        if not isinstance(admitted, Admission):
            return admitted
        content_type = (head.get("content-type") or "").split(";", 1)[0].strip().lower()
        if content_type != CONTENT_TYPE:
            detail = f"Content-Type must be {CONTENT_TYPE}"
            return self.bad(peer, "bad_content_type", HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                            detail, head)  # fmt: skip
        if content_encoding(head) not in ("identity", "gzip"):
            detail = "Content-Encoding must be gzip or absent"
            return self.bad(peer, "bad_encoding", HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                            detail, head)  # fmt: skip
        return admitted

    def _admit(self, head: RequestHead, peer: str) -> Reply | Admission:
        auth = self.auth
        if not auth.enabled:
            return ADMITTED
        admitted = auth.admit([value.encode("latin-1") for value in head.values("authorization")])
        if admitted is not None:
            return admitted
        metrics.auth_failures.labels(_HTTP).inc()
        log.warning("refused an OpAMP HTTP request from %s: bad token", peer)
        return Reply(HTTPStatus.UNAUTHORIZED, b"missing or wrong bearer token\n", TEXT,
                     (("WWW-Authenticate", "Bearer"),), close=True)  # fmt: skip

    async def identify(self, token: str, peer: str) -> PodIdentity | Reply:
        """Review a ServiceAccount token (cached); a refusal is answered and closes."""
        outcome = await self.auth.identify(token, _HTTP, peer)
        if isinstance(outcome, Refused):
            body = (outcome.detail + "\n").encode()
            return Reply(outcome.status, body, TEXT, outcome.headers, close=True)
        return outcome

    # -- the body ----------------------------------------------------------------------------

    def answer(
        self, head: RequestHead, body: bytes, peer: str, identity: PodIdentity | None
    ) -> Reply:
        """The fleet's reply to the message in `body`, or the refusal of it."""
        message = self._decode(head, body, peer)
        if not isinstance(message, AgentToServer):
            return message
        refusal = self._check_uid_header(head, message, peer) or self._check_binding(
            head, identity, message, peer
        )
        if refusal is not None:
            return refusal
        fleet = self.fleet
        account = None if identity is None else identity.service_account
        opened = fleet.sessions_opened
        reply = fleet.handle_message(HttpChannel(peer, account), message)
        MESSAGES.received(message_kind(message))
        return self._reply(head, message, reply, fleet.sessions_opened != opened)

    def _decode(self, head: RequestHead, body: bytes, peer: str) -> AgentToServer | Reply:
        limit = self.settings.max_message_bytes
        data = body
        if content_encoding(head) == "gzip":
            try:
                data = gunzip_capped(body, limit)
            except BodyTooLarge as error:
                return self.bad(peer, "too_large", HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                str(error), head)  # fmt: skip
            except BadGzip as error:
                return self.bad(peer, "bad_gzip", HTTPStatus.BAD_REQUEST, str(error), head)
        try:
            return parse_agent_to_server(data)
        except MalformedMessage:
            return self._malformed(data, peer)

    def _check_binding(
        self,
        head: RequestHead,
        identity: PodIdentity | None,
        message: AgentToServer,
        peer: str,
    ) -> Reply | None:
        """Refuse a message for another Pod's agent (403); ask for the full state if unsure."""
        if identity is None:
            return None
        checked = PodBinding(identity).check(message, self.fleet.description)
        if checked is None:
            return None
        if not isinstance(checked, Refused):
            return self._reply(head, message, checked)
        note_refusal(checked, _HTTP, peer, identity.describe())
        return _error_reply(checked.status, bytes(message.instance_uid), checked.detail)

    def _check_uid_header(
        self, head: RequestHead, message: AgentToServer, peer: str
    ) -> Reply | None:
        """Refuse a request whose OpAMP-Instance-UID header is bad or names another agent."""
        uid = bytes(message.instance_uid)
        values = head.values(HEADER)
        if not values:
            return None
        try:
            claimed = header_uid(values)
        except BadUidHeader as error:
            return self._bad_request(peer, error.reason, str(error), uid)
        if claimed == uid:
            return None
        assert claimed is not None
        return self._bad_request(peer, MISMATCH, mismatch_detail(claimed, uid), uid)

    def _bad_request(self, peer: str, reason: str, detail: str, uid: bytes) -> Reply:
        """400 with a BAD_REQUEST ServerErrorResponse, as for a malformed message."""
        metrics.bad_input.labels(_HTTP, reason).inc()
        log.warning("refused an OpAMP HTTP request from %s: %s", peer, detail)
        return _error_reply(HTTPStatus.BAD_REQUEST, uid, detail)

    def _malformed(self, data: bytes, peer: str) -> Reply:
        metrics.bad_input.labels(_HTTP, "malformed_message").inc()
        log.warning("refused an OpAMP HTTP request from %s: malformed message", peer)
        uid = salvage_instance_uid(data)
        detail = "AgentToServer does not decode"
        if uid is None:
            return Reply(HTTPStatus.BAD_REQUEST, (detail + "\n").encode(), TEXT)
        return _error_reply(HTTPStatus.BAD_REQUEST, uid, detail)

    def _reply(
        self,
        head: RequestHead,
        message: AgentToServer,
        reply: ServerToAgent | None,
        recorded_first: bool = False,
    ) -> Reply:
        if reply is None:  # after an AgentDisconnect: HTTP still needs a body
            reply = ServerToAgent(instance_uid=message.instance_uid)
        body = reply.SerializeToString()
        if len(body) >= _GZIP_MIN_BYTES and accepts_gzip(", ".join(head.values("accept-encoding"))):
            gzipped = (("Content-Encoding", "gzip"),)
            return Reply(200, gzip_compress(body), headers=gzipped, recorded_first=recorded_first)
        return Reply(200, body, recorded_first=recorded_first)

    # -- refusals ----------------------------------------------------------------------------

    def bad(
        self,
        peer: str,
        reason: str,
        status: int,
        detail: str,
        head: RequestHead | None = None,
    ) -> Reply:
        """A plain-text refusal, counted and logged (with the agent the head names)."""
        metrics.bad_input.labels(_HTTP, reason).inc()
        agent = describe(_claimed_uid(head)) if head is not None else ""
        log.warning("refused an OpAMP HTTP request from %s%s: %s", peer, agent, detail)
        # From 408 on, the body may be unread or half-sent: the connection is not reused.
        close = status >= HTTPStatus.REQUEST_TIMEOUT
        return Reply(status, (detail + "\n").encode(), TEXT, close=close)


def content_encoding(head: RequestHead) -> str:
    """The body's coding, lowercased ("identity" without one); repeats joined, so refused."""
    value = ", ".join(head.values("content-encoding"))
    return value.strip().lower() or "identity"


def _with_headers(reply: Reply, *headers: tuple[str, str]) -> Reply:
    return Reply(reply.status, reply.body, reply.content_type, (*reply.headers, *headers),
                 reply.close)  # fmt: skip


def _error_reply(status: int, uid: bytes, detail: str) -> Reply:
    body = error_response(uid, opamp_pb2.ServerErrorResponseType_BadRequest, detail)
    return Reply(status, body.SerializeToString())


def _claimed_uid(head: RequestHead) -> bytes | None:
    """The uid the OpAMP-Instance-UID header names, for log lines (None if absent or bad)."""
    try:
        return header_uid(head.values(HEADER))
    except BadUidHeader:
        return None
