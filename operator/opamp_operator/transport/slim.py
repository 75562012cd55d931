"""What an open websockets connection keeps but never uses again, dropped or made lazy.

Measured per connected agent (docs/benchmarks.md, "Memory per agent, by component"): the
handshake's headers and response (~3 KiB), and two empty deques (~0.7 KiB each: an empty
deque holds a 64-slot block). Relies on these websockets 17 internals (checked against
17.4; re-check on upgrade):
- nothing reads a connection's `request` headers or its `response` once it is OPEN, and
  the protocol's parser keeps the request (so it is emptied, not dropped);
- `drain_waiters` is only appended to, removed from and iterated;
- the Assembler's `frames.queue` is only appended to, popped from the left, extended on
  the left, tested for length and truth.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from typing import Any

from websockets.asyncio.connection import Connection


class LazyDeque:
    """A deque that exists only while it holds something: most connections have no frame
    waiting most of the time (a heartbeat every 30 s is read at once). O(1) like a deque,
    whatever a peer floods in."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: collections.deque[Any] | None = None

    def __len__(self) -> int:
        return 0 if self._items is None else len(self._items)

    def append(self, item: Any) -> None:
        if self._items is None:
            self._items = collections.deque()
        self._items.append(item)

    def extendleft(self, items: Iterable[Any]) -> None:
        if self._items is None:
            self._items = collections.deque()
        self._items.extendleft(items)
        if not self._items:
            self._items = None

    def popleft(self) -> Any:
        if self._items is None:
            raise IndexError("pop from an empty deque")
        item = self._items.popleft()
        if not self._items:
            self._items = None
        return item


def slim(connection: Connection) -> None:
    """Call once the connection is OPEN (frames may be queued already: a client may send its
    first message with the upgrade request)."""
    if connection.request is not None:
        connection.request.headers.clear()
    connection.response = None
    connection.drain_waiters = []  # type: ignore[assignment]  # the operations it gets
    frames = connection.recv_messages.frames
    lazy = LazyDeque()
    for frame in frames.queue:
        lazy.append(frame)
    frames.queue = lazy  # type: ignore[assignment]  # the operations it gets
