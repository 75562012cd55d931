"""Which Pod an agent says it runs in, what we found, and what its CR shows (pure: no I/O).

An agent is "in the cluster" when its description carries `k8s.pod.uid` or `k8s.pod.name`
(OpenTelemetry resource conventions; identifying attributes first, then non-identifying
ones). Agents without either make no claim and pod linking leaves them alone.

A claim is verified, never trusted: the Pod named `k8s.pod.name` in `k8s.namespace.name` must
exist with the reported `k8s.pod.uid`. Only a verified link puts the namespace and workload
labels on the CR; every outcome is shown in `status.pod` with a reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Final

from opamp_operator.fleet.attributes import resource_text
from opamp_operator.kube.shapes.naming import (
    LABEL_K8S_NAMESPACE,
    LABEL_K8S_WORKLOAD,
    LABEL_K8S_WORKLOAD_KIND,
    labels_of,
)

ATTR_POD_UID: Final = "k8s.pod.uid"
ATTR_POD_NAME: Final = "k8s.pod.name"
ATTR_NAMESPACE: Final = "k8s.namespace.name"
# Owner attributes, most specific workload first (a Deployment's pods also report their
# ReplicaSet; a CronJob's also their Job).
WORKLOAD_ATTRIBUTES: Final = (
    ("k8s.deployment.name", "Deployment"),
    ("k8s.statefulset.name", "StatefulSet"),
    ("k8s.daemonset.name", "DaemonSet"),
    ("k8s.cronjob.name", "CronJob"),
    ("k8s.job.name", "Job"),
    ("k8s.replicaset.name", "ReplicaSet"),
)


class LinkReason(StrEnum):
    """`status.pod.reason`: why the agent is linked to its Pod, or why not."""

    LINKED = "linked"
    CHECKING = "checking"
    INCOMPLETE = "incomplete_attributes"
    NOT_FOUND = "pod_not_found"
    UID_MISMATCH = "pod_uid_mismatch"
    FORBIDDEN = "pods_forbidden"
    LOOKUP_FAILED = "lookup_failed"
    POD_DELETED = "pod_deleted"


@dataclass(frozen=True, slots=True)
class PodClaim:
    """What the agent reports about the Pod it runs in."""

    uid: str | None
    name: str | None
    namespace: str | None
    workload_kind: str | None = None
    workload_name: str | None = None

    @property
    def missing(self) -> tuple[str, ...]:
        """Attributes needed to verify the claim that the agent did not report."""
        wanted = ((ATTR_POD_UID, self.uid), (ATTR_POD_NAME, self.name), (ATTR_NAMESPACE,
                  self.namespace))  # fmt: skip
        return tuple(key for key, value in wanted if not value)

    @property
    def where(self) -> str:
        return f"{self.namespace or '?'}/{self.name or '?'}"


@dataclass(frozen=True, slots=True)
class PodMeta:
    """A Pod's metadata (the operator never reads specs: they may hold secrets in env)."""

    uid: str
    name: str
    namespace: str
    owner_kind: str | None = None  # the controller owner, e.g. ReplicaSet, DaemonSet
    owner_name: str | None = None

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> PodMeta | None:
        uid, name = metadata.get("uid"), metadata.get("name")
        if not uid or not name:
            return None
        owner_kind = owner_name = None
        for owner in metadata.get("ownerReferences") or ():
            if isinstance(owner, Mapping) and owner.get("controller"):
                owner_kind, owner_name = owner.get("kind"), owner.get("name")
        return cls(
            str(uid), str(name), str(metadata.get("namespace", "")),
            _text(owner_kind), _text(owner_name),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class PodLink:
    """The outcome of checking a claim: linked, or not and why."""

    claim: PodClaim
    reason: LinkReason
    message: str
    workload_kind: str | None = None
    workload_name: str | None = None

    @property
    def linked(self) -> bool:
        return self.reason is LinkReason.LINKED


def claim_of(identifying: Mapping[str, Any], non_identifying: Mapping[str, Any]) -> PodClaim | None:
    """The agent's Pod claim from its description, or None for an agent outside the cluster."""

    def attribute(key: str) -> str | None:
        return resource_text(identifying, non_identifying, key)

    uid, name = attribute(ATTR_POD_UID), attribute(ATTR_POD_NAME)
    if uid is None and name is None:
        return None
    kind = workload = None
    for key, candidate in WORKLOAD_ATTRIBUTES:
        value = attribute(key)
        if value is not None:
            kind, workload = candidate, value
            break
    return PodClaim(uid, name, attribute(ATTR_NAMESPACE), kind, workload)


def judge(claim: PodClaim, found: PodMeta | None) -> PodLink:
    """Link `claim` to `found`, the Pod of the claimed name and namespace (None: none)."""
    if claim.missing:
        return incomplete(claim)
    if found is None:
        return PodLink(
            claim, LinkReason.NOT_FOUND, f"no Pod {claim.where} (the agent reports uid {claim.uid})"
        )
    if found.uid != claim.uid:
        return PodLink(
            claim, LinkReason.UID_MISMATCH,
            f"Pod {claim.where} has uid {found.uid}, the agent reports {claim.uid}: "
            "the agent's Pod was replaced",
        )  # fmt: skip
    kind, workload = claim.workload_kind, claim.workload_name
    if workload is None and found.owner_kind is not None:
        kind, workload = found.owner_kind, found.owner_name
    return PodLink(claim, LinkReason.LINKED, f"Pod {claim.where} exists", kind, workload)


def incomplete(claim: PodClaim) -> PodLink:
    missing = ", ".join(claim.missing)
    return PodLink(claim, LinkReason.INCOMPLETE, f"cannot verify the Pod without {missing}")


def checking(claim: PodClaim) -> PodLink:
    return PodLink(claim, LinkReason.CHECKING, f"looking for Pod {claim.where}")


def forbidden(claim: PodClaim, detail: str) -> PodLink:
    return PodLink(
        claim, LinkReason.FORBIDDEN,
        f"the operator may not read Pods in namespace {claim.namespace} (grant get, list, "
        f"watch on pods there; see docs/kubernetes.md): {detail}"[:1024],
    )  # fmt: skip


def lookup_failed(claim: PodClaim, detail: str) -> PodLink:
    return PodLink(
        claim, LinkReason.LOOKUP_FAILED, f"could not look up Pod {claim.where}: {detail}"[:1024]
    )


def deleted(link: PodLink, at: datetime) -> PodLink:
    """`link` after its Pod was deleted (keeps the workload: the CR is about to go)."""
    return PodLink(
        link.claim, LinkReason.POD_DELETED,
        f"Pod {link.claim.where} was deleted at {at.strftime('%Y-%m-%dT%H:%M:%SZ')}",
        link.workload_kind, link.workload_name,
    )  # fmt: skip


def pod_status(link: PodLink | None) -> dict[str, Any] | None:
    """`status.pod` (None removes it: an agent outside the cluster, or linking turned off)."""
    if link is None:
        return None
    claim = link.claim
    status: dict[str, Any] = {
        "name": claim.name,
        "namespace": claim.namespace,
        "uid": claim.uid,
        "linked": link.linked,
        "reason": link.reason.value,
        "message": link.message,
        "workloadKind": link.workload_kind,
        "workloadName": link.workload_name,
    }
    return status


def pod_labels(link: PodLink | None) -> dict[str, str]:
    """Labels for `kubectl get -l`: only for a verified link."""
    if link is None or not link.linked:
        return {}
    wanted = {
        LABEL_K8S_NAMESPACE: link.claim.namespace,
        LABEL_K8S_WORKLOAD: link.workload_name,
        LABEL_K8S_WORKLOAD_KIND: link.workload_kind,
    }
    return labels_of(wanted)


class PodLinks:
    """The current link of every agent that claims a Pod: written by the linker, read by the
    status writer. At most one entry per agent the fleet knows (bounded by `max_agents`)."""

    def __init__(self) -> None:
        self._links: dict[str, PodLink] = {}

    def __len__(self) -> int:
        return len(self._links)

    def get(self, agent_id: str) -> PodLink | None:
        return self._links.get(agent_id)

    def set(self, agent_id: str, link: PodLink | None) -> bool:
        """Record `link` (None: forget); True when that changed anything."""
        if link is None:
            return self._links.pop(agent_id, None) is not None
        if self._links.get(agent_id) == link:
            return False
        self._links[agent_id] = link
        return True


def _text(value: object) -> str | None:
    if value is None:
        return None
    text = value.hex() if isinstance(value, bytes) else str(value)
    return text.strip() or None
