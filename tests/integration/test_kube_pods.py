"""Pod metadata and pod linking against the real kube-apiserver and its RBAC.

The linker runs in-process with a real fleet; its Pod client holds nothing but a
ServiceAccount token, allowed to read Pods only where a RoleBinding says so: the least
privilege docs/kubernetes.md describes.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from kubernetes import client as k8s

from opamp_operator.config import FleetSettings, KubeSettings
from opamp_operator.fleet.clock import SystemClock
from opamp_operator.fleet.events import EventBus
from opamp_operator.fleet.registry import Fleet
from opamp_operator.kube.api import ApiSession, Credentials, load_credentials
from opamp_operator.kube.api.credentials import load_configuration
from opamp_operator.kube.api.errors import KubeApiError
from opamp_operator.kube.api.pods import ACCEPT_LIST, PodApi, pods_path
from opamp_operator.kube.pods.linker import PodLinker
from opamp_operator.kube.pods.podcache import NamespaceWatch
from opamp_operator.kube.shapes.podref import LinkReason, PodLinks
from opamp_operator.opamp.generated import anyvalue_pb2, opamp_pb2
from tests.support.manifests import token_for
from tests.support.polling import eventually
from tests.unit.test_fleet import FakeChannel

pytestmark = pytest.mark.integration

RBAC_PROPAGATION_SECONDS = 20.0


def make_namespace(kube_api: k8s.ApiClient) -> str:
    name = f"pods-{uuid.uuid4().hex[:8]}"
    k8s.CoreV1Api(kube_api).create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
    return name


def make_pod(kube_api: k8s.ApiClient, namespace: str, name: str) -> str:
    body = k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name=name),
        spec=k8s.V1PodSpec(
            containers=[
                k8s.V1Container(
                    name="c", image="x", env=[k8s.V1EnvVar(name="PASSWORD", value="hunter2")]
                )
            ]
        ),
    )
    return str(k8s.CoreV1Api(kube_api).create_namespaced_pod(namespace, body).metadata.uid)


@pytest.fixture
async def admin_pods(kubeconfig: Path) -> AsyncIterator[PodApi]:
    api = PodApi(ApiSession(await load_credentials(kubeconfig)), watch_timeout_seconds=5)
    await api.start()
    try:
        yield api
    finally:
        await api.close()


async def test_pod_watch_reads_metadata_only_and_sees_deletions(
    admin_pods: PodApi, kube_api: k8s.ApiClient, namespace: str
) -> None:
    """The Pod watch is the operator's one Informer over Pods' metadata (podcache.py)."""
    uid = make_pod(kube_api, namespace, "p1")
    found = await admin_pods.get(namespace, "p1")
    assert found is not None and (found.uid, found.name, found.namespace) == (uid, "p1", namespace)
    assert await admin_pods.get(namespace, "missing") is None

    gone: list[str] = []
    watch = NamespaceWatch(
        admin_pods, namespace, on_gone=lambda pod: gone.append(pod.uid), on_listed=lambda _: None
    )
    watch.start()
    try:
        await asyncio.wait_for(watch.listed.wait(), 10)
        assert watch.synced and list(watch.pods) == [uid]
        k8s.CoreV1Api(kube_api).delete_namespaced_pod("p1", namespace)
        await eventually("the DELETED event", lambda: gone == [uid], within=10)
        assert watch.recently_gone(uid) and not watch.pods
    finally:
        await watch.stop()

    # What the API server sends carries no spec (env values can be secrets).
    make_pod(kube_api, namespace, "p2")
    raw = await admin_pods.session.get(pods_path(namespace), accept=ACCEPT_LIST)
    assert raw["kind"] == "PartialObjectMetadataList"
    assert "spec" not in raw["items"][0] and "hunter2" not in str(raw)


async def test_least_privilege_links_where_allowed_and_says_why_elsewhere(
    kube_api: k8s.ApiClient, kubeconfig: Path, namespace: str
) -> None:
    allowed, locked = make_namespace(kube_api), make_namespace(kube_api)
    allowed_uid = make_pod(kube_api, allowed, "collector-0")
    locked_uid = make_pod(kube_api, locked, "collector-0")
    rbac = k8s.RbacAuthorizationV1Api(kube_api)
    core = k8s.CoreV1Api(kube_api)
    core.create_namespaced_service_account(
        namespace, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name="linker"))
    )
    role = f"pod-reader-{namespace}"
    rbac.create_cluster_role(
        k8s.V1ClusterRole(
            metadata=k8s.V1ObjectMeta(name=role),
            rules=[
                k8s.V1PolicyRule(
                    api_groups=[""], resources=["pods"], verbs=["get", "list", "watch"]
                )
            ],
        )
    )

    def bind(where: str) -> None:
        rbac.create_namespaced_role_binding(
            where,
            k8s.V1RoleBinding(
                metadata=k8s.V1ObjectMeta(name="opamp-operator-pods"),
                role_ref=k8s.V1RoleRef(
                    api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=role
                ),
                subjects=[
                    k8s.RbacV1Subject(kind="ServiceAccount", name="linker", namespace=namespace)
                ],
            ),
        )

    bind(allowed)
    configuration = load_configuration(kubeconfig)
    configuration.cert_file = configuration.key_file = None  # the token alone
    configuration.api_key = {"authorization": f"Bearer {token_for(kube_api, namespace, 'linker')}"}
    api = PodApi(ApiSession(Credentials.from_configuration(configuration)))
    await api.start()
    await eventually(
        f"listing Pods in {allowed} allowed",
        lambda: api.session.list(pods_path(allowed), accept=ACCEPT_LIST),
        within=RBAC_PROPAGATION_SECONDS,
        every=0.2,
        ignoring=(KubeApiError,),
    )

    bus, links = EventBus(), PodLinks()
    fleet = Fleet(FleetSettings(), SystemClock(), bus)
    settings = KubeSettings(namespace=namespace, retry_max_seconds=1.0)
    linker = PodLinker(settings, fleet, bus.subscribe("pods"), api, links)
    await linker.start()
    try:
        agents = {}
        for where, uid in ((allowed, allowed_uid), (locked, locked_uid)):
            agents[where] = connect(fleet, uid, "collector-0", where)

        def reason(where: str) -> LinkReason | None:
            link = links.get(agents[where])
            return None if link is None else link.reason

        await eventually(
            "linked where allowed",
            lambda: reason(allowed) is LinkReason.LINKED,
            within=15,
            every=0.05,
        )
        await eventually(
            "forbidden elsewhere",
            lambda: reason(locked) is LinkReason.FORBIDDEN,
            within=15,
            every=0.05,
        )
        link = links.get(agents[locked])
        assert link is not None and f"namespace {locked}" in link.message

        bind(locked)  # the administrator grants it there too: linked without a reconnect
        await eventually(
            "linked once allowed",
            lambda: reason(locked) is LinkReason.LINKED,
            within=30,
            every=0.05,
        )

        core.delete_namespaced_pod("collector-0", locked)
        await eventually(
            "pod_deleted", lambda: reason(locked) is LinkReason.POD_DELETED, within=15, every=0.05
        )
        snapshot = fleet.get(agents[locked])
        assert snapshot is not None and snapshot.phase_reason == "pod_deleted"
        assert reason(allowed) is LinkReason.LINKED
    finally:
        await linker.stop()
        rbac.delete_cluster_role(role)


def connect(fleet: Fleet, pod_uid: str, pod_name: str, namespace: str) -> str:
    uid = uuid.uuid4()
    message = opamp_pb2.AgentToServer(instance_uid=uid.bytes)
    attributes = {"k8s.pod.uid": pod_uid, "k8s.pod.name": pod_name, "k8s.namespace.name": namespace}
    for key, value in attributes.items():
        message.agent_description.identifying_attributes.append(
            anyvalue_pb2.KeyValue(key=key, value=anyvalue_pb2.AnyValue(string_value=value))
        )
    fleet.handle_message(FakeChannel(), message)
    return str(uid)
