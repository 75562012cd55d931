"""One WebSocket message's bytes to an AgentToServer, or the close it earns: the rules both
framings (websocket.py, ownws.py) apply before the fleet sees the message."""

from __future__ import annotations

from typing import NamedTuple

from opamp_operator.opamp.errors import FrameError, MalformedMessage
from opamp_operator.opamp.frames import decode_ws_frame
from opamp_operator.opamp.messages import AgentToServer, parse_agent_to_server

from .instanceuid import MISMATCH, mismatch_detail

_PROTOCOL_ERROR, _INVALID_DATA, _POLICY_VIOLATION = 1002, 1007, 1008


class Rejection(NamedTuple):
    """Close with `code` and `detail`; `reason` is the opamp_bad_input_total label."""

    reason: str
    code: int
    detail: str


def read_message(
    data: bytes, header_uid: bytes | None, allowed: set[bytes] | None
) -> AgentToServer | Rejection:
    """The message, unless its OpAMP header or protobuf is broken (1002/1007) or it speaks
    for a uid the upgrade's OpAMP-Instance-UID header did not name (`allowed`, 1008)."""
    try:
        message = parse_agent_to_server(decode_ws_frame(data))
    except FrameError as error:
        return Rejection(error.reason, _PROTOCOL_ERROR, str(error))
    except MalformedMessage:
        return Rejection("malformed_message", _INVALID_DATA, "AgentToServer does not decode")
    if allowed is not None and bytes(message.instance_uid) not in allowed:
        assert header_uid is not None
        detail = mismatch_detail(header_uid, bytes(message.instance_uid))
        return Rejection(MISMATCH, _POLICY_VIOLATION, detail)
    return message
