"""Polling helpers for e2e tests: wait for what a user would see."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client as k8s

from tests.support.operator_process import kubectl

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


async def lease_of(kube_api: k8s.ApiClient, namespace: str, name: str) -> Any:
    """The replica Lease `name` (a V1Lease), or None when there is none."""
    leases = k8s.CoordinationV1Api(kube_api)
    try:
        return await asyncio.to_thread(leases.read_namespaced_lease, name, namespace)
    except k8s.ApiException as error:
        if error.status == 404:
            return None
        raise
