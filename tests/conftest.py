"""Session fixtures: one real control plane and one real PostgreSQL for the whole run."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from opamp_operator.testbed.controlplane import ControlPlane, ControlPlaneEndpoints
from opamp_operator.testbed.postgres import PostgresEndpoint, PostgresServer
from tests.support.gitops import install_crd

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
    return install_crd(kube_api, CRD_FILE)
