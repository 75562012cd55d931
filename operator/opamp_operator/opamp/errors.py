"""Exceptions raised by the protocol layer.

Each carries a short, stable `reason` string that callers can use as a metric
label or log field without parsing the message text.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Bytes from a peer that do not form a valid OpAMP message."""

    reason: str = "protocol_error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class FrameError(ProtocolError):
    """A WebSocket message whose OpAMP header is missing, cut short or unknown."""

    reason = "bad_frame"


class MalformedMessage(ProtocolError):
    """A payload that does not decode as the expected protobuf message."""

    reason = "malformed_message"


class InvalidInstanceUid(ProtocolError):
    """An instance_uid that is not exactly 16 bytes."""

    reason = "invalid_instance_uid"
