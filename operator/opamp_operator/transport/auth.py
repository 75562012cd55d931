"""Who an agent is: static bearer tokens, and Pod-bound ServiceAccount tokens.

Static tokens (`--agent-tokens-file`) are compared on the request head, before any upgrade.

ServiceAccount tokens (`--agent-serviceaccount-tokens`): an agent in the cluster sends the
projected token the kubelet writes for its Pod (audience `--agent-token-audience`) as
`Authorization: Bearer`. A TokenReview for that audience (`opamp_operator.reviews`, the same
cached and bounded implementation as the REST API's) says which ServiceAccount it belongs to
and which Pod it is bound to (`authentication.kubernetes.io/pod-uid` in the user's extra).
A token that is not accepted, not a ServiceAccount's, or not bound to a Pod gets 401 before
the upgrade (or the body is read).

The token is then bound to that Pod: every message that describes the agent must claim the
same `k8s.pod.uid` (read as the Pod linker reads it). A mismatch, or a description without a
Pod uid, is **refused** (WebSocket close 1008 / HTTP 403 with BAD_REQUEST), not merely
flagged: a Pod's token is its identity, and an agent speaking for another Pod would let one
compromised Pod report, disconnect or take the remote config of another's agent. A message
that describes nothing, for an agent whose description the operator does not hold (after an
operator restart), is not passed on: the agent is asked to report its full state first.
"""

from __future__ import annotations

import hmac
import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Final

from opamp_operator import metrics
from opamp_operator.fleet.attributes import resource_text
from opamp_operator.opamp.generated import opamp_pb2
from opamp_operator.opamp.messages import (
    AgentDescriptionView,
    AgentToServer,
    ServerToAgent,
    server_capabilities,
)
from opamp_operator.reviews import (
    CachedReviews,
    PoolSettings,
    ReviewedUser,
    ReviewUnavailable,
    token_digest,
)

log = logging.getLogger(__name__)

EXTRA_POD_UID: Final = "authentication.kubernetes.io/pod-uid"
EXTRA_POD_NAME: Final = "authentication.kubernetes.io/pod-name"
_SA_PREFIX: Final = "system:serviceaccount:"
_BEARER: Final = (("WWW-Authenticate", "Bearer"),)
_RETRY_SECONDS: Final = 5
_MAX_VERIFIED: Final = 16  # uids one WebSocket may speak for (a duplicate switching uid)
_CAPABILITIES: Final = server_capabilities()

#: The blocking TokenReview for the configured audience (runs on a pool thread).
ReviewToken = Callable[[str], ReviewedUser | None]


@dataclass(frozen=True, slots=True)
class PodIdentity:
    """What a Pod-bound ServiceAccount token proves."""

    username: str  # system:serviceaccount:<namespace>:<name>
    service_account: str  # <namespace>/<name>
    pod_name: str | None
    pod_uid: str

    def describe(self) -> str:
        """For log lines: who, and bound to which Pod."""
        namespace = self.service_account.partition("/")[0]
        return f" as {self.service_account} (Pod {namespace}/{self.pod_name or '?'})"


@dataclass(frozen=True, slots=True)
class Refused:
    """An agent refused for its credentials: the HTTP answer, and the metric reason."""

    status: int
    reason: str
    detail: str

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        if self.status == HTTPStatus.SERVICE_UNAVAILABLE:
            return (("Retry-After", str(_RETRY_SECONDS)),)
        return _BEARER if self.status == HTTPStatus.UNAUTHORIZED else ()


@dataclass(frozen=True, slots=True)
class Admission:
    """The head passed; `token` is a ServiceAccount token still to review (None: done)."""

    token: str | None = None


ADMITTED: Final = Admission()


def pod_identity(user: ReviewedUser | None, audience: str) -> PodIdentity | Refused:
    """The Pod a reviewed token is bound to, or why it cannot authenticate an agent (pure)."""
    if user is None or audience not in user.audiences:
        detail = f"the token was not accepted by Kubernetes for audience {audience!r}"
        return Refused(HTTPStatus.UNAUTHORIZED, "token_rejected", detail)
    if not user.username.startswith(_SA_PREFIX) or user.username.count(":") != 3:
        detail = f"{user.username} is not a ServiceAccount"
        return Refused(HTTPStatus.UNAUTHORIZED, "not_pod_bound", detail)
    pod_uid = _first(user.extra.get(EXTRA_POD_UID))
    if pod_uid is None:
        detail = f"the token of {user.username} is not bound to a Pod (use a projected token)"
        return Refused(HTTPStatus.UNAUTHORIZED, "not_pod_bound", detail)
    namespace, name = user.username.removeprefix(_SA_PREFIX).split(":")
    pod_name = _first(user.extra.get(EXTRA_POD_NAME))
    return PodIdentity(user.username, f"{namespace}/{name}", pod_name, pod_uid)


def binding_refusal(identity: PodIdentity, description: AgentDescriptionView) -> Refused | None:
    """Why `description` does not belong to the Pod of `identity` (None: it does; pure)."""
    claimed = resource_text(description.identifying, description.non_identifying, "k8s.pod.uid")
    if claimed == identity.pod_uid:
        return None
    if claimed is None:
        detail = f"the token is bound to Pod uid {identity.pod_uid}; report k8s.pod.uid"
        return Refused(HTTPStatus.FORBIDDEN, "no_pod_uid", detail)
    detail = f"k8s.pod.uid {claimed} is not the token's Pod ({identity.pod_uid})"
    return Refused(HTTPStatus.FORBIDDEN, "pod_uid_mismatch", detail)


