"""The per-message work every minimal server does: parse, answer with the same uid, count."""

from __future__ import annotations

from opamp_operator.opamp.frames import decode_ws_frame, encode_ws_frame
from opamp_operator.opamp.generated.opamp_pb2 import AgentToServer, ServerToAgent


class Counter:
    """Messages answered since the process started (read by the SIGUSR1 report)."""

    messages = 0


def answer(payload: bytes) -> bytes:
    """One AgentToServer (no OpAMP header) in, one serialized ServerToAgent out."""
    message = AgentToServer()
    message.ParseFromString(payload)
    Counter.messages += 1
    return ServerToAgent(instance_uid=message.instance_uid).SerializeToString()


def answer_ws(frame: bytes) -> bytes:
    """The same over WebSocket: the OpAMP header (a varint 0) before each message."""
    return encode_ws_frame(answer(decode_ws_frame(frame)))
