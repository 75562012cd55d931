"""What the listener and its users need of an open WebSocket, whichever framing carries it."""

from __future__ import annotations

from typing import Protocol

from opamp_operator.fleet.model import Transport
from opamp_operator.opamp.messages import ServerToAgent


class WsChannel(Protocol):
    """An agent's open WebSocket: `websocket.WebSocketChannel` or `ownws.OwnChannel`."""

    @property
    def transport(self) -> Transport: ...

    @property
    def remote_addr(self) -> str: ...

    @property
    def service_account(self) -> str | None: ...

    async def send(self, message: ServerToAgent) -> None:
        """Send one ServerToAgent; raises once the connection is closing."""
        ...

    def offer(self, message: ServerToAgent) -> bool:
        """Send a server-initiated message without blocking; False once closing."""
        ...

    def request_close(self, reason: str) -> None:
        """Close with 1001 (operator leaving) or 1000, and `reason` for the fleet."""
        ...

    def close(self, code: int, text: str, reason: str) -> None:
        """Close with `code` and `text`; `reason` is what the fleet is told. Idempotent."""
        ...

    async def finish(self) -> None:
        """Close normally unless closing already; return once the socket is gone."""
        ...
