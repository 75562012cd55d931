"""Kubernetes fixtures for integration tests: the OpAMPAgent CRD installed, a mirror client.

Only kube fixtures live here (tests/conftest.py has the test bed itself).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s

from opamp_operator.config import KubeSettings
from opamp_operator.kube.client import KubeApi

CRD_FILE = Path(__file__).resolve().parents[2] / "crds" / "opampagents.opamp.dev.yaml"


@pytest.fixture(scope="session")
def opampagent_crd(kube_api: k8s.ApiClient) -> str:
    """The OpAMPAgent CRD from crds/, installed (or updated) and Established."""
    manifest = yaml.safe_load(CRD_FILE.read_text())
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


@pytest.fixture
async def mirror_api(
    kubeconfig: Path, namespace: str, opampagent_crd: str
) -> AsyncIterator[KubeApi]:
    """The mirror's own async client (admin credentials), on a fresh namespace."""
    api = await KubeApi.connect(KubeSettings(namespace=namespace, kubeconfig=kubeconfig))
    try:
        yield api
    finally:
        await api.close()
