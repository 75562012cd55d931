"""What starting a minimal server gives back: the port bound and how to stop."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

#: Largest message accepted, as the operator's default `max_message_bytes`.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
PATH = "/v1/opamp"


@dataclass(frozen=True)
class Running:
    port: int
    stop: Callable[[], Awaitable[None]]


def bound_port(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])


def asyncio_running(server: asyncio.Server) -> Running:
    async def stop() -> None:
        server.close()

    return Running(bound_port(server), stop)
