"""What the fleet needs from a transport connection: who it is, and a way to end it."""

from __future__ import annotations

from typing import Protocol

from .model import Transport


class Channel(Protocol):
    """One agent connection as the transport sees it (a WebSocket, or an HTTP poller)."""

    @property
    def transport(self) -> Transport: ...

    @property
    def remote_addr(self) -> str: ...

    def request_close(self, reason: str) -> None:
        """Ask the transport to end the connection soon, with `reason`; must not block."""
        ...
