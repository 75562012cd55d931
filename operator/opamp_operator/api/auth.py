"""Who may call the REST API: Kubernetes decides.

A caller sends `Authorization: Bearer <token>` (a ServiceAccount token, or any token the
cluster's authenticators accept). A TokenReview says who that is; a SubjectAccessReview says
whether they may `get`/`list` (reads) or `update` (reconnect) `opampagents.opamp.dev` in the
operator's namespace, so access is granted with ordinary RBAC Roles.

Reviews run through `opamp_operator.reviews` (the one TokenReview implementation, shared
with the OpAMP listener's ServiceAccount tokens): on a bounded thread pool, cached for
`auth_cache_seconds` per (token, verb), shared while in flight, and refused with 503 +
Retry-After beyond `auth_max_pending` waiting reviews.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from kubernetes import client as k8s

from opamp_operator import metrics
from opamp_operator.config import ApiSettings
from opamp_operator.reviews import (
    CachedReviews,
    PoolSettings,
    ReviewUnavailable,
    TtlCache,
    token_digest,
    token_review,
)

log = logging.getLogger(__name__)

GROUP = "opamp.dev"
RESOURCE = "opampagents"


@dataclass(frozen=True, slots=True)
class AuthDecision:
    """The answer for one token and verb: 200 allowed, 401 unknown caller, 403 denied."""

    status: int
    user: str | None
    reason: str

    @property
    def allowed(self) -> bool:
        return self.status == 200


#: Kubernetes could not be asked (unreachable, refused us, or too many reviews waiting).
AuthUnavailable = ReviewUnavailable
#: The decision cache: (token digest, verb) -> decision.
DecisionCache = TtlCache[tuple[bytes, str], AuthDecision]


class Authorizer(Protocol):
    async def authorize(self, token: str, verb: str) -> AuthDecision:
        """May the bearer of `token` `verb` opampagents? Raises AuthUnavailable if unknowable."""
        ...


class KubeAuthorizer:
    """`Authorizer` backed by TokenReview + SubjectAccessReview on the Kubernetes API.

    `api_client` must be allowed to create tokenreviews and subjectaccessreviews (the
    `system:auth-delegator` ClusterRole grants both). Call `close()` after the server stops.
    """

    def __init__(
        self,
        api_client: k8s.ApiClient,
        namespace: str,
        settings: ApiSettings,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.namespace = namespace
        self._authn = k8s.AuthenticationV1Api(api_client)
        self._authz = k8s.AuthorizationV1Api(api_client)
        self._timeout = settings.auth_timeout_seconds
        pool = PoolSettings(
            settings.auth_cache_seconds, settings.auth_cache_size, settings.auth_workers,
            settings.auth_max_pending, "api-auth",
        )  # fmt: skip
        self._reviews: CachedReviews[tuple[bytes, str], AuthDecision] = CachedReviews(
            pool, monotonic, lambda result: metrics.api_auth_cache.labels(result=result).inc()
        )

    async def authorize(self, token: str, verb: str) -> AuthDecision:
        key = (token_digest(token), verb)
        try:
            return await self._reviews.get(key, lambda: self._review_blocking(token, verb))
        except ReviewUnavailable:
            metrics.api_auth_reviews.labels(kind="any", outcome="backlog_full").inc()
            raise

    def close(self) -> None:
        self._reviews.close()

    def _review_blocking(self, token: str, verb: str) -> AuthDecision:
        """Runs on a pool thread: the client's calls block."""
        try:
            user = self._token_review(token)
        except Exception as error:
            raise _unavailable("token_review", error) from error
        outcome = "authenticated" if user is not None else "rejected"
        metrics.api_auth_reviews.labels(kind="token_review", outcome=outcome).inc()
        if user is None:
            return AuthDecision(401, None, "the token was not accepted by Kubernetes")
        try:
            allowed, reason = self._access_review(user, verb)
        except Exception as error:
            raise _unavailable("subject_access_review", error) from error
        outcome = "allowed" if allowed else "denied"
        metrics.api_auth_reviews.labels(kind="subject_access_review", outcome=outcome).inc()
        if allowed:
            return AuthDecision(200, user.username, reason)
        return AuthDecision(
            403, user.username, _denial(user.username, verb, self.namespace, reason)
        )

    def _token_review(self, token: str) -> Any:
        return token_review(self._authn, token, (), self._timeout)

    def _access_review(self, user: Any, verb: str) -> tuple[bool, str]:
        attributes = k8s.V1ResourceAttributes(
            group=GROUP, resource=RESOURCE, verb=verb, namespace=self.namespace
        )
        spec = k8s.V1SubjectAccessReviewSpec(
            user=user.username,
            uid=user.uid,
            groups=list(user.groups or ()),
            extra={key: list(values) for key, values in (user.extra or {}).items()},
            resource_attributes=attributes,
        )
        review = self._authz.create_subject_access_review(
            k8s.V1SubjectAccessReview(spec=spec), _request_timeout=self._timeout
        )
        status = review.status
        return bool(status and status.allowed), (status.reason or "") if status else ""


def _unavailable(kind: str, error: Exception) -> AuthUnavailable:
    metrics.api_auth_reviews.labels(kind=kind, outcome="error").inc()
    log.error("%s failed: %s: %s", kind, type(error).__name__, _short(error))
    return AuthUnavailable(f"{kind} failed: {type(error).__name__}")


def _denial(user: str | None, verb: str, namespace: str, reason: str) -> str:
    text = f'{user} may not {verb} {RESOURCE}.{GROUP} in namespace "{namespace}"'
    return f"{text}: {reason}" if reason else text


def _short(error: Exception) -> str:
    text = str(error).replace("\n", " ")
    return text if len(text) <= 300 else text[:300] + "..."
