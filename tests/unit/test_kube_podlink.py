"""Pod claims from agent descriptions, their verdicts, and what the CR shows (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

from opamp_operator.kube.mirror.known import labels_patch
from opamp_operator.kube.shapes.podref import (
    LinkReason,
    PodClaim,
    PodLinks,
    PodMeta,
    claim_of,
    deleted,
    forbidden,
    judge,
    pod_labels,
    pod_status,
)

UID = "9f1c2d3e-0000-4000-8000-000000000001"
OTHER_UID = "9f1c2d3e-0000-4000-8000-000000000002"
CLAIM = PodClaim(UID, "collector-7d9f-abcde", "observability", "Deployment", "collector")


def pod(uid: str = UID, owner: tuple[str, str] | None = None) -> PodMeta:
    kind, name = owner or (None, None)
    return PodMeta(uid, "collector-7d9f-abcde", "observability", kind, name)


def test_agents_without_pod_attributes_make_no_claim() -> None:
    assert claim_of({"service.name": "x", "host.name": "node-a"}, {"os.type": "linux"}) is None
    assert claim_of({"k8s.namespace.name": "default"}, {}) is None  # a namespace alone: no pod


def test_claim_reads_identifying_attributes_first_then_the_others() -> None:
    claim = claim_of(
        {"k8s.pod.uid": UID, "k8s.namespace.name": "observability"},
        {
            "k8s.pod.name": "collector-7d9f-abcde",
            "k8s.namespace.name": "ignored",
            "k8s.replicaset.name": "collector-7d9f",
            "k8s.deployment.name": "collector",
        },
    )
    assert claim == CLAIM
    assert claim.missing == ()


def test_claim_takes_the_most_specific_workload_and_ignores_empty_values() -> None:
    claim = claim_of({"k8s.pod.name": "job-x", "k8s.job.name": "job", "k8s.cronjob.name": "cj",
                      "k8s.pod.uid": "  "}, {})  # fmt: skip
    assert claim is not None
    assert (claim.workload_kind, claim.workload_name) == ("CronJob", "cj")
    assert claim.uid is None
    assert claim.missing == ("k8s.pod.uid", "k8s.namespace.name")


def test_verdicts() -> None:
    assert judge(CLAIM, pod()).reason is LinkReason.LINKED
    assert judge(CLAIM, pod()).linked
    missing = judge(PodClaim(UID, None, None), pod())
    assert missing.reason is LinkReason.INCOMPLETE and not missing.linked
    assert "k8s.pod.name, k8s.namespace.name" in missing.message
    gone = judge(CLAIM, None)
    assert gone.reason is LinkReason.NOT_FOUND and UID in gone.message
    replaced = judge(CLAIM, pod(OTHER_UID))
    assert replaced.reason is LinkReason.UID_MISMATCH
    assert OTHER_UID in replaced.message and UID in replaced.message


def test_workload_from_the_pods_controller_when_the_agent_reports_none() -> None:
    claim = PodClaim(UID, "collector-7d9f-abcde", "observability")
    link = judge(claim, pod(owner=("DaemonSet", "node-agent")))
    assert (link.workload_kind, link.workload_name) == ("DaemonSet", "node-agent")
    reported = judge(CLAIM, pod(owner=("ReplicaSet", "collector-7d9f")))
    assert (reported.workload_kind, reported.workload_name) == ("Deployment", "collector")


def test_pod_meta_from_metadata_takes_the_controller_owner() -> None:
    meta = PodMeta.from_metadata(
        {
            "name": "p",
            "namespace": "ns",
            "uid": UID,
            "ownerReferences": [
                {"kind": "Node", "name": "n1"},
                {"kind": "ReplicaSet", "name": "rs", "controller": True},
            ],
        }
    )
    assert meta == PodMeta(UID, "p", "ns", "ReplicaSet", "rs")
    assert PodMeta.from_metadata({"name": "p"}) is None


def test_status_and_labels_of_a_linked_agent() -> None:
    link = judge(CLAIM, pod())
    assert pod_status(link) == {
        "name": "collector-7d9f-abcde",
        "namespace": "observability",
        "uid": UID,
        "linked": True,
        "reason": "linked",
        "message": "Pod observability/collector-7d9f-abcde exists",
        "workloadKind": "Deployment",
        "workloadName": "collector",
    }
    assert pod_labels(link) == {
        "opamp.dev/k8s-namespace": "observability",
        "opamp.dev/k8s-workload": "collector",
        "opamp.dev/k8s-workload-kind": "Deployment",
    }


def test_unverified_links_show_why_and_carry_no_labels() -> None:
    link = forbidden(CLAIM, "403: Forbidden")
    status = pod_status(link)
    assert status is not None and status["linked"] is False
    assert status["reason"] == "pods_forbidden" and "observability" in status["message"]
    assert pod_labels(link) == {}
    assert pod_status(None) is None and pod_labels(None) == {}


def test_pod_deleted_drops_the_labels_through_the_managed_label_patch() -> None:
    linked = judge(CLAIM, pod())
    gone = deleted(linked, datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    assert gone.reason is LinkReason.POD_DELETED
    assert gone.message.endswith("was deleted at 2026-01-02T03:04:05Z")
    patch = labels_patch(pod_labels(linked), pod_labels(gone))
    assert patch == dict.fromkeys(pod_labels(linked))


def test_links_store_reports_changes() -> None:
    links = PodLinks()
    link = judge(CLAIM, pod())
    assert links.set("a", link) is True
    assert links.set("a", judge(CLAIM, pod())) is False
    assert links.get("a") == link and len(links) == 1
    assert links.set("a", None) is True and links.set("a", None) is False
