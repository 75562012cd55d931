"""The kustomize base in manifests/, rendered and applied to the test bed's kube-apiserver.

Shared by tests/integration/test_manifests.py and the e2e test that runs the whole operator
on the manifests' ServiceAccount.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
KUBECTL_TIMEOUT_SECONDS = 120

Obj = dict[str, Any]


def kubectl(
    kubeconfig: Path | None, *args: str, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    # A fresh discovery cache each time: a CRD installed a moment ago must be visible.
    cache = tempfile.mkdtemp(prefix="kubectl-cache-")
    argv = ["kubectl", f"--cache-dir={cache}"]
    if kubeconfig is not None:
        argv.append(f"--kubeconfig={kubeconfig}")
    try:
        result = subprocess.run(
            [*argv, *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=KUBECTL_TIMEOUT_SECONDS,
        )
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    if check and result.returncode != 0:
        raise AssertionError(
            f"kubectl {' '.join(args)} exited {result.returncode}:\n{result.stderr}"
        )
    return result


def render(directory: Path) -> list[Obj]:
    out = kubectl(None, "kustomize", str(directory)).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def to_yaml(objects: Iterable[Obj]) -> str:
    return yaml.safe_dump_all(list(objects), sort_keys=False)


def one(objects: Iterable[Obj], kind: str, name: str | None = None) -> Obj:
    found = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_from(deployment: Obj, namespace: str) -> Obj:
    """A Pod with `deployment`'s pod template, to test admission (Pod Security) on."""
    template = copy.deepcopy(deployment["spec"]["template"])
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{deployment['metadata']['name']}-check", "namespace": namespace},
        "spec": template["spec"],
    }


