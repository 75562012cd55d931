"""coordination.k8s.io/v1 Lease bodies of replicas, and what one tells (pure).

Each replica holds one Lease named after its replica id with `holderIdentity` = that id,
renewed every few seconds (docs/reliability.md, "Replica Leases"). A survivor adopting a
lost replica first claims its Lease: `holderIdentity` becomes the adopter's id and the
annotation keeps the lost replica's last renewal (when its sessions were last known alive).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from opamp_operator.kube.shapes.agentstatus import parse_time  # RFC 3339, any precision
from opamp_operator.kube.shapes.naming import LABEL_MANAGED_BY, MANAGED_BY

LEASE_API_VERSION: Final = "coordination.k8s.io/v1"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
COMPONENT: Final = "replica-lease"
REPLICA_LEASE_SELECTOR: Final = f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_COMPONENT}={COMPONENT}"
LOST_RENEWAL_ANNOTATION: Final = "opamp.dev/lost-replica-renewed-at"


def micro_time(moment: datetime) -> str:
    """A Lease's MicroTime: RFC 3339 with microseconds, UTC."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_body(name: str, holder: str, duration_seconds: int, now: datetime) -> dict[str, Any]:
    """A new replica Lease, held and renewed by `holder` at `now`."""
    return {
        "apiVersion": LEASE_API_VERSION,
        "kind": "Lease",
        "metadata": {
            "name": name,
            "labels": {LABEL_MANAGED_BY: MANAGED_BY, LABEL_COMPONENT: COMPONENT},
        },
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": duration_seconds,
            "acquireTime": micro_time(now),
            "renewTime": micro_time(now),
        },
    }


def renewed(
    body: dict[str, Any], holder: str, duration_seconds: int, now: datetime
) -> dict[str, Any]:
    """`body` (as read, with its resourceVersion) renewed by `holder` at `now`."""
    spec = dict(body.get("spec") or {})
    if spec.get("holderIdentity") != holder:
        spec["acquireTime"] = micro_time(now)
        spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
    spec.update(holderIdentity=holder, leaseDurationSeconds=duration_seconds)
    spec["renewTime"] = micro_time(now)
    return {**body, "spec": spec}


def claimed(
    lease: ReplicaLease, body: dict[str, Any], adopter: str, now: datetime
) -> dict[str, Any]:
    """The stale Lease `body` claimed by `adopter`, remembering the lost replica's renewal."""
    claim = renewed(body, adopter, lease.duration_seconds, now)
    metadata = dict(claim.get("metadata") or {})
    annotations = dict(metadata.get("annotations") or {})
    annotations[LOST_RENEWAL_ANNOTATION] = micro_time(lease.lost_renewal)
    metadata["annotations"] = annotations
    return {**claim, "metadata": metadata}


@dataclass(frozen=True, slots=True)
class ReplicaLease:
    """One replica's Lease as read from the API server."""

    name: str  # the replica id
    holder: str  # the replica itself, or the survivor adopting it
    renew_time: datetime
    duration_seconds: int
    resource_version: str
    uid: str
    # When the replica itself last renewed (before an adopter claimed it).
    lost_renewal: datetime

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> ReplicaLease | None:
        """None for a Lease that is not a replica's (no name or no renewal)."""
        metadata, spec = body.get("metadata") or {}, body.get("spec") or {}
        name = str(metadata.get("name") or "")
        renew = parse_time(spec.get("renewTime"))
        if not name or renew is None:
            return None
        annotations = metadata.get("annotations") or {}
        lost = parse_time(annotations.get(LOST_RENEWAL_ANNOTATION)) or renew
        return cls(
            name=name, holder=str(spec.get("holderIdentity") or ""), renew_time=renew,
            duration_seconds=int(spec.get("leaseDurationSeconds") or 0),
            resource_version=str(metadata.get("resourceVersion") or ""),
            uid=str(metadata.get("uid") or ""), lost_renewal=lost,
        )  # fmt: skip

    @property
    def expires_at(self) -> datetime:
        return self.renew_time + timedelta(seconds=self.duration_seconds)

    @property
    def claimed(self) -> bool:
        """An adopter holds it: the replica it names is lost and being adopted."""
        return self.holder != self.name

    def expired(self, now: datetime) -> bool:
        return now >= self.expires_at
