"""The authorizer's cache, sharing of reviews in flight, and its bound on waiting reviews.

The Kubernetes calls are replaced here (a subclass); tests/integration/test_api_auth.py
runs the real TokenReview and SubjectAccessReview against kube-apiserver.
"""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes import client as k8s

from opamp_operator.api.auth import AuthDecision, AuthUnavailable, DecisionCache, KubeAuthorizer
from tests.support.api_fleet import api_settings


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _decision(status: int = 200) -> AuthDecision:
    return AuthDecision(status, "u", "")


def test_cache_expires_entries() -> None:
    clock = Clock()
    cache = DecisionCache(10, 5.0, clock)
    cache.put((b"t", "get"), _decision())
    clock.now = 4.9
    assert cache.get((b"t", "get")) == _decision()
    clock.now = 5.0
    assert cache.get((b"t", "get")) is None
    assert len(cache) == 0


def test_cache_is_bounded_and_evicts_the_least_recently_used() -> None:
    cache = DecisionCache(2, 60.0, Clock())
    cache.put((b"a", "get"), _decision())
    cache.put((b"b", "get"), _decision(403))
    assert cache.get((b"a", "get")) is not None  # a is now the most recently used
    cache.put((b"c", "get"), _decision())
    assert len(cache) == 2
    assert cache.get((b"b", "get")) is None
    assert cache.get((b"a", "get")) is not None and cache.get((b"c", "get")) is not None


def test_cache_of_size_zero_keeps_nothing() -> None:
    cache = DecisionCache(0, 60.0, Clock())
    cache.put((b"a", "get"), _decision())
    assert cache.get((b"a", "get")) is None


class ScriptedAuthorizer(KubeAuthorizer):
    """KubeAuthorizer whose two Kubernetes calls answer from tables, on the pool threads."""

    def __init__(self, gate: threading.Event | None = None, **settings: Any) -> None:
        self.clock = Clock()
        super().__init__(k8s.ApiClient(), "ns", api_settings(**settings), self.clock)
        self.users = {"good": "alice", "reader": "bob"}
        self.grants = {("alice", "get"), ("alice", "update"), ("bob", "get")}
        self.token_reviews: list[str] = []
        self.review_threads: set[int] = set()
        self.gate = gate
        self.fail = False

    def _token_review(self, token: str) -> Any:
        self.review_threads.add(threading.get_ident())
        if self.gate is not None:
            self.gate.wait(5)
        if self.fail:
            raise ConnectionRefusedError("kube-apiserver down")
        self.token_reviews.append(token)
        name = self.users.get(token)
        return None if name is None else SimpleNamespace(username=name)

    def _access_review(self, user: Any, verb: str) -> tuple[bool, str]:
        return (user.username, verb) in self.grants, "RBAC"


async def test_decisions_401_403_200_and_reviews_run_off_the_loop() -> None:
    auth = ScriptedAuthorizer()
    try:
        assert (await auth.authorize("good", "update")).status == 200
        denied = await auth.authorize("reader", "update")
        assert denied.status == 403 and "bob may not update opampagents.opamp.dev" in denied.reason
        assert (await auth.authorize("stolen", "get")).status == 401
        assert threading.get_ident() not in auth.review_threads
    finally:
        auth.close()


async def test_answers_are_cached_per_token_and_verb_until_they_expire() -> None:
    auth = ScriptedAuthorizer(auth_cache_seconds=10.0)
    try:
        for _ in range(3):
            assert (await auth.authorize("good", "get")).allowed
        assert auth.token_reviews == ["good"]
        await auth.authorize("good", "update")  # another verb: another review
        assert auth.token_reviews == ["good", "good"]
        auth.clock.now = 10.0
        await auth.authorize("good", "get")
        assert auth.token_reviews == ["good"] * 3
    finally:
        auth.close()


async def test_concurrent_requests_share_one_review() -> None:
    gate = threading.Event()
    auth = ScriptedAuthorizer(gate)
    try:
        waiting = [asyncio.create_task(auth.authorize("good", "get")) for _ in range(20)]
        await asyncio.sleep(0.05)
        gate.set()
        decisions = await asyncio.gather(*waiting)
        assert all(d.allowed for d in decisions)
        assert auth.token_reviews == ["good"]
    finally:
        auth.close()


async def test_too_many_pending_reviews_are_refused_not_queued() -> None:
    gate = threading.Event()
    auth = ScriptedAuthorizer(gate, auth_max_pending=2, auth_workers=1)
    try:
        first = asyncio.create_task(auth.authorize("a", "get"))
        second = asyncio.create_task(auth.authorize("b", "get"))
        await asyncio.sleep(0.01)
        with pytest.raises(AuthUnavailable):
            await auth.authorize("c", "get")
        gate.set()
        assert [d.status for d in await asyncio.gather(first, second)] == [401, 401]
        assert (await auth.authorize("c", "get")).status == 401  # room again
    finally:
        auth.close()


async def test_kubernetes_errors_become_auth_unavailable_and_are_not_cached() -> None:
    auth = ScriptedAuthorizer()
    try:
        auth.fail = True
        with pytest.raises(AuthUnavailable):
            await auth.authorize("good", "get")
        auth.fail = False
        assert (await auth.authorize("good", "get")).allowed
    finally:
        auth.close()
