"""A ServiceAccount, a Pod running as it, and the Pod-bound token the kubelet would project.

The test bed's kube-apiserver signs ServiceAccount tokens; no kubelet runs, so the Pod is an
object only and the token is requested as the kubelet would (TokenRequest bound to the Pod,
here through `kubectl create token --bound-object-kind Pod`).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from kubernetes import client as k8s

from tests.support.operator_process import kubectl

AUDIENCE = "opamp-operator"


def make_pod_with_account(kube_api: k8s.ApiClient) -> tuple[str, str]:
    """A namespace with ServiceAccount `collector` and Pod `collector-0` running as it."""
    core = k8s.CoreV1Api(kube_api)
    namespace = f"sa-{uuid.uuid4().hex[:8]}"
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=namespace)))
    account = k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name="collector"))
    core.create_namespaced_service_account(namespace, account)
    pod = k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name="collector-0"),
        spec=k8s.V1PodSpec(
            service_account_name="collector",
            containers=[k8s.V1Container(name="otelcol", image="otelcol:0")],
        ),
    )
    created = core.create_namespaced_pod(namespace, pod)
    return namespace, str(created.metadata.uid)


def pod_token(kubeconfig: Path, namespace: str, audience: str = AUDIENCE) -> str:
    """What the kubelet would project into collector-0: a token bound to the Pod."""
    return kubectl(
        kubeconfig, "-n", namespace, "create", "token", "collector", "--audience", audience,
        "--bound-object-kind", "Pod", "--bound-object-name", "collector-0", "--duration", "1h",
    ).strip()  # fmt: skip


def pod_attributes(uid: str, namespace: str) -> dict[str, Any]:
    return {
        "id_attrs": {"k8s.pod.uid": uid},
        "attrs": {"k8s.pod.name": "collector-0", "k8s.namespace.name": namespace},
    }
