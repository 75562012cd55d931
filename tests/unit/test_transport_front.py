"""The front protocol takes any stream transport: uvloop's does not subclass asyncio.Transport."""

from __future__ import annotations

import asyncio
from typing import Any

from opamp_operator.transport.front import FrontProtocol, Refusal
from opamp_operator.transport.head import RequestHead


class DuckTransport:
    """What uvloop's TCPTransport looks like to a protocol: the methods, not the base class."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return self.closed

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True


async def test_a_transport_that_is_no_asyncio_transport_subclass_is_served() -> None:
    def dispatch(head: RequestHead, peer: str, accepted_at: float) -> Refusal:
        assert peer == "127.0.0.1:40000"
        return Refusal(404, "nothing here")

    pending: set[FrontProtocol] = set()
    front = FrontProtocol(dispatch, max_head_bytes=8192, head_timeout=5.0, pending=pending)
    transport = DuckTransport()
    assert not isinstance(transport, asyncio.Transport)
    front.connection_made(transport)  # type: ignore[arg-type]
    front.data_received(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.written.startswith(b"HTTP/1.1 404")
    assert transport.closed and not pending
