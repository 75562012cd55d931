"""The `OpAMP-Instance-UID` request header: the agent's instance uid, readable before the body.

The specification asks clients to send it (the hyphenated UUID of `instance_uid`) on the
WebSocket upgrade request and on every plain-HTTP request, so that a load balancer can send
one agent to one replica by hashing a header, without decoding protobuf. The listener reads
it at routing time: a malformed or repeated header is refused (400) before the upgrade, a
message whose instance_uid disagrees with it is refused as bad input, and refusals name the
agent it claims in the log line. Absent, nothing changes (older clients do not send it).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Final

HEADER: Final = "OpAMP-Instance-UID"
MISMATCH: Final = "instance_uid_header_mismatch"


class BadUidHeader(Exception):
    """The header is there but unusable; `reason` is the opamp_bad_input_total label."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.reason = "bad_instance_uid_header"


def header_uid(values: Sequence[str]) -> bytes | None:
    """The 16 uid bytes the header names; None when it is absent."""
    if not values:
        return None
    if len(values) > 1:
        raise BadUidHeader(f"{HEADER} is repeated ({len(values)} values)")
    text = values[0].strip()
    try:
        return uuid.UUID(text).bytes
    except ValueError:
        raise BadUidHeader(f"{HEADER} is not a UUID: {text[:40]!r}") from None


def describe(uid: bytes | None) -> str:
    """` (agent <uuid>)` for log lines when the header named one, else nothing."""
    return "" if uid is None else f" (agent {uuid.UUID(bytes=uid)})"


def mismatch_detail(header: bytes, message_uid: bytes) -> str:
    claimed = str(uuid.UUID(bytes=header))
    sent = str(uuid.UUID(bytes=message_uid)) if len(message_uid) == 16 else message_uid.hex()
    return f"{HEADER} {claimed} differs from the message's instance_uid {sent}"
