"""GitOps writes go through the write gate, against the real kube-apiserver (no agents).

Both GitOps writes (OpAMPAgentConfig status, the reconnect record in OpAMPAgent status) are
paced with every other CR write and carry the resourceVersion their patch was computed
from. Before the gate they did neither: they went straight out, and a replica whose watch
lagged overwrote what another writer had put there since.

The stale views are made by feeding the controller, as its informer would, objects read
before someone else wrote them (a watch that lags): the controller is not started, so no
informer brings it the newer versions.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from opamp_operator.config import FleetSettings, KubeSettings
from opamp_operator.fleet.clock import SystemClock
from opamp_operator.fleet.events import EventBus
from opamp_operator.fleet.registry import Fleet
from opamp_operator.kube.api.resources import KubeApi
from opamp_operator.kube.gitops.controller import GitOpsController
from opamp_operator.kube.shapes.naming import RECONNECT_ANNOTATION, resource_name
from opamp_operator.metrics import REGISTRY
from tests.support.gitops import config_hash, config_manifest, install_crd, yaml_file

pytestmark = pytest.mark.integration

GROUP, VERSION = "opamp.dev", "v1alpha1"
RATE = 6.0  # writes per second of the gate under test


def written(kind: str, outcome: str) -> float:
    labels = {"kind": kind, "outcome": outcome}
    return REGISTRY.get_sample_value("opamp_kube_writes_total", labels) or 0.0


class Cluster:
    """Another writer: a user, GitOps tool or replica, through the official client."""

    def __init__(self, kube_api: k8s.ApiClient, namespace: str) -> None:
        self.objects = k8s.CustomObjectsApi(kube_api)
        self.namespace = namespace

    def create(self, plural: str, body: dict[str, Any]) -> dict[str, Any]:
        return dict(
            self.objects.create_namespaced_custom_object(
                GROUP, VERSION, self.namespace, plural, body
            )
        )

    def agent(self, name: str, labels: dict[str, str], annotation: str | None = None) -> None:
        metadata: dict[str, Any] = {"name": name, "labels": labels}
        if annotation is not None:
            metadata["annotations"] = {RECONNECT_ANNOTATION: annotation}
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "OpAMPAgent", "metadata": metadata}
        self.create("opampagents", {**body, "spec": {}})

    def get(self, plural: str, name: str) -> dict[str, Any]:
        return dict(
            self.objects.get_namespaced_custom_object(GROUP, VERSION, self.namespace, plural, name)
        )

    def patch(self, plural: str, name: str, body: dict[str, Any]) -> None:
        self.objects.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, plural, name, body
        )

    def patch_status(self, plural: str, name: str, status: dict[str, Any]) -> None:
        self.objects.patch_namespaced_custom_object_status(
            GROUP, VERSION, self.namespace, plural, name, {"status": status}
        )


@pytest.fixture
async def gitops(
    kubeconfig: Path, namespace: str, kube_api: k8s.ApiClient, opampagent_crd: str
) -> AsyncIterator[GitOpsController]:
    """A controller on its own gate (RATE writes/s), not started: tests feed it or start it."""
    install_crd(kube_api)
    settings = KubeSettings(
        namespace=namespace, kubeconfig=kubeconfig, replica_id="r1", writes_per_second=RATE
    )
    api = await KubeApi.connect(settings)
    fleet = Fleet(FleetSettings(), SystemClock(), EventBus())
    controller = GitOpsController(fleet, settings, api, SystemClock(), status_interval_seconds=0.1)
    try:
        yield controller
    finally:
        await controller.stop()
        await api.close()


async def until(what: str, probe: Callable[[], bool], within: float = 30.0) -> float:
    """Wait for `probe`; return when it first held (monotonic seconds)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if probe():
            return time.monotonic()
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def test_gitops_writes_are_paced_while_many_are_queued(
    gitops: GitOpsController, kube_api: k8s.ApiClient, namespace: str
) -> None:
    cluster = Cluster(kube_api, namespace)
    count = 12  # of each: config statuses and reconnect records, 2 x 12 writes in all
    agents = [resource_name(str(uuid.uuid4())) for _ in range(count)]
    for name in agents:  # not connected here: each gets an agent_not_connected record
        cluster.agent(name, {"tier": "none"}, annotation="2026-01-01T00:00:00Z")
    for number in range(count):
        manifest = config_manifest(f"c{number}", {"matchLabels": {"tier": "web"}}, yaml_file("x"))
        cluster.create("opampagentconfigs", manifest)
    before = written("reconnect", "ok"), written("config_status", "ok")

    def made() -> tuple[float, float]:  # in-process: the probe must not stall the loop
        return written("reconnect", "ok") - before[0], written("config_status", "ok") - before[1]

    await gitops.start()
    started = await until("informers synced", lambda: gitops.ready)
    finished = await until("every write made", lambda: made() == (count, count))
    # A burst of RATE writes, then RATE a second: the 2 x 12 take (24 - 6) / 6 = 3 s at least.
    # Had either kind bypassed the pace, the other's 12 alone would take only 1 s.
    assert finished - started >= (2 * count - RATE) / RATE - 0.5
    for name in agents:
        reconnect = cluster.get("opampagents", name)["status"]["reconnect"]
        assert reconnect["result"] == "agent_not_connected"
    for number in range(count):
        status = cluster.get("opampagentconfigs", f"c{number}")["status"]
        assert status["matchedAgents"] == 0
    await asyncio.sleep(0.5)
    assert made() == (count, count)  # once each


