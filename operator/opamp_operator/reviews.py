"""Asking Kubernetes who a bearer token is: TokenReview, cached, shared, bounded, off the loop.

One implementation for both callers: the REST API (`api/auth.py`, which adds a
SubjectAccessReview) and the OpAMP listener (`transport/auth.py`, ServiceAccount tokens of
agents). It sits below both layers and knows neither.

The official client is synchronous: reviews run on a small bounded thread pool, never on the
event loop. Answers are cached for `ttl` seconds in an LRU of `size` entries, keyed by a
digest of the token (the cache holds no credentials), so a revoked or expired token may
still be accepted for that long. Concurrent lookups of one key share one review. When more
than `max_pending` reviews are waiting, callers get `ReviewUnavailable` at once instead of
queueing without bound.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from kubernetes import client as k8s

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ReviewUnavailable(Exception):
    """Kubernetes could not be asked (unreachable, refused us, or too many reviews waiting)."""


class TtlCache(Generic[K, V]):
    """A bounded LRU of values that expire `ttl` seconds after they were put."""

    def __init__(self, size: int, ttl: float, monotonic: Callable[[], float]) -> None:
        self.size = size
        self.ttl = ttl
        self._monotonic = monotonic
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires <= self._monotonic():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        if self.size == 0 or self.ttl <= 0:
            return
        self._entries[key] = (self._monotonic() + self.ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)  # full: the least recently used goes


@dataclass(frozen=True, slots=True)
class PoolSettings:
    cache_seconds: float
    cache_size: int
    workers: int
    max_pending: int
    name: str  # the pool threads' name prefix


class CachedReviews(Generic[K, V]):
    """Runs blocking reviews on a bounded pool; caches, and shares those in flight.

    `on_lookup` is told "hit" or "miss" for every lookup (the callers' cache metrics).
    Call `close()` when done.
    """

    def __init__(
        self,
        settings: PoolSettings,
        monotonic: Callable[[], float] = time.monotonic,
        on_lookup: Callable[[str], None] = lambda result: None,
    ) -> None:
        self._max_pending = settings.max_pending
        self._on_lookup = on_lookup
        self._executor = ThreadPoolExecutor(settings.workers, thread_name_prefix=settings.name)
        self._cache: TtlCache[K, V] = TtlCache(
            settings.cache_size, settings.cache_seconds, monotonic
        )
        self._inflight: dict[K, asyncio.Task[V]] = {}

    async def get(self, key: K, review: Callable[[], V]) -> V:
        """The cached answer for `key`, else `review()` run on a pool thread (and cached).

        Raises ReviewUnavailable when too many reviews wait; `review`'s exceptions pass
        through (and are not cached).
        """
        cached = self._cache.get(key)
        if cached is not None:
            self._on_lookup("hit")
            return cached
        self._on_lookup("miss")
        task = self._inflight.get(key)
        if task is None:
            if len(self._inflight) >= self._max_pending:
                raise ReviewUnavailable(f"{len(self._inflight)} reviews pending")
            task = asyncio.create_task(self._run(review))
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        # Shielded: a caller that goes away does not cancel a review others wait for.
        return await asyncio.shield(task)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _run(self, review: Callable[[], V]) -> V:
        return await asyncio.get_running_loop().run_in_executor(self._executor, review)

    def _finished(self, key: K, task: asyncio.Task[V]) -> None:
        self._inflight.pop(key, None)
        if not task.cancelled() and task.exception() is None:
            self._cache.put(key, task.result())


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True, slots=True)
class ReviewedUser:
    """Who Kubernetes says a token belongs to (TokenReview `status.user`, `status.audiences`)."""

    username: str
    uid: str | None = None
    groups: Sequence[str] = ()
    extra: Mapping[str, Sequence[str]] = field(default_factory=dict)
    audiences: Sequence[str] = ()


def token_review(
    api: k8s.AuthenticationV1Api, token: str, audiences: Sequence[str], timeout: float
) -> ReviewedUser | None:
    """One TokenReview (blocking); None when the token is not accepted (for these audiences)."""
    spec = k8s.V1TokenReviewSpec(token=token, audiences=list(audiences) or None)
    review = api.create_token_review(k8s.V1TokenReview(spec=spec), _request_timeout=timeout)
    status = review.status
    if status is None or not status.authenticated or status.user is None:
        return None
    user: Any = status.user
    return ReviewedUser(
        username=str(user.username or ""),
        uid=user.uid,
        groups=tuple(user.groups or ()),
        extra={key: tuple(values or ()) for key, values in (user.extra or {}).items()},
        audiences=tuple(status.audiences or ()),
    )
