"""The test bed's servers are real: a CRD round trip through kube-apiserver, a query to Postgres."""

from __future__ import annotations

import subprocess
from pathlib import Path

import asyncpg
import pytest
from kubernetes import client as k8s

from opamp_operator.testbed.binaries import KUBERNETES_VERSION
from tests.support.gitops import wait_established

pytestmark = pytest.mark.integration

WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.testbed.opamp.dev"},
    "spec": {
        "group": "testbed.opamp.dev",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {"size": {"type": "integer"}},
                            }
                        },
                    }
                },
            }
        ],
    },
}


def test_crd_round_trip_through_kubectl(
    kube_api: k8s.ApiClient, kubeconfig: Path, namespace: str
) -> None:
    extensions = k8s.ApiextensionsV1Api(kube_api)
    try:
        extensions.create_custom_resource_definition(WIDGET_CRD)
    except k8s.ApiException as error:
        if error.status != 409:
            raise
    wait_established(kube_api, "widgets.testbed.opamp.dev")
    k8s.CustomObjectsApi(kube_api).create_namespaced_custom_object(
        "testbed.opamp.dev",
        "v1",
        namespace,
        "widgets",
        {
            "apiVersion": "testbed.opamp.dev/v1",
            "kind": "Widget",
            "metadata": {"name": "first"},
            "spec": {"size": 3},
        },
    )
    out = subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), "-n", namespace, "get", "widgets",
         "first", "-o", "jsonpath={.spec.size}"],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    assert out.stdout == "3"


def test_rbac_is_enforced(kube_api: k8s.ApiClient, namespace: str) -> None:
    """A ServiceAccount token without bindings is authenticated but forbidden."""
    core = k8s.CoreV1Api(kube_api)
    core.create_namespaced_service_account(
        namespace, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name="nobody"))
    )
    token = core.create_namespaced_service_account_token(
        "nobody",
        namespace,
        k8s.AuthenticationV1TokenRequest(spec=k8s.V1TokenRequestSpec(audiences=[])),
    ).status.token
    configuration = k8s.Configuration()
    configuration.host = kube_api.configuration.host
    configuration.ssl_ca_cert = kube_api.configuration.ssl_ca_cert
    configuration.api_key = {"authorization": f"Bearer {token}"}
    with k8s.ApiClient(configuration) as limited, pytest.raises(k8s.ApiException) as denied:
        k8s.CoreV1Api(limited).list_namespaced_pod(namespace)
    assert denied.value.status == 403


async def test_postgres_pool_runs_a_query(postgres_dsn: str) -> None:
    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=2)
    try:
        async with pool.acquire() as connection:
            assert await connection.fetchval("SELECT 40 + $1::int", 2) == 42
            version = await connection.fetchval("SHOW server_version")
        assert version.startswith("15.")
    finally:
        await pool.close()


def test_api_server_reports_its_release_version(kube_api: k8s.ApiClient) -> None:
    """`go build` alone leaves /version at v0.0.0-master, which version checks (Helm's
    kubeVersion, kubectl's skew warning) refuse: the test bed stamps the release it built."""
    info = k8s.VersionApi(kube_api).get_code()
    major, minor = KUBERNETES_VERSION.removeprefix("v").split(".")[:2]
    assert (info.git_version, info.major, info.minor) == (KUBERNETES_VERSION, major, minor)
