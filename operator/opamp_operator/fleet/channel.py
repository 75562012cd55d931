"""What the fleet needs from a transport connection: who it is, and a way to end it."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from opamp_operator.opamp.messages import ServerToAgent

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


@runtime_checkable
class PushChannel(Protocol):
    """A channel that can send a message the agent did not ask for (a WebSocket).

    Channels without `offer` (plain HTTP) get server-initiated messages in their next reply.
    """

    def offer(self, message: ServerToAgent) -> bool:
        """Queue `message` for sending; never blocks. False when the channel cannot take it."""
        ...


@runtime_checkable
class AuthenticatedChannel(Protocol):
    """A channel whose agent proved who it is with a ServiceAccount token (`namespace/name`).

    The fleet records it with the session (the CR's `status.connection.serviceAccount`).
    """

    @property
    def service_account(self) -> str | None: ...
