"""Polling helpers for e2e tests: wait for what a user would see."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client as k8s

from tests.support.operator_process import OperatorProcess, kubectl
from tests.support.polling import grows

T = TypeVar("T")


def get_agent_cr(kubeconfig: Path, namespace: str, name: str) -> dict[str, Any] | None:
    out = kubectl(kubeconfig, "-n", namespace, "get", "opampagents", "-o", "json")
    for item in json.loads(out)["items"]:
        if item["metadata"]["name"] == name:
            return dict(item)
    return None


def condition(cr: dict[str, Any], kind: str) -> dict[str, Any]:
    for entry in cr.get("status", {}).get("conditions", []):
        if entry["type"] == kind:
            return dict(entry)
    return {}


async def label_applied(
    operator: OperatorProcess, kubeconfig: Path, namespace: str, name: str, label: str
) -> None:
    """Set `label` (key=value) on OpAMPAgent `name`; wait until the GitOps controller applied
    it (its resolver woke for it). The controller applies the OpAMPAgent watch's events in
    order and acts on annotations as it applies them, so whatever it would have done about
    this change or any before it (a reconnect, a restart) it has done then."""
    passes = operator.passes("gitops_resolver")
    since = await passes()
    kubectl(kubeconfig, "-n", namespace, "label", "--overwrite", "opampagent", name, label)
    await grows(f"the GitOps controller to apply {label} on {name}", passes, since=since)


async def lease_of(kube_api: k8s.ApiClient, namespace: str, name: str) -> Any:
    """The replica Lease `name` (a V1Lease), or None when there is none."""
    leases = k8s.CoordinationV1Api(kube_api)
    try:
        return await asyncio.to_thread(leases.read_namespaced_lease, name, namespace)
    except k8s.ApiException as error:
        if error.status == 404:
            return None
        raise
