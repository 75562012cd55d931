"""Helpers for remote-config (GitOps) tests: the OpAMPAgentConfig CRD, kubectl apply, hashes."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s

from opamp_operator.fleet.remoteconfig import DesiredConfig
from opamp_operator.kube.gitops.resolver import parse_files

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_CRD_FILE = REPO_ROOT / "crds" / "opampagentconfigs.opamp.dev.yaml"


def install_crd(kube_api: k8s.ApiClient, path: Path = CONFIG_CRD_FILE) -> str:
    """Create or update a CRD from `path` and wait until it is Established."""
    manifest = yaml.safe_load(path.read_text())
    name = str(manifest["metadata"]["name"])
    extensions = k8s.ApiextensionsV1Api(kube_api)
    try:
        extensions.create_custom_resource_definition(manifest)
    except k8s.ApiException as error:
        if error.status != 409:
            raise
        current = extensions.read_custom_resource_definition(name)
        manifest["metadata"]["resourceVersion"] = current.metadata.resource_version
        extensions.replace_custom_resource_definition(name, manifest)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        conditions = extensions.read_custom_resource_definition(name).status.conditions or []
        if any(c.type == "Established" and c.status == "True" for c in conditions):
            return name
        time.sleep(0.1)
    raise AssertionError(f"CRD {name} never became Established")


def kubectl_apply(kubeconfig: Path, namespace: str, manifest: dict[str, Any]) -> str:
    """`kubectl apply -f -` of one object, as a user or a GitOps tool would."""
    result = subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), "-n", namespace, "apply", "-f", "-"],
        input=json.dumps(manifest), capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    if result.returncode != 0:
        raise AssertionError(f"kubectl apply failed: {result.stderr}")
    return result.stdout


def agent_manifest(name: str, remote_config: dict[str, Any] | None) -> dict[str, Any]:
    spec: dict[str, Any] = {} if remote_config is None else {"remoteConfig": remote_config}
    return {
        "apiVersion": "opamp.dev/v1alpha1",
        "kind": "OpAMPAgent",
        "metadata": {"name": name},
        "spec": spec,
    }


def config_manifest(
    name: str, selector: dict[str, Any], remote_config: dict[str, Any], priority: int = 0
) -> dict[str, Any]:
    return {
        "apiVersion": "opamp.dev/v1alpha1",
        "kind": "OpAMPAgentConfig",
        "metadata": {"name": name},
        "spec": {"selector": selector, "priority": priority, "remoteConfig": remote_config},
    }


def yaml_file(body: str) -> dict[str, Any]:
    return {"collector.yaml": {"body": body, "contentType": "text/yaml"}}


def config_hash(remote_config: dict[str, Any]) -> str:
    """The hash the operator sends for this remote config (hex), as agents report it."""
    return DesiredConfig.of(parse_files(remote_config)).hash_hex


def get_object(kubeconfig: Path, namespace: str, plural: str, name: str) -> dict[str, Any] | None:
    result = subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), "-n", namespace, "get", plural, name,
         "-o", "json"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    if result.returncode != 0:
        if "NotFound" in result.stderr:
            return None
        raise AssertionError(f"kubectl get {plural} {name} failed: {result.stderr}")
    found: dict[str, Any] = json.loads(result.stdout)
    return found
