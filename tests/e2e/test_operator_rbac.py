"""The whole operator on nothing but the manifests' ServiceAccount token, RBAC on.

Proves the Role/ClusterRole in manifests/ are enough for the operator's whole job: create
OpAMPAgents, patch their status, post Events, run Kopf, and review REST callers' tokens and
agents' Pod-bound ServiceAccount tokens.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import aiohttp
import pytest
from kubernetes import client as k8s

from opamp_operator.kube.shapes.naming import resource_name
from tests.e2e.conftest import OperatorFactory
from tests.e2e.helpers import get_agent_cr
from tests.support.goagent import GoAgent
from tests.support.manifests import (
    apply_base,
    cluster_scoped,
    kubectl,
    one,
    server_apply,
    token_kubeconfig,
)
from tests.support.manifests import token_for as service_account_token
from tests.support.operator_process import kubectl as run_kubectl
from tests.support.pod_tokens import make_pod_with_account, pod_attributes, pod_token
from tests.support.polling import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def grant_reader(kubeconfig: Path, namespace: str) -> None:
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "agent-reader", "namespace": namespace},
        "rules": [{"apiGroups": ["opamp.dev"], "resources": ["opampagents"],
                   "verbs": ["get", "list"]}],
    }  # fmt: skip
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "agent-reader", "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                    "name": "agent-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
    }  # fmt: skip
    account = {"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": "reader", "namespace": namespace}}  # fmt: skip
    server_apply(kubeconfig, [account, role, binding], dry_run=False)


async def test_operator_does_its_whole_job_on_the_manifests_service_account(
    operator_factory: OperatorFactory,
    kube_api: k8s.ApiClient,
    kubeconfig: Path,
    namespace: str,
    tmp_path: Path,
) -> None:
    objects = apply_base(kubeconfig, namespace)
    try:
        account = one(objects, "ServiceAccount")["metadata"]["name"]
        operator_token = service_account_token(kube_api, namespace, account)
        restricted = token_kubeconfig(kube_api, operator_token, tmp_path / "operator.kubeconfig")
        grant_reader(kubeconfig, namespace)
        reader_token = service_account_token(kube_api, namespace, "reader")

        pods_ns, pod_uid = make_pod_with_account(kube_api)
        agent_token = pod_token(kubeconfig, pods_ns)

        operator = operator_factory(
            api_auth=True, extra_args=["--agent-serviceaccount-tokens", "true"]
        )
        operator.config.kubeconfig = restricted
        await operator.start()
        agent_id = str(uuid.uuid4())
        async with GoAgent() as agent:
            await agent.start(url=operator.ws_url, instance_uid=agent_id, service_name="rbac",
                              heartbeat=1, token=agent_token,
                              **pod_attributes(pod_uid, pods_ns))  # fmt: skip

            async def online() -> dict[str, object] | None:
                cr = get_agent_cr(kubeconfig, namespace, resource_name(agent_id))
                return cr if cr and cr.get("status", {}).get("phase") == "Online" else None

            cr = await eventually("the CR created and its status patched", online, within=30)
            assert cr["status"]["connection"]["serviceAccount"] == f"{pods_ns}/collector"  # type: ignore[index]
            agent.freeze()  # a transition, so the operator posts an Event

            async def event_posted() -> str | None:
                out = run_kubectl(kubeconfig, "-n", namespace, "get", "events", "-o", "wide")
                return out if resource_name(agent_id) in out else None

            await eventually("an Event about the agent", event_posted, within=15)
            agent.thaw()

        status_url = f"{operator.api_url}/api/v1/agents/{agent_id}/status"
        async with aiohttp.ClientSession() as session:
            async with session.get(status_url) as anonymous:
                assert anonymous.status == 401
            headers = {"Authorization": f"Bearer {reader_token}"}
            async with session.get(status_url, headers=headers) as reader:
                assert reader.status == 200, await reader.text()
            reconnect = status_url.replace("/status", "/reconnect")
            async with session.post(reconnect, headers=headers) as denied:
                assert denied.status == 403  # the reader may not update
        log = operator.log_path.read_text()
        assert " 403" not in log and "Forbidden" not in log, "the operator was refused something"
    finally:
        for obj in objects:
            if cluster_scoped(obj):
                kubectl(kubeconfig, "delete", obj["kind"], obj["metadata"]["name"], check=False)
