"""The GitOps controller in-process against the real kube-apiserver (no agents).

Its informers list and watch OpAMPAgents and OpAMPAgentConfigs (with short watches, so that
resuming from a resourceVersion is exercised); the fleet is a real `Fleet` whose desired
configs are read back; OpAMPAgentConfig statuses are written for real.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client as k8s

from opamp_operator import metrics
from opamp_operator.config import FleetSettings, KubeSettings
from opamp_operator.fleet.clock import SystemClock
from opamp_operator.fleet.events import EventBus
from opamp_operator.fleet.registry import Fleet
from opamp_operator.kube.api.listwatch import Informer
from opamp_operator.kube.api.resources import KubeApi
from opamp_operator.kube.gitops.controller import GitOpsController
from opamp_operator.kube.shapes.naming import resource_name
from tests.support.gitops import config_hash, config_manifest, install_crd, yaml_file
from tests.support.polling import eventually

pytestmark = pytest.mark.integration

T = TypeVar("T")


class Cluster:
    def __init__(self, kube_api: k8s.ApiClient, namespace: str) -> None:
        self.objects = k8s.CustomObjectsApi(kube_api)
        self.namespace = namespace

    def create_agent(self, agent_id: str, labels: dict[str, str], spec: dict[str, Any]) -> None:
        body = {
            "apiVersion": "opamp.dev/v1alpha1", "kind": "OpAMPAgent",
            "metadata": {"name": resource_name(agent_id), "labels": labels}, "spec": spec,
        }  # fmt: skip
        self.objects.create_namespaced_custom_object(
            "opamp.dev", "v1alpha1", self.namespace, "opampagents", body
        )

    def patch_agent(self, agent_id: str, patch: dict[str, Any]) -> None:
        self.objects.patch_namespaced_custom_object(
            "opamp.dev", "v1alpha1", self.namespace, "opampagents", resource_name(agent_id), patch
        )

    def apply_config(self, manifest: dict[str, Any]) -> None:
        name = manifest["metadata"]["name"]
        try:
            current = self.objects.get_namespaced_custom_object(
                "opamp.dev", "v1alpha1", self.namespace, "opampagentconfigs", name
            )
        except k8s.ApiException as error:
            if error.status != 404:
                raise
            self.objects.create_namespaced_custom_object(
                "opamp.dev", "v1alpha1", self.namespace, "opampagentconfigs", manifest
            )
            return
        manifest["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        self.objects.replace_namespaced_custom_object(
            "opamp.dev", "v1alpha1", self.namespace, "opampagentconfigs", name, manifest
        )

    def delete_config(self, name: str) -> None:
        self.objects.delete_namespaced_custom_object(
            "opamp.dev", "v1alpha1", self.namespace, "opampagentconfigs", name
        )

    def config_status(self, name: str) -> dict[str, Any]:
        found = self.objects.get_namespaced_custom_object(
            "opamp.dev", "v1alpha1", self.namespace, "opampagentconfigs", name
        )
        return dict(found.get("status") or {})


@pytest.fixture
async def controller(
    kubeconfig: Path, namespace: str, kube_api: k8s.ApiClient, opampagent_crd: str
) -> AsyncIterator[tuple[GitOpsController, Fleet]]:
    install_crd(kube_api)
    settings = KubeSettings(namespace=namespace, kubeconfig=kubeconfig, replica_id="r1")
    api = await KubeApi.connect(settings)
    fleet = Fleet(FleetSettings(), SystemClock(), EventBus())
    marked: list[str] = []
    gitops = GitOpsController(
        fleet, settings, api, SystemClock(), mark=marked.append,
        status_interval_seconds=0.1,
    )  # fmt: skip
    await gitops.start()
    for informer in gitops.informers:
        informer.watch_seconds = 1  # the server ends each watch after a second: resume often
    try:
        yield gitops, fleet
    finally:
        await gitops.stop()
        await api.close()


async def test_declared_configs_reach_the_fleet_and_config_status_is_written(
    controller: tuple[GitOpsController, Fleet], kube_api: k8s.ApiClient, namespace: str
) -> None:
    gitops, fleet = controller
    cluster = Cluster(kube_api, namespace)
    web, db, own = (str(uuid.uuid4()) for _ in range(3))
    cluster.create_agent(web, {"tier": "web"}, {})
    cluster.create_agent(db, {"tier": "db"}, {})
    own_files = yaml_file("own\n")
    cluster.create_agent(own, {"tier": "web"}, {"remoteConfig": own_files})
    await eventually("both informers synced", lambda: gitops.ready, within=10, every=0.05)
    await eventually("own config", lambda: fleet.desired_config(own), within=10, every=0.05)
    assert fleet.desired_config(web) is None and fleet.desired_config(db) is None
    assert gitops.observed_generation(own) == 1

    web_files = yaml_file("web\n")
    await asyncio.sleep(1.5)  # let the first watches end: the next events come on resumed ones
    cluster.apply_config(config_manifest("web", {"matchLabels": {"tier": "web"}}, web_files))
    desired = await eventually(
        "web config", lambda: fleet.desired_config(web), within=10, every=0.05
    )
    assert desired.hash_hex == config_hash(web_files) and desired.source == "OpAMPAgentConfig/web"
    assert fleet.desired_config(db) is None
    own_desired = fleet.desired_config(own)
    assert own_desired is not None and own_desired.hash_hex == config_hash(own_files)

    status = await eventually(
        "web status",
        lambda: (
            cluster.config_status("web").get("matchedAgents") == 2 and cluster.config_status("web")
        ),
        within=10,
        every=0.05,
    )
    assert status["selectedAgents"] == 1 and status["pendingAgents"] == 1
    assert status["observedGeneration"] == 1 and status["configHash"] == config_hash(web_files)

    # Labels change: the agent moves in and out of the selection.
    cluster.patch_agent(db, {"metadata": {"labels": {"tier": "web"}}})
    await eventually("db selected", lambda: fleet.desired_config(db), within=10, every=0.05)
    cluster.patch_agent(db, {"metadata": {"labels": {"tier": "db"}}})
    await eventually("db released", lambda: fleet.desired_config(db) is None, within=10, every=0.05)

    # The agent's own spec removed: the fleet config takes over; the generation is observed.
    cluster.patch_agent(own, {"spec": {"remoteConfig": None}})
    await eventually(
        "own agent on the fleet config",
        lambda: (
            (fleet.desired_config(own) or desired).source == "OpAMPAgentConfig/web"
            and gitops.observed_generation(own) == 2
        ),
        within=10,
        every=0.05,
    )

    # The config deleted: nothing desired any more.
    cluster.delete_config("web")
    await eventually(
        "web forgotten", lambda: fleet.desired_config(web) is None, within=10, every=0.05
    )
    assert fleet.desired_config(own) is None
    assert all(informer.lists == 1 for informer in gitops.informers)  # resumed, never relisted


async def test_an_informer_relists_when_its_resource_version_is_gone(
    kubeconfig: Path, namespace: str, kube_api: k8s.ApiClient, opampagent_crd: str
) -> None:
    class Recorder:
        def __init__(self) -> None:
            self.replaced: list[list[str]] = []
            self.applied: list[tuple[str, str]] = []

        def replace(self, items: list[dict[str, Any]]) -> None:
            self.replaced.append(sorted(i["metadata"]["name"] for i in items))

        def apply(self, event_type: str, obj: dict[str, Any]) -> None:
            self.applied.append((event_type, obj["metadata"]["name"]))

    cluster = Cluster(kube_api, namespace)
    first = str(uuid.uuid4())
    cluster.create_agent(first, {}, {})
    recorder = Recorder()
    reader = await KubeApi.connect(KubeSettings(namespace=namespace, kubeconfig=kubeconfig))
    informer = Informer(reader.session, namespace, "opampagents", recorder)
    # A resourceVersion far in the past: the server answers 410 and the informer lists again.
    original = informer._list
    calls = 0

    async def list_then_expire() -> str:
        nonlocal calls
        calls += 1
        version = await original()
        return "1" if calls == 1 else version

    informer._list = list_then_expire  # type: ignore[method-assign]
    task = asyncio.create_task(informer.run())
    try:
        await eventually("two lists", lambda: len(recorder.replaced) == 2, within=10, every=0.05)
        assert recorder.replaced == [[resource_name(first)], [resource_name(first)]]
        second = str(uuid.uuid4())
        cluster.create_agent(second, {}, {})
        await eventually(
            "the new agent",
            lambda: ("ADDED", resource_name(second)) in recorder.applied,
            within=10,
            every=0.05,
        )
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await reader.close()


async def test_an_unusable_rollout_is_an_invalid_spec(
    controller: tuple[GitOpsController, Fleet], kube_api: k8s.ApiClient, namespace: str
) -> None:
    """The CRD takes any int-or-string step; the operator says which one it cannot use."""
    gitops, fleet = controller
    cluster = Cluster(kube_api, namespace)
    agent = str(uuid.uuid4())
    cluster.create_agent(agent, {"tier": "web"}, {})
    await eventually("both informers synced", lambda: gitops.ready)
    before = metrics.kube_invalid_config_specs._value.get()
    manifest = config_manifest("web", {"matchLabels": {"tier": "web"}}, yaml_file("web\n"))
    manifest["spec"]["rollout"] = {"strategy": "Progressive", "steps": [1, "150%"]}
    cluster.apply_config(manifest)

    def stalled() -> dict[str, Any] | None:
        status = cluster.config_status("web")
        found = [c for c in status.get("conditions", []) if c["type"] == "Stalled"]
        return found[0] if found and found[0]["reason"] == "InvalidSpec" else None

    found = await eventually("InvalidSpec", stalled)
    assert found["status"] == "True"
    assert found["message"] == "rollout: steps[1]: '150%' is more than 100%"
    assert fleet.desired_config(agent) is None
    assert metrics.kube_invalid_config_specs._value.get() == before + 1
