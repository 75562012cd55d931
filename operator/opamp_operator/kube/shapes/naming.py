"""Names and labels of OpAMPAgent resources: always valid, stable for the same input."""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Mapping
from typing import Final

from opamp_operator.fleet.model import AgentSnapshot

GROUP: Final = "opamp.dev"
VERSION: Final = "v1alpha1"
PLURAL: Final = "opampagents"
KIND: Final = "OpAMPAgent"
API_VERSION: Final = f"{GROUP}/{VERSION}"
CONFIG_PLURAL: Final = "opampagentconfigs"
CONFIG_KIND: Final = "OpAMPAgentConfig"
# Set it to any new value (e.g. a timestamp) to make the agent reconnect, once per value.
RECONNECT_ANNOTATION: Final = "opamp.dev/reconnect-requested-at"

NAME_PREFIX: Final = "agent-"

LABEL_SERVICE_NAME: Final = "opamp.dev/service-name"
LABEL_SERVICE_VERSION: Final = "opamp.dev/service-version"
LABEL_HOST_NAME: Final = "opamp.dev/host-name"
LABEL_INSTANCE_UID: Final = "opamp.dev/instance-uid"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
# For agents linked to the Pod they run in (kube/shapes/podref.py): where, and which workload.
LABEL_K8S_NAMESPACE: Final = "opamp.dev/k8s-namespace"
LABEL_K8S_WORKLOAD: Final = "opamp.dev/k8s-workload"
LABEL_K8S_WORKLOAD_KIND: Final = "opamp.dev/k8s-workload-kind"
MANAGED_BY: Final = "opamp-operator"

LABEL_VALUE_MAX: Final = 63
_INVALID_LABEL_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_NON_ALNUM_ENDS = re.compile(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$")
_DIGEST_CHARS: Final = 8


def resource_name(agent_id: str) -> str:
    """The CR name for an instance uid: `agent-<lowercase hyphenated uuid>` (DNS-1123)."""
    return NAME_PREFIX + str(uuid.UUID(agent_id))


def agent_id_from_name(name: str) -> str | None:
    """The instance uid a CR name stands for, or None for names we did not make."""
    if not name.startswith(NAME_PREFIX):
        return None
    try:
        return str(uuid.UUID(name.removeprefix(NAME_PREFIX)))
    except ValueError:
        return None


def label_value(value: str | None) -> str | None:
    """`value` made into a valid label value, or None when nothing usable is left.

    Invalid characters become `_`; values longer than 63 characters are cut and end with
    a short digest of the whole value, so two long values that share a prefix still differ.
    """
    if value is None:
        return None
    cleaned = _NON_ALNUM_ENDS.sub("", _INVALID_LABEL_CHARS.sub("_", value))
    if len(cleaned) > LABEL_VALUE_MAX:
        digest = hashlib.sha256(value.encode()).hexdigest()[:_DIGEST_CHARS]
        head = _NON_ALNUM_ENDS.sub("", cleaned[: LABEL_VALUE_MAX - _DIGEST_CHARS - 1])
        cleaned = f"{head}-{digest}" if head else digest
    return cleaned or None


def agent_labels(snapshot: AgentSnapshot) -> dict[str, str]:
    """The labels a CR carries, for `kubectl get -l`; attributes that are absent are left out."""
    wanted: Mapping[str, str | None] = {
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_INSTANCE_UID: snapshot.agent_id,
        LABEL_SERVICE_NAME: snapshot.service_name,
        LABEL_SERVICE_VERSION: snapshot.service_version,
        LABEL_HOST_NAME: snapshot.host_name,
    }
    return labels_of(wanted)


def labels_of(wanted: Mapping[str, str | None]) -> dict[str, str]:
    """`wanted` as label values (`label_value`), leaving out those absent or empty."""
    labels: dict[str, str] = {}
    for key, raw in wanted.items():
        value = label_value(raw)
        if value is not None:
            labels[key] = value
    return labels
