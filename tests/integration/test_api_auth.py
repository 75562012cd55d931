"""REST API authorization against the real kube-apiserver: TokenReview, SubjectAccessReview, RBAC.

ServiceAccount tokens come from TokenRequest; grants are ordinary Roles and RoleBindings on
opampagents.opamp.dev. The authorizer itself uses the admin kubeconfig (allowed to create
tokenreviews and subjectaccessreviews), except in the test of an authorizer that is not.
"""

from __future__ import annotations

import pytest
from kubernetes import client as k8s

from opamp_operator.api.auth import KubeAuthorizer
from opamp_operator.api.server import ApiServer
from tests.support.api_fleet import (
    FakeChannel,
    api_settings,
    hello,
    make_fleet,
    new_agent_id,
    serving,
)
from tests.support.api_kube import client_as, grant, service_account_token
from tests.support.polling import eventually

pytestmark = pytest.mark.integration


async def _await_grant(auth: KubeAuthorizer, token: str, verb: str) -> None:
    """RBAC reaches the authorizer through an informer: wait until a new grant shows."""

    async def granted() -> bool:
        return (await auth.authorize(token, verb)).status == 200

    await eventually(f"the grant of {verb} visible", granted, within=15)


async def test_no_token_401_unbound_403_reader_200_and_reconnect_needs_update(
    kube_api: k8s.ApiClient, namespace: str
) -> None:
    nobody = service_account_token(kube_api, namespace, "nobody")
    reader = service_account_token(kube_api, namespace, "reader")
    operator = service_account_token(kube_api, namespace, "operator")
    grant(kube_api, namespace, "reader", ["get", "list"])
    grant(kube_api, namespace, "operator", ["get", "list", "update"])
    fleet, _, _ = make_fleet()
    agent_id = new_agent_id()
    channel = FakeChannel()
    fleet.handle_message(channel, hello(agent_id))
    # No cache: every request below is a real TokenReview + SubjectAccessReview.
    settings = api_settings(auth_cache_seconds=0.0)
    auth = KubeAuthorizer(kube_api, namespace, settings)
    try:
        await _await_grant(auth, reader, "list")
        await _await_grant(auth, operator, "update")
        server = ApiServer(settings, fleet, None, auth, dict)
        async with serving(server) as client:

            def bearer(token: str) -> dict[str, str]:
                return {"Authorization": f"Bearer {token}"}

            status_path = f"/api/v1/agents/{agent_id}/status"
            reconnect_path = f"/api/v1/agents/{agent_id}/reconnect"
            async with client.get("/api/v1/agents") as r:
                assert r.status == 401
            async with client.get("/api/v1/agents", headers=bearer("not-a-token")) as r:
                assert r.status == 401
                assert "not accepted" in (await r.json(content_type=None))["detail"]
            async with client.get("/api/v1/agents", headers=bearer(nobody)) as r:
                assert r.status == 403
                detail = (await r.json(content_type=None))["detail"]
                assert f"system:serviceaccount:{namespace}:nobody may not list" in detail
            async with client.get("/api/v1/agents", headers=bearer(reader)) as r:
                assert r.status == 200
                assert [a["id"] for a in (await r.json())["items"]] == [agent_id]
            async with client.get(status_path, headers=bearer(reader)) as r:
                assert r.status == 200
            async with client.post(reconnect_path, headers=bearer(reader)) as r:
                assert r.status == 403
            assert channel.close_requests == []
            async with client.post(reconnect_path, headers=bearer(operator)) as r:
                assert r.status == 202
            assert channel.close_requests == ["reconnect_requested"]
            async with client.get("/metrics") as r:  # public
                assert r.status == 200
    finally:
        auth.close()


async def test_a_grant_in_another_namespace_does_not_count(
    kube_api: k8s.ApiClient, namespace: str
) -> None:
    core = k8s.CoreV1Api(kube_api)
    other = f"{namespace}-other"
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=other)))
    token = service_account_token(kube_api, namespace, "elsewhere")
    # The Role lives in `other`; the operator's agents live in `namespace`.
    rbac = k8s.RbacAuthorizationV1Api(kube_api)
    rule = k8s.V1PolicyRule(api_groups=["opamp.dev"], resources=["opampagents"], verbs=["list"])
    rbac.create_namespaced_role(
        other, k8s.V1Role(metadata=k8s.V1ObjectMeta(name="r"), rules=[rule])
    )
    rbac.create_namespaced_role_binding(
        other,
        k8s.V1RoleBinding(
            metadata=k8s.V1ObjectMeta(name="r"),
            role_ref=k8s.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="r"),
            subjects=[
                k8s.RbacV1Subject(kind="ServiceAccount", name="elsewhere", namespace=namespace)
            ],
        ),
    )
    settings = api_settings(auth_cache_seconds=0.0)
    in_other = KubeAuthorizer(kube_api, other, settings)
    in_ours = KubeAuthorizer(kube_api, namespace, settings)
    try:
        await _await_grant(in_other, token, "list")
        decision = await in_ours.authorize(token, "list")
        assert decision.status == 403
    finally:
        in_other.close()
        in_ours.close()


async def test_an_authorizer_that_may_not_review_answers_503(
    kube_api: k8s.ApiClient, namespace: str
) -> None:
    """The operator's own identity lacks system:auth-delegator: callers get 503, not 401/403."""
    weak = service_account_token(kube_api, namespace, "weak")
    caller = service_account_token(kube_api, namespace, "caller")
    weak_client = client_as(kube_api, weak)
    fleet, _, _ = make_fleet()
    settings = api_settings()
    auth = KubeAuthorizer(weak_client, namespace, settings)
    try:
        async with serving(ApiServer(settings, fleet, None, auth, dict)) as client:
            headers = {"Authorization": f"Bearer {caller}"}
            async with client.get("/api/v1/agents", headers=headers) as r:
                assert r.status == 503
                body = await r.json(content_type=None)
                assert body["title"] == "Service unavailable"
                assert "token_review failed" in body["detail"]
                assert r.headers["Retry-After"] == "1"
    finally:
        auth.close()
        weak_client.close()
