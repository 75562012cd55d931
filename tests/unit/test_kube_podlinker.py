"""PodLinker's bookkeeping with a real fleet and a scripted Pod API (no API server).

The API server side (listing, watching, RBAC) is covered by tests/integration/test_kube_pods.py
and the whole operator by tests/e2e/test_pods_link.py; this covers the races and paths that
are hard to provoke there: a watch gap, a GET that raced a deletion, claims that change.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from opamp_operator.config import FleetSettings, KubeSettings
from opamp_operator.fleet.clock import FakeClock
from opamp_operator.fleet.events import EventBus
from opamp_operator.fleet.model import AgentPhase
from opamp_operator.fleet.registry import Fleet
from opamp_operator.kube.api import Gone
from opamp_operator.kube.api.resources import KubeApiError
from opamp_operator.kube.pods.linker import PodLinker
from opamp_operator.kube.shapes.podref import LinkReason, PodLinks, PodMeta
from opamp_operator.opamp.generated import anyvalue_pb2, opamp_pb2
from tests.support.polling import eventually
from tests.unit.test_fleet import FakeChannel

NS = "observability"


def metadata(pod: PodMeta, version: str = "2") -> dict[str, Any]:
    owners = [{"kind": pod.owner_kind, "name": pod.owner_name, "controller": True}]
    return {"uid": pod.uid, "name": pod.name, "namespace": pod.namespace,
            "ownerReferences": owners, "resourceVersion": version}  # fmt: skip


class FakePodApi:
    """Pods per namespace, served as the API server's list and watch streams (the linker
    watches them through the operator's one Informer); watches fed by `emit`; `emit(ns,
    None)` ends a watch with 410 Gone."""

    watch_timeout_seconds = 300

    def __init__(self) -> None:
        self.session = self  # the Informer lists and watches through `api.session`
        self.pods: dict[str, dict[str, PodMeta]] = {}
        self.list_errors: dict[str, KubeApiError] = {}
        self.lists: dict[str, int] = {}
        self.gets = 0
        self.get_hook: Callable[[], None] | None = None
        self._streams: dict[str, asyncio.Queue[tuple[str, PodMeta] | None]] = {}

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def add(self, name: str, namespace: str = NS) -> PodMeta:
        pod = PodMeta(str(uuid.uuid4()), name, namespace, "ReplicaSet", f"{name}-rs")
        self.pods.setdefault(namespace, {})[pod.uid] = pod
        return pod

    async def get(self, namespace: str, name: str) -> PodMeta | None:
        self.gets += 1
        found = next((p for p in self.pods.get(namespace, {}).values() if p.name == name), None)
        if self.get_hook is not None:
            self.get_hook()
            await asyncio.sleep(0.02)  # the watch sees the DELETED before the answer arrives
        return found

    async def list(
        self, path: str, *, accept: str | None = None, label_selector: str | None = None
    ) -> tuple[list[dict[str, Any]], str]:
        namespace = _namespace(path)
        self.lists[namespace] = self.lists.get(namespace, 0) + 1
        if namespace in self.list_errors:
            raise self.list_errors[namespace]
        return [{"metadata": metadata(p, "1")} for p in self.pods.get(namespace, {}).values()], "1"

    async def watch(
        self, path: str, resource_version: str, *, timeout_seconds: int, accept: str | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        stream = self._streams.setdefault(_namespace(path), asyncio.Queue())
        while True:
            event = await stream.get()
            if event is None:
                raise Gone(410, "too old")
            kind, pod = event
            yield {"type": kind, "object": {"metadata": metadata(pod)}}

    def emit(self, namespace: str, event: tuple[str, PodMeta] | None) -> None:
        self._streams.setdefault(namespace, asyncio.Queue()).put_nowait(event)

    def delete(self, pod: PodMeta, *, tell_watch: bool = True) -> None:
        del self.pods[pod.namespace][pod.uid]
        if tell_watch:
            self.emit(pod.namespace, ("DELETED", pod))


def _namespace(path: str) -> str:
    assert path.startswith("/api/v1/namespaces/") and path.endswith("/pods"), path
    return path.split("/")[4]


@dataclass
class FakeWriter:
    marked: list[str] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)
    limiter: Any = None

    def mark(self, agent_id: str, urgent: bool = True) -> None:
        self.marked.append(agent_id)

    def retire(self, agent_id: str) -> None:
        self.retired.append(agent_id)


@dataclass
class FakeKube:
    namespace: str = "opamp-system"
    deleted: list[tuple[str, str, str | None]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)

    async def delete_agent(self, name: str, uid: str, resource_version: str | None) -> bool:
        self.deleted.append((name, uid, resource_version))
        return True

    async def post_event(self, target: Any, **fields: Any) -> None:
        self.events.append(str(fields["reason"]))


@dataclass
class Bed:
    fleet: Fleet
    api: FakePodApi
    links: PodLinks
    writer: FakeWriter
    kube: FakeKube
    linker: PodLinker

    def connect(
        self,
        attributes: dict[str, str],
        agent_id: str | None = None,
        channel: FakeChannel | None = None,
    ) -> str:
        uid = uuid.UUID(agent_id) if agent_id else uuid.uuid4()
        message = opamp_pb2.AgentToServer(instance_uid=uid.bytes, sequence_num=0)
        for key, value in attributes.items():
            message.agent_description.identifying_attributes.append(
                anyvalue_pb2.KeyValue(key=key, value=anyvalue_pb2.AnyValue(string_value=value))
            )
        self.fleet.handle_message(channel or FakeChannel(), message)
        return str(uid)

    def reason(self, agent_id: str) -> LinkReason | None:
        link = self.links.get(agent_id)
        return None if link is None else link.reason


def claim(pod: PodMeta, **extra: str) -> dict[str, str]:
    return {
        "k8s.pod.uid": pod.uid,
        "k8s.pod.name": pod.name,
        "k8s.namespace.name": pod.namespace,
        **extra,
    }


@pytest.fixture
async def bed() -> AsyncIterator[Bed]:
    bus = EventBus()
    fleet = Fleet(FleetSettings(), FakeClock(), bus)
    api, links, writer, kube = FakePodApi(), PodLinks(), FakeWriter(), FakeKube()
    settings = KubeSettings(retry_max_seconds=0.05, request_timeout_seconds=1, api_threads=2)
    linker = PodLinker(
        settings, fleet, bus.subscribe("pods"), api, links,  # type: ignore[arg-type]
        writer=writer, kube=kube, clock=fleet.clock,  # type: ignore[arg-type]
    )  # fmt: skip
    await linker.start()
    try:
        yield Bed(fleet, api, links, writer, kube, linker)
    finally:
        await linker.stop()


async def test_linked_then_deleted_pod_ends_the_agent_and_retires_its_cr(bed: Bed) -> None:
    pod = bed.api.add("collector-0")
    agent = bed.connect(claim(pod))
    await eventually(
        "linked", lambda: bed.reason(agent) is LinkReason.LINKED, within=3, every=0.005
    )
    link = bed.links.get(agent)
    assert link is not None and (link.workload_kind, link.workload_name) == (
        "ReplicaSet", "collector-0-rs",
    )  # fmt: skip
    assert bed.api.gets == 0  # answered from the namespace's listing
    assert bed.linker.watched_namespaces == [NS]

    bed.api.delete(pod)
    await eventually(
        "pod_deleted", lambda: bed.reason(agent) is LinkReason.POD_DELETED, within=3, every=0.005
    )
    snapshot = bed.fleet.get(agent)
    assert snapshot is not None
    assert (snapshot.phase, snapshot.phase_reason) == (AgentPhase.OFFLINE, "pod_deleted")
    assert bed.writer.retired == [agent]
    assert bed.linker.watched_namespaces == []  # nobody needs the namespace any more


async def test_deletion_during_a_watch_gap_is_found_by_the_next_listing(bed: Bed) -> None:
    pod, other = bed.api.add("collector-0"), bed.api.add("collector-1")
    gone, stays = bed.connect(claim(pod)), bed.connect(claim(other))
    await eventually(
        "both linked",
        lambda: bed.reason(gone) is bed.reason(stays) is LinkReason.LINKED,
        within=3,
        every=0.005,
    )
    bed.api.delete(pod, tell_watch=False)
    bed.api.emit(NS, None)  # 410 Gone: list again
    await eventually(
        "pod_deleted", lambda: bed.reason(gone) is LinkReason.POD_DELETED, within=3, every=0.005
    )
    assert bed.reason(stays) is LinkReason.LINKED
    assert bed.api.lists[NS] == 2
    assert bed.writer.retired == [gone]


async def test_a_check_that_raced_the_deletion_still_ends_the_agent(bed: Bed) -> None:
    pod = bed.api.add("collector-0")
    watcher = bed.connect(claim(pod))  # starts the namespace's watch
    await eventually(
        "linked", lambda: bed.reason(watcher) is LinkReason.LINKED, within=3, every=0.005
    )
    late = bed.api.add("collector-late")  # not in the watch's listing: checked by a GET

    def deleted_right_after_the_get() -> None:
        bed.api.get_hook = None
        bed.api.delete(late)

    bed.api.get_hook = deleted_right_after_the_get
    agent = bed.connect(claim(late))
    await eventually(
        "pod_deleted", lambda: bed.reason(agent) is LinkReason.POD_DELETED, within=3, every=0.005
    )
    assert bed.writer.retired == [agent]


async def test_a_changed_claim_moves_the_link(bed: Bed) -> None:
    first, second = bed.api.add("a"), bed.api.add("b", namespace="other")
    agent_id, channel = str(uuid.uuid4()), FakeChannel()
    bed.connect(claim(first), agent_id, channel)
    await eventually(
        "linked to a", lambda: bed.reason(agent_id) is LinkReason.LINKED, within=3, every=0.005
    )
    message = opamp_pb2.AgentToServer(instance_uid=uuid.UUID(agent_id).bytes, sequence_num=1)
    for key, value in claim(second).items():
        message.agent_description.identifying_attributes.append(
            anyvalue_pb2.KeyValue(key=key, value=anyvalue_pb2.AnyValue(string_value=value))
        )
    # On the same connection: another connection claiming another Pod while this one is
    # live would be a second agent with the same uid (fleet/identity.py), not a move.
    bed.fleet.handle_message(channel, message)
    await eventually("linked to b", lambda: (link := bed.links.get(agent_id)) is not None
        and link.linked and link.claim.namespace == "other", within=3, every=0.005)  # fmt: skip
    assert bed.linker.watched_namespaces == ["other"]
    bed.api.delete(first)  # the old Pod no longer matters
    await asyncio.sleep(0.05)
    assert bed.reason(agent_id) is LinkReason.LINKED and bed.writer.retired == []


async def test_forbidden_namespace_is_reported_and_linked_once_reading_is_allowed(bed: Bed) -> None:
    pod = bed.api.add("collector-0", namespace="locked")
    bed.api.list_errors["locked"] = KubeApiError(403, "Forbidden: pods is forbidden")
    agent = bed.connect(claim(pod))
    await eventually(
        "forbidden", lambda: bed.reason(agent) is LinkReason.FORBIDDEN, within=3, every=0.005
    )
    link = bed.links.get(agent)
    assert link is not None and "namespace locked" in link.message
    del bed.api.list_errors["locked"]  # someone adds a RoleBinding
    await eventually(
        "linked", lambda: bed.reason(agent) is LinkReason.LINKED, within=3, every=0.005
    )


async def test_agents_without_pod_attributes_are_left_alone(bed: Bed) -> None:
    agent = bed.connect({"service.name": "laptop"})
    await asyncio.sleep(0.05)
    assert bed.links.get(agent) is None and bed.writer.marked == []
    assert bed.linker.watched_namespaces == []


async def test_ghost_cr_of_an_agent_nobody_holds_is_deleted_when_its_pod_is_gone(
    bed: Bed,
) -> None:
    pod = bed.api.add("collector-0")
    agent_id = str(uuid.uuid4())
    body = {
        "metadata": {"name": f"agent-{agent_id}", "uid": "cr-uid", "resourceVersion": "7"},
        "status": {"pod": {"linked": True, "uid": pod.uid, "name": pod.name, "namespace": NS}},
    }
    bed.linker.observe_cr("ADDED", body)
    await eventually(
        "watching", lambda: bed.linker.watched_namespaces == [NS], within=3, every=0.005
    )
    await asyncio.sleep(0.05)
    assert bed.kube.deleted == []  # the Pod is there
    bed.api.delete(pod)
    await eventually("CR deleted", lambda: bed.kube.deleted, within=3, every=0.005)
    assert bed.kube.deleted == [(f"agent-{agent_id}", "cr-uid", None)]
    assert bed.kube.events == ["pod_deleted"]
    assert bed.linker.watched_namespaces == []
