"""Agent authentication's pure parts: reading a TokenReview, the Pod binding, the head check.

The TokenReview is a function here (a table of users); tests/e2e/test_agent_serviceaccount_
tokens.py runs it against kube-apiserver with real ServiceAccount tokens.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Mapping

from opamp_operator.opamp.generated import opamp_pb2
from opamp_operator.opamp.messages import AgentDescriptionView, AgentToServer, ServerToAgent
from opamp_operator.reviews import PoolSettings, ReviewedUser
from opamp_operator.transport.auth import (
    EXTRA_POD_NAME,
    EXTRA_POD_UID,
    AgentAuth,
    PodBinding,
    PodIdentity,
    Refused,
    binding_refusal,
    pod_identity,
)

POD_UID = "6f1c2a9e-0d6b-4c4e-9a51-3c0f2b7d8e11"
ACCOUNT = "system:serviceaccount:team-a:collector"
IDENTITY = PodIdentity(ACCOUNT, "team-a/collector", "collector-0", POD_UID)


def user(
    username: str = ACCOUNT,
    extra: Mapping[str, tuple[str, ...]] | None = None,
    audiences: tuple[str, ...] = ("opamp-operator",),
) -> ReviewedUser:
    if extra is None:
        extra = {EXTRA_POD_UID: (POD_UID,), EXTRA_POD_NAME: ("collector-0",)}
    return ReviewedUser(username, extra=extra, audiences=audiences)


def test_a_pod_bound_service_account_token_names_its_account_and_pod() -> None:
    assert pod_identity(user(), "opamp-operator") == IDENTITY


def test_tokens_that_cannot_identify_a_pod_are_refused_with_401() -> None:
    cases: dict[str, list[ReviewedUser | None]] = {
        "token_rejected": [None, user(audiences=()), user(audiences=("kubernetes",))],
        "not_pod_bound": [
            user(username="alice"),
            user(username="system:serviceaccount:broken"),
            user(extra={}),
            user(extra={EXTRA_POD_UID: ("",)}),
        ],
    }
    for reason, users in cases.items():
        for reviewed in users:
            refused = pod_identity(reviewed, "opamp-operator")
            assert isinstance(refused, Refused), reviewed
            assert (refused.status, refused.reason) == (401, reason)
            assert refused.headers == (("WWW-Authenticate", "Bearer"),)


def view(
    identifying: dict[str, object], non_identifying: dict[str, object] | None = None
) -> AgentDescriptionView:
    return AgentDescriptionView(identifying, non_identifying or {})


def test_the_binding_reads_the_pod_uid_as_the_pod_linker_does() -> None:
    assert binding_refusal(IDENTITY, view({"k8s.pod.uid": POD_UID})) is None
    assert binding_refusal(IDENTITY, view({}, {"k8s.pod.uid": f" {POD_UID} "})) is None
    # Blank identifying value: the non-identifying one counts (as in kube/shapes/podref).
    assert binding_refusal(IDENTITY, view({"k8s.pod.uid": ""}, {"k8s.pod.uid": POD_UID})) is None
    other = str(uuid.uuid4())
    mismatch = binding_refusal(IDENTITY, view({"k8s.pod.uid": other}, {"k8s.pod.uid": POD_UID}))
    assert mismatch is not None and (mismatch.status, mismatch.reason) == (403, "pod_uid_mismatch")
    assert other in mismatch.detail and POD_UID in mismatch.detail
    assert len(mismatch.detail.encode()) <= 123  # it fits a WebSocket close reason whole
    missing = binding_refusal(IDENTITY, view({"service.name": "otelcol"}))
    assert missing is not None and missing.reason == "no_pod_uid"


def message(uid: uuid.UUID, pod_uid: str | None = None) -> AgentToServer:
    built = AgentToServer(instance_uid=uid.bytes)
    if pod_uid is not None:
        attribute = built.agent_description.identifying_attributes.add(key="k8s.pod.uid")
        attribute.value.string_value = pod_uid
    return built


def test_a_connection_speaks_only_for_agents_of_its_pod() -> None:
    uid, stranger = uuid.uuid4(), uuid.uuid4()
    known = {str(stranger): view({"k8s.pod.uid": "another-pod"})}
    binding = PodBinding(IDENTITY)
    assert binding.check(message(uid, POD_UID), known.get) is None
    assert binding.check(message(uid), known.get) is None  # verified on this connection
    changed = binding.check(message(uid, "another-pod"), known.get)
    assert isinstance(changed, Refused) and changed.reason == "pod_uid_mismatch"
    # Another agent's uid, no description in the message: the fleet's tells.
    taken = binding.check(message(stranger), known.get)
    assert isinstance(taken, Refused) and taken.reason == "pod_uid_mismatch"


def test_an_undescribed_unknown_agent_is_asked_for_its_full_state_first() -> None:
    uid = uuid.uuid4()
    nothing: dict[str, AgentDescriptionView] = {}
    asked = PodBinding(IDENTITY).check(message(uid), nothing.get)
    assert isinstance(asked, ServerToAgent)
    assert asked.instance_uid == uid.bytes
    assert asked.flags & opamp_pb2.ServerToAgentFlags_ReportFullState
    # A uid that is no uid is the fleet's to refuse (BAD_REQUEST): passed on.
    assert PodBinding(IDENTITY).check(AgentToServer(instance_uid=b"short"), nothing.get) is None


def bearer(token: str) -> list[bytes]:
    return [f"Bearer {token}".encode()]


def test_static_tokens_pass_at_once_others_wait_for_a_review() -> None:
    static_only = AgentAuth({"s3cret"})
    assert static_only.admit(bearer("s3cret")) is not None
    assert static_only.admit(bearer("jwt")) is None
    both = AgentAuth({"s3cret"}, lambda token: None)
    try:
        assert both.admit(bearer("s3cret")) == both.admit([b"bearer  s3cret "])
        assert both.admit(bearer("s3cret")).token is None  # type: ignore[union-attr]
        assert both.admit(bearer("eyJ.jwt")).token == "eyJ.jwt"  # type: ignore[union-attr]
        assert both.admit([]) is None
        assert both.admit([b"Basic abc"]) is None
        assert both.admit(bearer("a") + bearer("b")) is None
        assert both.admit([b"Bearer "]) is None
    finally:
        both.close()
    assert AgentAuth(()).admit([]) is not None  # no authentication configured: open


async def test_reviews_are_cached_and_failures_are_503_and_not_cached() -> None:
    calls: list[str] = []
    failing = threading.Event()

    def review(token: str) -> ReviewedUser | None:
        calls.append(token)
        if failing.is_set():
            raise ConnectionRefusedError("kube-apiserver down")
        return user() if token == "good" else None

    auth = AgentAuth((), review, pool=PoolSettings(60.0, 16, 1, 4, "test-auth"))
    try:
        assert await auth.identify("good", "http", "127.0.0.1:1") == IDENTITY
        assert await auth.identify("good", "websocket", "127.0.0.1:2") == IDENTITY
        bad = await auth.identify("bad", "http", "127.0.0.1:3")
        assert isinstance(bad, Refused) and bad.reason == "token_rejected"
        await auth.identify("bad", "http", "127.0.0.1:3")
        assert calls == ["good", "bad"]  # each reviewed once, rejections cached too
        failing.set()
        down = await auth.identify("new", "http", "127.0.0.1:4")
        assert isinstance(down, Refused) and down.status == 503
        assert down.headers == (("Retry-After", "5"),)
        failing.clear()
        again = await auth.identify("new", "http", "127.0.0.1:4")
        assert isinstance(again, Refused) and again.status == 401  # asked again, not cached
    finally:
        auth.close()