def assert_restricted_admission(core: k8s.CoreV1Api, pod: Obj) -> None:
    """`pod` is admitted (dry run) in its namespace, which enforces the "restricted" Pod
    Security Standard; with privilege escalation allowed it is refused."""
    namespace = pod["metadata"]["namespace"]
    core.create_namespaced_pod(namespace, pod, dry_run="All")
    weakened = copy.deepcopy(pod)
    weakened["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    try:
        core.create_namespaced_pod(namespace, weakened, dry_run="All")
    except k8s.ApiException as refused:
        assert refused.status == 403, refused
        assert "PodSecurity" in str(refused.body)
    else:
        raise AssertionError(f"a weakened {pod['metadata']['name']} was admitted in {namespace}")


def server_apply(kubeconfig: Path, objects: Iterable[Obj], *, dry_run: bool) -> str:
    """Server-side apply; returns kubectl's stderr (where the server's warnings go)."""
    args = ["apply", "--server-side", "--force-conflicts", "--field-manager=test-manifests"]
    if dry_run:
        args.append("--dry-run=server")
    return kubectl(kubeconfig, *args, "-f", "-", stdin=to_yaml(objects)).stderr


def apply_base(kubeconfig: Path, namespace: str) -> list[Obj]:
    """The kustomize base applied for real: its CRDs (waited for), then every other object
    moved to `namespace`; returns those objects (the caller deletes them)."""
    rendered = render(MANIFESTS)
    crds = [obj for obj in rendered if obj["kind"] == "CustomResourceDefinition"]
    server_apply(kubeconfig, crds, dry_run=False)
    kubectl(kubeconfig, "wait", "--for=condition=Established", "--timeout=30s",
            *(f"crd/{crd['metadata']['name']}" for crd in crds))  # fmt: skip
    objects = retarget(rendered, namespace)
    server_apply(kubeconfig, objects, dry_run=False)
    return objects


CLUSTER_SCOPED = {
    "ClusterRole",
    "ClusterRoleBinding",
    "FlowSchema",
    "PriorityLevelConfiguration",
}


def cluster_scoped(obj: Obj) -> bool:
    """Of the kinds `retarget` moves, those that belong to no namespace (delete them)."""
    return obj["kind"] in CLUSTER_SCOPED


def retarget(objects: list[Obj], namespace: str) -> list[Obj]:
    """The base's RBAC and API Priority and Fairness objects, moved to `namespace`.

    Cluster-scoped names get the namespace as a suffix, so tests never share them.
    """
    wanted = {"ServiceAccount", "Role", "RoleBinding", *CLUSTER_SCOPED}
    moved = []
    for original in objects:
        if original["kind"] not in wanted:
            continue
        obj = copy.deepcopy(original)
        meta = obj["metadata"]
        if cluster_scoped(obj):
            meta["name"] = f"{meta['name']}-{namespace}"
        else:
            meta["namespace"] = namespace
        if obj["kind"] == "ClusterRoleBinding":
            obj["roleRef"]["name"] = f"{obj['roleRef']['name']}-{namespace}"
        for subject in obj.get("subjects", []):
            subject["namespace"] = namespace
        if obj["kind"] == "FlowSchema":
            _retarget_flow_schema(obj["spec"], namespace)
        moved.append(obj)
    return moved


def _retarget_flow_schema(spec: Obj, namespace: str) -> None:
    level = spec["priorityLevelConfiguration"]
    level["name"] = f"{level['name']}-{namespace}"
    for rule in spec["rules"]:
        for subject in rule["subjects"]:
            subject["serviceAccount"]["namespace"] = namespace
        for resources in rule.get("resourceRules", []):
            resources["namespaces"] = [namespace]


def token_for(kube_api: k8s.ApiClient, namespace: str, account: str) -> str:
    request = k8s.AuthenticationV1TokenRequest(
        spec=k8s.V1TokenRequestSpec(audiences=[], expiration_seconds=600)
    )
    answer = k8s.CoreV1Api(kube_api).create_namespaced_service_account_token(
        account, namespace, request
    )
    return str(answer.status.token)


def token_kubeconfig(admin: k8s.ApiClient, token: str, path: Path) -> Path:
    """A kubeconfig that authenticates with `token` only (to run the operator on an account)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {
            "server": admin.configuration.host,
            "certificate-authority": admin.configuration.ssl_ca_cert}}],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "operator"}}],
        "current-context": "c",
    }  # fmt: skip
    path.write_text(json.dumps(config))
    return path


@contextmanager
def base_account(
    kube_api: k8s.ApiClient, kubeconfig: Path, namespace: str, path: Path
) -> Iterator[Path]:
    """The base applied in `namespace` (`apply_base`); yields a kubeconfig at `path` that
    holds nothing but its ServiceAccount's token, and deletes the cluster-scoped objects after."""
    objects = apply_base(kubeconfig, namespace)
    try:
        account = one(objects, "ServiceAccount")["metadata"]["name"]
        yield token_kubeconfig(kube_api, token_for(kube_api, namespace, account), path)
    finally:
        for obj in objects:
            if cluster_scoped(obj):
                kubectl(kubeconfig, "delete", obj["kind"], obj["metadata"]["name"], check=False)


# Kopf's peering CRD as earlier versions of the base shipped it (manifests/kopf-peering.yaml).
KOPF_PEERING_CRD: Obj = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "kopfpeerings.kopf.dev"},
    "spec": {
        "group": "kopf.dev",
        "scope": "Namespaced",
        "names": {"kind": "KopfPeering", "plural": "kopfpeerings", "singular": "kopfpeering"},
        "versions": [{
            "name": "v1", "served": True, "storage": True,
            "schema": {"openAPIV3Schema": {"type": "object", "properties": {"status": {
                "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}},
        }],
    },
}  # fmt: skip


def leave_kopf_peering(kubeconfig: Path, namespace: str) -> None:
    """What an older release leaves behind on upgrade: Kopf's KopfPeering CRD and the
    `default` peering object, here in `namespace`. Kopf would join it unless standalone."""
    server_apply(kubeconfig, [KOPF_PEERING_CRD], dry_run=False)
    kubectl(kubeconfig, "wait", "--for=condition=Established", "--timeout=30s",
            f"crd/{KOPF_PEERING_CRD['metadata']['name']}")  # fmt: skip
    peering = {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering",
               "metadata": {"name": "default", "namespace": namespace}}  # fmt: skip
    server_apply(kubeconfig, [peering], dry_run=False)
