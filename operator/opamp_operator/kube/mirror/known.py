"""What this process knows of each agent's CR, as the API server last returned it."""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

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


# What a status usually holds, as the API server returns it (keys sorted): the preset
# dictionary its compressed text refers to. Every agent's status repeats these names and
# most values, so a status of ~1.7 KB packs into ~100-300 bytes (zlib alone: ~600); a status
# unlike this one still packs, less well. Changing it only changes how well.
_TYPICAL_STATUS: Final = {
    "agent": {
        "hostName": "host-00000",
        "identifyingAttributes": {
            "service.instance.id": "00000000-0000-4000-8000-000000000000",
            "service.name": "otelcol", "service.namespace": "default", "service.version": "1.0.0",
        },
        "nonIdentifyingAttributes": {"host.name": "host-00000", "os.type": "linux"},
        "serviceName": "otelcol", "serviceNamespace": None, "serviceVersion": "1.0.0",
    },
    "capabilities": [
        "ReportsStatus", "AcceptsRemoteConfig", "ReportsEffectiveConfig", "ReportsHealth",
        "ReportsRemoteConfig", "ReportsHeartbeat", "AcceptsRestartCommand",
    ],
    "conditions": [
        {"lastTransitionTime": "2026-01-01T00:00:00Z", "message": "connected over websocket "
         "from 10.0.0.1:40000", "observedGeneration": 1, "reason": "connected", "status": "True",
         "type": "Connected"},
        {"lastTransitionTime": "2026-01-01T00:00:00Z", "message": "running",
         "observedGeneration": 1, "reason": "reported_healthy", "status": "True",
         "type": "Healthy"},
        {"lastTransitionTime": "2026-01-01T00:00:00Z", "message": "Online and not reporting "
         "problems", "observedGeneration": 1, "reason": "online", "status": "True",
         "type": "Ready"},
        {"lastTransitionTime": "2026-01-01T00:00:00Z", "message": "", "observedGeneration": 1,
         "reason": "applied", "status": "True", "type": "RemoteConfigApplied"},
    ],
    "connection": {
        "liveness": "heartbeat", "remoteAddr": "10.0.0.1:40000", "replica": "opamp-operator-0",
        "serviceAccount": None, "transport": "websocket",
    },
    "desiredConfig": {"hash": "0000000000000000", "source": "OpAMPAgentConfig/default"},
    "disconnectReason": "connection_closed",
    "effectiveConfigHash": "0000000000000000",
    "health": {"healthy": True, "status": "running"},
    "instanceUid": "00000000-0000-4000-8000-000000000000",
    "lastConnectedAt": "2026-01-01T00:00:00Z",
    "lastDisconnectedAt": "2026-01-01T00:00:00Z",
    "lastSeenAt": "2026-01-01T00:00:00Z",
    "observedGeneration": 1,
    "phase": "Online",
    "pod": {"name": "otelcol-0", "namespace": "default", "uid": "", "workloadKind": "",
            "workloadName": ""},
    "remoteConfigStatus": {"errorMessage": "", "lastRemoteConfigHash": "", "status": "UNSET"},
}  # fmt: skip
_ZDICT: Final = json.dumps(_TYPICAL_STATUS, separators=(",", ":"), sort_keys=True).encode()
_WBITS: Final = -15  # raw deflate (no header or checksum: the text never leaves the process)


def _pack(text: str) -> bytes:
    packer = zlib.compressobj(6, zlib.DEFLATED, _WBITS, 8, zlib.Z_DEFAULT_STRATEGY, _ZDICT)
    return packer.compress(text.encode()) + packer.flush()


def _unpack(packed: bytes) -> str:
    unpacker = zlib.decompressobj(_WBITS, _ZDICT)
    return (unpacker.decompress(packed) + unpacker.flush()).decode()


@dataclass(slots=True)
class Mirror:
    name: str
    uid: str
    resource_version: str
    generation: int | None
    # Kept as compressed text (`_pack`): the status is only read back to compute the next
    # write's patch, and as text ~1.8 KB per agent, the largest thing kept per CR.
    status_packed: bytes
    labels: dict[str, str]
    last_seen_written: datetime | None
    refresh_check_at: datetime  # when the sweep should next look at lastSeenAt

    @classmethod
    def from_body(cls, body: dict[str, Any], now: datetime, refresh: timedelta) -> Mirror:
        metadata = body.get("metadata", {})
        mirror = cls(
            metadata.get("name", ""), metadata.get("uid", ""), "", None, _pack("{}"), {}, None, now
        )
        mirror.update(body, refresh)
        return mirror

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = json.loads(_unpack(self.status_packed))
        return status

    def update(self, body: dict[str, Any], refresh: timedelta) -> None:
        """Take in the CR as a response returned it."""
        metadata = body.get("metadata", {})
        status = body.get("status") or {}
        self.resource_version = metadata.get("resourceVersion", self.resource_version)
        self.generation = metadata.get("generation", self.generation)
        labels = metadata.get("labels") or {}
        self.labels = {key: labels[key] for key in MANAGED_LABELS if key in labels}
        self.status_packed = _pack(json.dumps(status, separators=(",", ":")))
        self.last_seen_written = parse_time(status.get("lastSeenAt"))
        if self.last_seen_written is not None:
            self.refresh_check_at = self.last_seen_written + refresh


def labels_patch(current: dict[str, str], wanted: dict[str, str]) -> dict[str, str | None]:
    """The merge patch of managed labels from `current` to `wanted` (None removes)."""
    return {key: wanted.get(key) for key in MANAGED_LABELS if wanted.get(key) != current.get(key)}