@dataclass(slots=True)
class PodBinding:
    """One connection's (WebSocket) or request's (HTTP) Pod identity and what it verified."""

    identity: PodIdentity
    verified: set[bytes] = field(default_factory=set)

    def check(
        self, message: AgentToServer, known: Callable[[str], AgentDescriptionView | None]
    ) -> Refused | ServerToAgent | None:
        """None: pass `message` on. Refused: refuse it. A ServerToAgent: answer with that
        (ReportFullState) instead, because nothing tells which Pod the agent is in yet.

        `known(agent_id)` is the description the fleet holds for an agent.
        """
        uid = bytes(message.instance_uid)
        if message.HasField("agent_description"):
            description: AgentDescriptionView | None = AgentDescriptionView.from_proto(
                message.agent_description
            )
        elif uid in self.verified or len(uid) != 16:
            return None  # checked on this connection; a bad uid is the fleet's to refuse
        else:
            description = known(str(uuid.UUID(bytes=uid)))
        if description is None:
            return full_state_request(uid)
        refusal = binding_refusal(self.identity, description)
        if refusal is None and len(self.verified) < _MAX_VERIFIED:
            self.verified.add(uid)
        return refusal


def full_state_request(uid: bytes) -> ServerToAgent:
    return ServerToAgent(
        instance_uid=uid,
        capabilities=_CAPABILITIES,
        flags=opamp_pb2.ServerToAgentFlags_ReportFullState,
    )


class AgentAuth:
    """Static bearer tokens and (with `review`) Pod-bound ServiceAccount tokens.

    Open when neither is configured. Call `close()` after the listener stopped.
    """

    def __init__(
        self,
        tokens: Iterable[str],
        review: ReviewToken | None = None,
        *,
        audience: str = "opamp-operator",
        pool: PoolSettings | None = None,
    ) -> None:
        self._tokens = tuple(token.encode("utf-8") for token in tokens)
        self._review = review
        self.audience = audience
        self._reviews: CachedReviews[bytes, PodIdentity | Refused] | None = None
        if review is not None:
            pool = pool or PoolSettings(60.0, 4096, 4, 64, "agent-auth")
            self._reviews = CachedReviews(pool, on_lookup=_count_lookup)

    @property
    def enabled(self) -> bool:
        return bool(self._tokens) or self._review is not None

    def allows(self, authorization: list[bytes]) -> bool:
        """The head passes (a static token matched, a ServiceAccount token is to be reviewed)."""
        return self.admit(authorization) is not None

    def admit(self, authorization: list[bytes]) -> Admission | None:
        """Check the head: None refuses (401); an `Admission` with a token needs `identify`.

        `authorization`: the raw bytes of every Authorization header sent (one is valid).
        """
        if not self.enabled:
            return ADMITTED
        if len(authorization) != 1:
            return None
        scheme, _, credentials = authorization[0].strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return None
        presented = credentials.strip()
        if self._matches_static(presented):
            return ADMITTED
        if self._review is None or not presented:
            return None
        return Admission(presented.decode("latin-1"))

    async def identify(self, token: str, transport: str, peer: str) -> PodIdentity | Refused:
        """Review a ServiceAccount token (cached); refusals are logged and counted here."""
        assert self._reviews is not None and self._review is not None
        review = self._review
        try:
            key = token_digest(token)
            outcome = await self._reviews.get(key, lambda: self._blocking(review, token))
        except ReviewUnavailable as error:
            metrics.agent_token_reviews.labels(outcome="unavailable").inc()
            detail = f"cannot check the token now: {error}"
            outcome = Refused(HTTPStatus.SERVICE_UNAVAILABLE, "review_unavailable", detail)
        if isinstance(outcome, Refused):
            note_refusal(outcome, transport, peer)
        return outcome

    def close(self) -> None:
        if self._reviews is not None:
            self._reviews.close()

    def _matches_static(self, presented: bytes) -> bool:
        # Compare with every token, never stopping early, so timing tells nothing about
        # which token (or how much of one) matched.
        matched = False
        for token in self._tokens:
            matched |= hmac.compare_digest(presented, token)
        return matched

    def _blocking(self, review: ReviewToken, token: str) -> PodIdentity | Refused:
        """On a pool thread. Errors raise (not cached); rejections are cached answers."""
        try:
            user = review(token)
        except Exception as error:
            metrics.agent_token_reviews.labels(outcome="error").inc()
            log.error("agent TokenReview failed: %s: %s", type(error).__name__, _short(error))
            raise ReviewUnavailable(f"TokenReview failed: {type(error).__name__}") from error
        outcome = pod_identity(user, self.audience)
        kind = "authenticated" if isinstance(outcome, PodIdentity) else "rejected"
        metrics.agent_token_reviews.labels(outcome=kind).inc()
        return outcome


def note_refusal(refusal: Refused, transport: str, peer: str, agent: str = "") -> None:
    """One log line and the counts for an agent refused for its credentials."""
    metrics.auth_failures.labels(transport).inc()
    metrics.agent_credential_refusals.labels(transport, refusal.reason).inc()
    log.warning(
        "refused an OpAMP agent (%s) from %s%s: %s (%s)",
        transport, peer, agent, refusal.detail, refusal.reason,
    )  # fmt: skip


def _count_lookup(result: str) -> None:
    if result == "hit":
        metrics.agent_token_reviews.labels(outcome="cached").inc()


def _first(values: Iterable[str] | None) -> str | None:
    for value in values or ():
        if value:
            return value
    return None


def _short(error: Exception) -> str:
    text = str(error).replace("\n", " ")
    return text if len(text) <= 300 else text[:300] + "..."


#: The name before this module grew ServiceAccount tokens.
BearerAuth = AgentAuth
