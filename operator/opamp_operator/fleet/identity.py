"""Telling a reconnect of one agent from a second agent presenting the same instance uid.

Cloned VMs, copied configuration files or a pod template with a fixed uid make two live
agents share an instance_uid. The specification (Connection Management, "Duplicate WebSocket
Connections") asks the server to detect this and give the newcomer a fresh uid in
`AgentIdentification.new_instance_uid`. The same situation without a duplicate is common:
an agent whose old socket is half-open (it crashed, the network dropped) reconnects before
the server noticed, so the old session still looks live.

The rule (pure, see `is_duplicate`): while the uid has a live session, a message arriving on
another connection is a duplicate only when it carries an AgentDescription whose *where and
who* (`IDENTITY_KEYS`: host, pod, service name and instance id) differs from what the live
session reported. A version or any other attribute may change across a restart and is not
compared; a message without a description (status compression) cannot tell and is taken as
the same agent reconnecting, as before. So an ordinary reconnect is never renamed; two clones
that report exactly the same host and service stay one agent (their sessions supersede each
other, and the history shows it as sessions ending with reason `superseded`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from opamp_operator.opamp.messages import AgentDescriptionView

# Attributes that say which machine, pod or service instance an agent is: they stay the same
# when the same agent restarts or reconnects, and differ between two clones. Not k8s.pod.uid:
# a StatefulSet Pod that is recreated keeps its name (and a persisted uid) but gets a new uid.
IDENTITY_KEYS: Final = (
    "host.name",
    "host.id",
    "k8s.pod.name",
    "k8s.namespace.name",
    "service.name",
    "service.namespace",
    "service.instance.id",
)

Identity = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class DuplicateUid:
    """A second live agent presented `original`'s uid; it was told to use `assigned`."""

    original: str
    assigned: str
    transport: str
    remote_addr: str
    live_identity: Identity
    newcomer_identity: Identity
    at: datetime

    def describe(self) -> str:
        theirs = ", ".join(f"{k}={v}" for k, v in self.newcomer_identity) or "no attributes"
        ours = ", ".join(f"{k}={v}" for k, v in self.live_identity) or "no attributes"
        return (
            f"a second agent ({theirs}; {self.transport} from {self.remote_addr}) presented "
            f"instance uid {self.original} while the agent holding it ({ours}) is connected; "
            f"it was assigned instance uid {self.assigned}"
        )


def identity_of(description: AgentDescriptionView | None) -> Identity | None:
    """The identity attributes the description carries (None: no description)."""
    if description is None:
        return None
    pairs = ((key, description.text(key)) for key in IDENTITY_KEYS)
    return tuple((key, value) for key, value in pairs if value is not None)


def is_duplicate(live: Identity | None, newcomer: Identity | None) -> bool:
    """Two different agents: both described, and an identity attribute present in both differs.

    An attribute only one of them reports is not compared (a newer agent may report more).
    """
    if not live or not newcomer:
        return False
    theirs = dict(live)
    return any(key in theirs and theirs[key] != value for key, value in newcomer)


def new_instance_uid() -> bytes:
    """A fresh UUIDv7 (RFC 9562): 48-bit Unix milliseconds, version 7, variant, random bits.

    Python 3.11 has no uuid.uuid7; the spec asks for v7 for assigned uids as for agents' own.
    """
    millis = time.time_ns() // 1_000_000
    raw = bytearray(millis.to_bytes(6, "big") + os.urandom(10))
    raw[6] = (raw[6] & 0x0F) | 0x70  # version 7
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    return bytes(raw)
