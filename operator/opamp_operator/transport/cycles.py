"""Leave nothing cyclic behind a closed connection, so reference counting frees it at once.

CPython 3.11's socket transport (`asyncio.selector_events._SelectorSocketTransport`) keeps
a bound method of itself, `_read_ready_cb`, for as long as it lives: every closed connection
is then a cycle (the transport, its dict, the method, its extra-info dict, the socket
objects: 7 objects) that only the collector can free. The operator freezes its long-lived
heap (gcpolicy.py), and the collector never walks the frozen heap, so a fleet's churn
piled these up until a thaw's full collection (run H, docs/benchmarks.md: 6.5 objects per
ended session; thaws of 0.57-1.09 s every 1,000 sessions ended). CPython 3.12 clears the
method when the transport closes (gh-100348); this does the same for 3.11, once the
transport has told its protocol the connection is lost (it reads the method no more).

TLS connections still leave a cycle on 3.11 (the socket transport under the SSL protocol
is not ours to reach): the memory rule of the collector policy bounds what they leave.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Final

_CLEARS_ITSELF: Final = sys.version_info >= (3, 12)


def release(transport: asyncio.BaseTransport | None) -> None:
    """Call from `connection_lost`: break the transport's cycle with itself (3.11)."""
    if not _CLEARS_ITSELF and getattr(transport, "_read_ready_cb", None) is not None:
        transport._read_ready_cb = None  # type: ignore[union-attr]
