"""Which event loop the process runs on: asyncio's (the default), or uvloop when asked.

Measured on the saturation benchmark (docs/benchmarks.md, 2026-12-03): uvloop handled
15,700-19,600 messages per CPU-second against 12,800-16,100 on asyncio's loop, runs that
overlap on this shared 2-core machine; not enough to make it a dependency by default, so
it is opt-in (`pip install 'opamp-operator[uvloop]'`, `--event-loop uvloop`). Kopf runs
on it too (its own CLI picks uvloop when present).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Callable
from typing import Final

log = logging.getLogger(__name__)

LOOPS: Final = ("asyncio", "uvloop")


def parse_loop(text: str) -> str:
    name = text.strip().lower()
    if name not in LOOPS:
        raise ValueError(f"event loop must be one of {', '.join(LOOPS)}: {text!r}")
    return name


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory for `asyncio.Runner`; None: asyncio's default loop."""
    if name == "asyncio":
        return None
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        log.warning("--event-loop uvloop: uvloop is not installed; running on asyncio's loop")
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory
