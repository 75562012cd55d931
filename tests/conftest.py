"""Session fixtures: one real control plane and one real PostgreSQL for the whole run."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from opamp_operator.testbed.controlplane import ControlPlane, ControlPlaneEndpoints
from opamp_operator.testbed.postgres import PostgresEndpoint, PostgresServer

CRD_FILE = Path(__file__).resolve().parents[1] / "crds" / "opampagents.opamp.dev.yaml"


@pytest.fixture(scope="session")
def controlplane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    plane = ControlPlane(tmp_path_factory.mktemp("controlplane"))
    try:
        plane.start()
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def controlplane_endpoints(controlplane: ControlPlane) -> ControlPlaneEndpoints:
    assert controlplane.endpoints is not None
    return controlplane.endpoints


@pytest.fixture(scope="session")
def kubeconfig(controlplane_endpoints: ControlPlaneEndpoints) -> Path:
    return controlplane_endpoints.kubeconfig


@pytest.fixture(scope="session")
def kube_api(kubeconfig: Path) -> Iterator[k8s.ApiClient]:
    api = k8s_config.new_client_from_config(config_file=str(kubeconfig))
    try:
        yield api
    finally:
        api.close()


@pytest.fixture
def namespace(kube_api: k8s.ApiClient) -> str:
    """A fresh namespace per test (never deleted: no namespace controller runs here)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    k8s.CoreV1Api(kube_api).create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
    return name


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture
def postgres(postgres_server: PostgresServer) -> PostgresEndpoint:
    """A fresh, empty database per test on the shared server."""
    return postgres_server.create_database(f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def postgres_dsn(postgres: PostgresEndpoint) -> str:
    return postgres.dsn


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
