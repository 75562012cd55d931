"""Polling helpers for e2e tests: wait for what a user would see."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from tests.support.operator_process import kubectl

T = TypeVar("T")


async def eventually(
    what: str, probe: Callable[[], Awaitable[T | None]], within: float, every: float = 0.25
) -> T:
    """Poll `probe` until it returns something truthy; fail naming `what` and the last value."""
    deadline = time.monotonic() + within
    last: T | None = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(every)
    raise AssertionError(f"timed out after {within}s waiting for {what}; last: {last!r}")


def get_agent_cr(kubeconfig: Path, namespace: str, name: str) -> dict[str, Any] | None:
    out = kubectl(kubeconfig, "-n", namespace, "get", "opampagents", "-o", "json")
    for item in json.loads(out)["items"]:
        if item["metadata"]["name"] == name:
            return dict(item)
    return None


def condition(cr: dict[str, Any], kind: str) -> dict[str, Any]:
    for entry in cr.get("status", {}).get("conditions", []):
        if entry["type"] == kind:
            return dict(entry)
    return {}
