"""What this process knows of each agent's CR, as the API server last returned it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from opamp_operator.kube.shapes.agentstatus import parse_time
from opamp_operator.kube.shapes.naming import (
    LABEL_HOST_NAME,
    LABEL_K8S_NAMESPACE,
    LABEL_K8S_WORKLOAD,
    LABEL_K8S_WORKLOAD_KIND,
    LABEL_SERVICE_NAME,
    LABEL_SERVICE_VERSION,
)

# Labels that follow what the agent reports (its instance uid label never changes), and
# those of a verified Pod link (removed when the link goes).
MANAGED_LABELS = (
    LABEL_SERVICE_NAME, LABEL_SERVICE_VERSION, LABEL_HOST_NAME,
    LABEL_K8S_NAMESPACE, LABEL_K8S_WORKLOAD, LABEL_K8S_WORKLOAD_KIND,
)  # fmt: skip


@dataclass(slots=True)
class Mirror:
    name: str
    uid: str
    resource_version: str
    generation: int | None
    status_json: str  # kept as text: a few hundred bytes instead of a tree of dicts
    labels: dict[str, str]
    last_seen_written: datetime | None
    refresh_check_at: datetime  # when the sweep should next look at lastSeenAt

    @classmethod
    def from_body(cls, body: dict[str, Any], now: datetime, refresh: timedelta) -> Mirror:
        metadata = body.get("metadata", {})
        mirror = cls(
            metadata.get("name", ""), metadata.get("uid", ""), "", None, "{}", {}, None, now
        )
        mirror.update(body, refresh)
        return mirror

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = json.loads(self.status_json)
        return status

    def update(self, body: dict[str, Any], refresh: timedelta) -> None:
        """Take in the CR as a response returned it."""
        metadata = body.get("metadata", {})
        status = body.get("status") or {}
        self.resource_version = metadata.get("resourceVersion", self.resource_version)
        self.generation = metadata.get("generation", self.generation)
        labels = metadata.get("labels") or {}
        self.labels = {key: labels[key] for key in MANAGED_LABELS if key in labels}
        self.status_json = json.dumps(status, separators=(",", ":"))
        self.last_seen_written = parse_time(status.get("lastSeenAt"))
        if self.last_seen_written is not None:
            self.refresh_check_at = self.last_seen_written + refresh


def labels_patch(current: dict[str, str], wanted: dict[str, str]) -> dict[str, str | None]:
    """The merge patch of managed labels from `current` to `wanted` (None removes)."""
    return {key: wanted.get(key) for key in MANAGED_LABELS if wanted.get(key) != current.get(key)}
