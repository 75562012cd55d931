"""Real Kubernetes identities for REST API tests: ServiceAccounts, tokens, RBAC grants."""

from __future__ import annotations

import copy

from kubernetes import client as k8s

from opamp_operator.api.auth import GROUP, RESOURCE


def service_account_token(api: k8s.ApiClient, namespace: str, name: str) -> str:
    """Create ServiceAccount `name` and return a fresh token for it (TokenRequest)."""
    core = k8s.CoreV1Api(api)
    core.create_namespaced_service_account(
        namespace, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name=name))
    )
    request = k8s.AuthenticationV1TokenRequest(
        spec=k8s.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
    )
    response = core.create_namespaced_service_account_token(name, namespace, request)
    return str(response.status.token)


def grant(api: k8s.ApiClient, namespace: str, account: str, verbs: list[str]) -> None:
    """A Role on opampagents.opamp.dev with `verbs`, bound to ServiceAccount `account`."""
    rbac = k8s.RbacAuthorizationV1Api(api)
    name = f"opampagents-{account}"
    rule = k8s.V1PolicyRule(api_groups=[GROUP], resources=[RESOURCE], verbs=verbs)
    rbac.create_namespaced_role(
        namespace, k8s.V1Role(metadata=k8s.V1ObjectMeta(name=name), rules=[rule])
    )
    subject = k8s.RbacV1Subject(kind="ServiceAccount", name=account, namespace=namespace)
    binding = k8s.V1RoleBinding(
        metadata=k8s.V1ObjectMeta(name=name),
        role_ref=k8s.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name=name),
        subjects=[subject],
    )
    rbac.create_namespaced_role_binding(namespace, binding)


def client_as(api: k8s.ApiClient, token: str) -> k8s.ApiClient:
    """A client for the same apiserver that authenticates with `token` instead of certs."""
    configuration = copy.copy(api.configuration)
    configuration.cert_file = None
    configuration.key_file = None
    configuration.api_key = {"authorization": token}
    configuration.api_key_prefix = {"authorization": "Bearer"}
    return k8s.ApiClient(configuration)
