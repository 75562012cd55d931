"""Agents in the cluster are linked to their Pod; a deleted Pod leaves no ghost agent.

The whole operator runs against the test bed's kube-apiserver, where Pod objects are enough
(no kubelet: a Pod is never scheduled, and deleting it removes it at once). The agents are
the opamp-go test agent reporting a Pod's uid, name, namespace and Deployment. The Pods live
in a namespace of their own, not the operator's, as they would in a real cluster.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any, TypedDict

import asyncpg
import pytest
from kubernetes import client as k8s

from opamp_operator.kube.shapes.naming import resource_name
from tests.e2e.conftest import OperatorFactory
from tests.e2e.helpers import get_agent_cr
from tests.support.goagent import GoAgent
from tests.support.operator_process import OperatorProcess, kubectl, metric_value
from tests.support.polling import eventually, grows

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

HEARTBEAT_TIMEOUT = 30.0  # far above what "at once" may take


def make_namespace(kube_api: k8s.ApiClient) -> str:
    name = f"pods-{uuid.uuid4().hex[:8]}"
    k8s.CoreV1Api(kube_api).create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
    return name


def make_pod(kube_api: k8s.ApiClient, namespace: str, name: str) -> str:
    """A Pod object (never scheduled here); returns its uid."""
    body = k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name=name, labels={"app": "collector"}),
        spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="otelcol", image="otelcol:0")]),
    )
    created = k8s.CoreV1Api(kube_api).create_namespaced_pod(namespace, body)
    return str(created.metadata.uid)


def delete_pod(kube_api: k8s.ApiClient, namespace: str, name: str) -> None:
    k8s.CoreV1Api(kube_api).delete_namespaced_pod(name, namespace)


class PodAttributes(TypedDict, total=False):
    id_attrs: dict[str, str]
    attrs: dict[str, str]


def pod_attributes(uid: str, name: str, namespace: str) -> PodAttributes:
    """GoAgent.start keyword arguments: the uid identifying, the rest non-identifying."""
    return {
        "id_attrs": {"k8s.pod.uid": uid},
        "attrs": {
            "k8s.pod.name": name,
            "k8s.namespace.name": namespace,
            "k8s.deployment.name": "collector",
        },
    }


async def start_operator(factory: OperatorFactory, *extra: str) -> OperatorProcess:
    operator = factory(
        heartbeat_timeout=HEARTBEAT_TIMEOUT, error_after_offline=120.0, extra_args=list(extra)
    )
    await operator.start()
    return operator


def cr_of(kubeconfig: Path, namespace: str, agent_id: str) -> dict[str, Any] | None:
    return get_agent_cr(kubeconfig, namespace, resource_name(agent_id))


async def wait_for_pod_status(
    kubeconfig: Path, namespace: str, agent_id: str, reason: str, within: float = 30
) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        cr = cr_of(kubeconfig, namespace, agent_id)
        pod = (cr or {}).get("status", {}).get("pod") or {}
        return cr if pod.get("reason") == reason else None

    return await eventually(f"status.pod.reason={reason} on {agent_id}", probe, within=within)


async def transitions(dsn: str, agent_id: str) -> list[tuple[Any, ...]]:
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT from_status, to_status, reason FROM agent_state_transitions"
            " WHERE agent_id = $1 ORDER BY id",
            agent_id,
        )
        return [tuple(row) for row in rows]
    finally:
        await connection.close()


async def test_linked_agent_goes_offline_at_once_when_its_pod_is_deleted(
    operator_factory: OperatorFactory,
    kubeconfig: Path,
    namespace: str,
    kube_api: k8s.ApiClient,
    postgres_dsn: str,
) -> None:
    pods_ns = make_namespace(kube_api)
    pod_uid = make_pod(kube_api, pods_ns, "collector-7d9f-abcde")
    operator = await start_operator(operator_factory)
    linked_id, outside_id = str(uuid.uuid4()), str(uuid.uuid4())
    async with GoAgent() as agent, GoAgent() as outside:
        await agent.start(
            url=operator.ws_url, instance_uid=linked_id, service_name="collector", heartbeat=1,
            **pod_attributes(pod_uid, "collector-7d9f-abcde", pods_ns),
        )  # fmt: skip
        await outside.start(url=operator.ws_url, instance_uid=outside_id, service_name="laptop",
                            heartbeat=1)  # fmt: skip

        # The link: status.pod, labels, the Pod column.
        cr = await wait_for_pod_status(kubeconfig, namespace, linked_id, "linked")
        assert cr["status"]["pod"] == {
            "name": "collector-7d9f-abcde",
            "namespace": pods_ns,
            "uid": pod_uid,
            "linked": True,
            "reason": "linked",
            "message": f"Pod {pods_ns}/collector-7d9f-abcde exists",
            "workloadKind": "Deployment",
            "workloadName": "collector",
        }
        labels = cr["metadata"]["labels"]
        assert labels["opamp.dev/k8s-namespace"] == pods_ns
        assert labels["opamp.dev/k8s-workload"] == "collector"
        assert labels["opamp.dev/k8s-workload-kind"] == "Deployment"
        selector = f"opamp.dev/k8s-namespace={pods_ns},opamp.dev/k8s-workload=collector"
        selected = kubectl(kubeconfig, "-n", namespace, "get", "opampagents", "-l", selector,
                           "-o", "name")  # fmt: skip
        assert selected.split() == [f"opampagent.opamp.dev/{resource_name(linked_id)}"]
        table = kubectl(kubeconfig, "-n", namespace, "get", "opampagents").splitlines()
        assert table[0].split()[-1] == "POD"
        row = next(line.split() for line in table if resource_name(linked_id) in line)
        assert (row[1], row[-1]) == ("Online", "collector-7d9f-abcde")
        wide = kubectl(kubeconfig, "-n", namespace, "get", "opampagents", "-o", "wide")
        assert "POD NAMESPACE" in wide and pods_ns in wide

        # The agent outside the cluster is as before: no status.pod, no pod labels.
        plain = await eventually(
            "the outside agent's CR", lambda: _online(kubeconfig, namespace, outside_id), within=30
        )
        assert "pod" not in plain["status"]
        assert not any(key.startswith("opamp.dev/k8s-") for key in plain["metadata"]["labels"])

        # The agent stops talking (its node is gone, say) and its Pod is deleted: Offline
        # with pod_deleted at once, not after the 30 s heartbeat timeout.
        agent.freeze()
        started = time.monotonic()
        delete_pod(kube_api, pods_ns, "collector-7d9f-abcde")

        async def offline() -> dict[str, Any] | None:
            status: dict[str, Any] = await operator.get_json(f"/api/v1/agents/{linked_id}/status")
            return status if status["phase"] == "Offline" else None

        status = await eventually("the agent Offline", offline, within=10, every=0.1)
        took = time.monotonic() - started
        assert status["reason"] == "pod_deleted"
        assert took < 5, f"Offline after {took:.1f}s"

        # Its CR goes: the operator deletes it (there is no garbage collector here).
        await eventually(
            "the CR of the agent whose Pod is gone deleted",
            lambda: _absent(kubeconfig, namespace, linked_id),
            within=10,
        )
        about = f"involvedObject.name={resource_name(linked_id)}"
        events = kubectl(kubeconfig, "-n", namespace, "get", "events", "-o", "json",
                         "--field-selector", about)  # fmt: skip
        reasons = [item["reason"] for item in json.loads(events)["items"]]
        assert "pod_deleted" in reasons, reasons
        steps = await eventually(
            "pod_deleted in the transition log",
            lambda: _has_step(postgres_dsn, linked_id, ("online", "offline", "pod_deleted")),
            within=5,
        )
        assert steps[0] == (None, "online", "connected")
        metrics = await operator.metrics_text()
        assert 'opamp_kube_pod_deleted_total{target="agent"} 1.0' in metrics

        # The agent outside the cluster did not notice.
        assert (await _online(kubeconfig, namespace, outside_id)) is not None

        # Should the process live on and connect again, it is a live agent with a new CR
        # that says its Pod is not there (no labels).
        agent.thaw()
        cr = await wait_for_pod_status(kubeconfig, namespace, linked_id, "pod_not_found")
        assert cr["status"]["phase"] == "Online"
        assert cr["status"]["pod"]["linked"] is False
        assert not any(key.startswith("opamp.dev/k8s-") for key in cr["metadata"]["labels"])


async def test_claims_that_do_not_hold_up_are_not_linked_and_say_why(
    operator_factory: OperatorFactory, kubeconfig: Path, namespace: str, kube_api: k8s.ApiClient
) -> None:
    pods_ns = make_namespace(kube_api)
    real_uid = make_pod(kube_api, pods_ns, "collector-0")
    # A Pod whose agent is linked: deleted after collector-0, it shows when the linker has
    # seen collector-0's deletion (one watch of the namespace, events in order).
    marker_uid = make_pod(kube_api, pods_ns, "marker")
    operator = await start_operator(operator_factory)
    cases: dict[str, PodAttributes] = {
        "pod_uid_mismatch": pod_attributes(str(uuid.uuid4()), "collector-0", pods_ns),
        "pod_not_found": pod_attributes(str(uuid.uuid4()), "collector-gone", pods_ns),
        "incomplete_attributes": {"id_attrs": {"k8s.pod.uid": real_uid}},
    }
    ids = {reason: str(uuid.uuid4()) for reason in cases}
    agents = [GoAgent() for _ in range(len(cases) + 1)]
    marker_id, marker = str(uuid.uuid4()), agents[-1]
    try:
        for agent, (reason, attributes) in zip(agents[:-1], cases.items(), strict=True):
            await agent.start(url=operator.ws_url, instance_uid=ids[reason], heartbeat=1,
                              **attributes)  # fmt: skip
        await marker.start(url=operator.ws_url, instance_uid=marker_id, heartbeat=1,
                           **pod_attributes(marker_uid, "marker", pods_ns))  # fmt: skip
        await wait_for_pod_status(kubeconfig, namespace, marker_id, "linked")
        for reason, agent_id in ids.items():
            cr = await wait_for_pod_status(kubeconfig, namespace, agent_id, reason)
            pod = cr["status"]["pod"]
            assert pod["linked"] is False and pod["message"], pod
            assert cr["status"]["phase"] == "Online"
            assert not any(k.startswith("opamp.dev/k8s-") for k in cr["metadata"]["labels"])
        mismatch = cr_of(kubeconfig, namespace, ids["pod_uid_mismatch"])
        assert mismatch is not None and real_uid in mismatch["status"]["pod"]["message"]
        incomplete = cr_of(kubeconfig, namespace, ids["incomplete_attributes"])
        assert incomplete is not None
        assert "k8s.pod.name" in incomplete["status"]["pod"]["message"]
        # Deleting the Pod someone else runs in changes nothing for them.
        gone = operator.metric("opamp_kube_pod_deleted_total", target="agent")
        before = await gone()
        delete_pod(kube_api, pods_ns, "collector-0")
        delete_pod(kube_api, pods_ns, "marker")
        await grows("the linker to see the marker Pod go", gone, since=before)
        assert await gone() == before + 1  # the marker's agent, and nobody else
        for agent_id in ids.values():
            assert await _online(kubeconfig, namespace, agent_id) is not None
    finally:
        for agent in agents:
            await agent.kill()


async def test_linking_turned_off_links_nothing(
    operator_factory: OperatorFactory, kubeconfig: Path, namespace: str, kube_api: k8s.ApiClient
) -> None:
    pods_ns = make_namespace(kube_api)
    pod_uid = make_pod(kube_api, pods_ns, "collector-1")
    operator = await start_operator(operator_factory, "--link-pods", "false")
    agent_id = str(uuid.uuid4())
    async with GoAgent() as agent:
        await agent.start(url=operator.ws_url, instance_uid=agent_id, heartbeat=1,
                          **pod_attributes(pod_uid, "collector-1", pods_ns))  # fmt: skip
        cr = await eventually(
            "the agent Online", lambda: _online(kubeconfig, namespace, agent_id), within=30
        )
        assert cr["status"]["agent"]["identifyingAttributes"]["k8s.pod.uid"] == pod_uid
        delete_pod(kube_api, pods_ns, "collector-1")
        # Nothing could act on the deletion: no Pod is watched at all (with linking on, the
        # claim above would have started a watch of its namespace, and the linker is the
        # only component that acts on a Pod going).
        text = await operator.metrics_text()
        assert metric_value(text, "opamp_kube_pod_watches") == 0
        assert metric_value(text, "opamp_kube_watches_open", {"resource": "pods"}) == 0
        after = await _online(kubeconfig, namespace, agent_id)
        assert after is not None, "the agent must stay Online and keep its CR"
        assert "pod" not in after["status"]
        assert not any(k.startswith("opamp.dev/k8s-") for k in after["metadata"]["labels"])
    metrics = await operator.metrics_text()
    assert "opamp_kube_pod_link_checks_total{" not in metrics


async def test_pod_deleted_while_the_operator_was_down_removes_the_ghost_cr(
    operator_factory: OperatorFactory, kubeconfig: Path, namespace: str, kube_api: k8s.ApiClient
) -> None:
    """No process holds the agent any more, only its CR remembers the link."""
    pods_ns = make_namespace(kube_api)
    pod_uid = make_pod(kube_api, pods_ns, "collector-2")
    operator = await start_operator(operator_factory)
    agent_id = str(uuid.uuid4())
    async with GoAgent() as agent:
        await agent.start(url=operator.ws_url, instance_uid=agent_id, heartbeat=1,
                          **pod_attributes(pod_uid, "collector-2", pods_ns))  # fmt: skip
        await wait_for_pod_status(kubeconfig, namespace, agent_id, "linked")
        await operator.kill()  # a crash: the CR still says Online, linked
        await agent.kill()
    delete_pod(kube_api, pods_ns, "collector-2")
    assert cr_of(kubeconfig, namespace, agent_id) is not None

    await operator.start()
    await eventually(
        "the ghost CR deleted after the restart",
        lambda: _absent(kubeconfig, namespace, agent_id),
        within=30,
    )
    metrics = await operator.metrics_text()
    assert 'opamp_kube_pod_deleted_total{target="cr"} 1.0' in metrics


async def _online(kubeconfig: Path, namespace: str, agent_id: str) -> dict[str, Any] | None:
    cr = cr_of(kubeconfig, namespace, agent_id)
    return cr if cr is not None and cr.get("status", {}).get("phase") == "Online" else None


async def _absent(kubeconfig: Path, namespace: str, agent_id: str) -> bool:
    return cr_of(kubeconfig, namespace, agent_id) is None


async def _has_step(dsn: str, agent_id: str, step: tuple[str, str, str]) -> list[Any] | None:
    steps = await transitions(dsn, agent_id)
    return steps if step in steps else None
