"""Who may call the REST API: Kubernetes decides.

A caller sends `Authorization: Bearer <token>` (a ServiceAccount token, or any token the
cluster's authenticators accept). A TokenReview says who that is; a SubjectAccessReview says
whether they may `get`/`list` (reads) or `update` (reconnect) `opampagents.opamp.dev` in the
operator's namespace, so access is granted with ordinary RBAC Roles.

The official client is synchronous: reviews run on a small bounded thread pool, never on the
event loop. Answers are cached for `auth_cache_seconds` (an LRU of `auth_cache_size`
entries), so a revoked grant or an expired token may still work for that long. Concurrent
requests with the same token and verb share one review. When more than `auth_max_pending`
reviews are waiting, callers get 503 with Retry-After instead of queueing without bound.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from kubernetes import client as k8s

from opamp_operator import metrics
from opamp_operator.config import ApiSettings

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


class AuthUnavailable(Exception):
    """Kubernetes could not be asked (unreachable, refused us, or too many reviews waiting)."""


class Authorizer(Protocol):
    async def authorize(self, token: str, verb: str) -> AuthDecision:
        """May the bearer of `token` `verb` opampagents? Raises AuthUnavailable if unknowable."""
        ...


class DecisionCache:
    """A bounded LRU of decisions that expire `ttl` seconds after they were made."""

    def __init__(self, size: int, ttl: float, monotonic: Callable[[], float]) -> None:
        self.size = size
        self.ttl = ttl
        self._monotonic = monotonic
        self._entries: OrderedDict[tuple[bytes, str], tuple[float, AuthDecision]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple[bytes, str]) -> AuthDecision | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, decision = entry
        if expires <= self._monotonic():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return decision

    def put(self, key: tuple[bytes, str], decision: AuthDecision) -> None:
        if self.size == 0 or self.ttl <= 0:
            return
        self._entries[key] = (self._monotonic() + self.ttl, decision)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)  # full: the least recently used goes


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
        self._max_pending = settings.auth_max_pending
        self._executor = ThreadPoolExecutor(settings.auth_workers, thread_name_prefix="api-auth")
        self._cache = DecisionCache(
            settings.auth_cache_size, settings.auth_cache_seconds, monotonic
        )
        self._inflight: dict[tuple[bytes, str], asyncio.Task[AuthDecision]] = {}

    async def authorize(self, token: str, verb: str) -> AuthDecision:
        # Only a digest of the token is kept, so the cache holds no credentials.
        key = (hashlib.sha256(token.encode()).digest(), verb)
        cached = self._cache.get(key)
        if cached is not None:
            metrics.api_auth_cache.labels(result="hit").inc()
            return cached
        metrics.api_auth_cache.labels(result="miss").inc()
        task = self._inflight.get(key)
        if task is None:
            if len(self._inflight) >= self._max_pending:
                metrics.api_auth_reviews.labels(kind="any", outcome="backlog_full").inc()
                raise AuthUnavailable(f"{len(self._inflight)} authorization reviews pending")
            task = asyncio.create_task(self._review(token, verb))
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        # Shielded: a caller that goes away does not cancel a review others wait for.
        return await asyncio.shield(task)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _finished(self, key: tuple[bytes, str], task: asyncio.Task[AuthDecision]) -> None:
        self._inflight.pop(key, None)
        if not task.cancelled() and task.exception() is None:
            self._cache.put(key, task.result())

    async def _review(self, token: str, verb: str) -> AuthDecision:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._review_blocking, token, verb)

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
        body = k8s.V1TokenReview(spec=k8s.V1TokenReviewSpec(token=token))
        review = self._authn.create_token_review(body, _request_timeout=self._timeout)
        status = review.status
        if status is None or not status.authenticated or status.user is None:
            return None
        return status.user

    def _access_review(self, user: Any, verb: str) -> tuple[bool, str]:
        attributes = k8s.V1ResourceAttributes(
            group=GROUP, resource=RESOURCE, verb=verb, namespace=self.namespace
        )
        spec = k8s.V1SubjectAccessReviewSpec(
            user=user.username,
            uid=user.uid,
            groups=user.groups,
            extra=user.extra,
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