async def test_a_config_status_from_a_stale_view_is_refused_and_recomputed(
    gitops: GitOpsController, kube_api: k8s.ApiClient, namespace: str
) -> None:
    cluster = Cluster(kube_api, namespace)
    files = yaml_file("web\n")
    first, second = (resource_name(str(uuid.uuid4())) for _ in range(2))
    cluster.agent(first, {"tier": "web"})
    cluster.create(
        "opampagentconfigs", config_manifest("web", {"matchLabels": {"tier": "web"}}, files)
    )
    gitops.replace_agents([cluster.get("opampagents", first)])
    gitops.replace_configs([cluster.get("opampagentconfigs", "web")])
    gitops.resolve_now()
    assert await gitops.write_config_statuses() == 1
    seen = cluster.get("opampagentconfigs", "web")  # what the controller's watch last brought
    assert seen["status"]["configHash"] == config_hash(files)

    # Someone else writes the status after that; the controller's watch has not seen it.
    cluster.patch_status("opampagentconfigs", "web", {"configHash": "someone-elses"})
    gitops.apply_config("MODIFIED", seen)
    cluster.agent(second, {"tier": "web"})  # a second agent: the counts change
    gitops.apply_agent("ADDED", cluster.get("opampagents", second))
    gitops.resolve_now()
    conflicts = written("config_status", "conflict")
    assert await gitops.write_config_statuses() == 1

    # The patch computed from the stale view (only the counts) was refused with 409; the
    # one computed after the re-read puts every field right, the hash included.
    assert written("config_status", "conflict") - conflicts == 1
    status = cluster.get("opampagentconfigs", "web")["status"]
    assert status["matchedAgents"] == 2
    assert status["configHash"] == config_hash(files)


async def test_a_reconnect_record_from_a_stale_view_does_not_overwrite_a_newer_one(
    gitops: GitOpsController, kube_api: k8s.ApiClient, namespace: str
) -> None:
    cluster = Cluster(kube_api, namespace)
    name, value = resource_name(str(uuid.uuid4())), "2026-02-02T00:00:00Z"
    cluster.agent(name, {}, annotation=value)
    seen = cluster.get("opampagents", name)
    # The replica that holds the agent made it reconnect and recorded so; this replica's
    # watch still shows the CR from before, where nobody has handled the request.
    theirs = {"requestedAt": value, "handledAt": "2026-02-02T00:00:01Z",
              "result": "reconnect_requested", "replica": "r2"}  # fmt: skip
    cluster.patch_status("opampagents", name, {"reconnect": theirs})
    conflicts, oks = written("reconnect", "conflict"), written("reconnect", "ok")
    gitops.apply_agent("ADDED", seen)  # not connected here: "agent_not_connected"
    await asyncio.gather(*list(gitops._writes))
    assert written("reconnect", "conflict") - conflicts == 1  # the stale write was refused
    assert written("reconnect", "ok") == oks  # and, after the re-read, not made again
    assert cluster.get("opampagents", name)["status"]["reconnect"] == theirs

    # A new request, and the CR moves on before the record is written: the record is
    # written after a re-read, next to what the other writer put there.
    newer = "2026-02-03T00:00:00Z"
    cluster.patch("opampagents", name, {"metadata": {"annotations": {RECONNECT_ANNOTATION: newer}}})
    seen = cluster.get("opampagents", name)
    cluster.patch_status("opampagents", name, {"phase": "Offline"})
    gitops.apply_agent("MODIFIED", seen)
    await asyncio.gather(*list(gitops._writes))
    assert written("reconnect", "conflict") - conflicts == 2
    assert written("reconnect", "ok") - oks == 1
    status = cluster.get("opampagents", name)["status"]
    assert status["phase"] == "Offline"
    assert status["reconnect"]["requestedAt"] == newer
    assert status["reconnect"]["result"] == "agent_not_connected"
