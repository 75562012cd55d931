"""Recording what was done about a request annotation (reconnect, restart) in the CR status.

Both annotations work alike: set `opamp.dev/<verb>-requested-at` to a new value, the replica
holding the agent acts once per value and records `{requestedAt, handledAt, result, ...}`
in `status.<verb>`. Several replicas may record one value (the holder says what it did, the
others that the agent is not connected to them); the holder's record wins. The write goes
through the write gate as a read-modify-write, so a stale informer copy never overwrites a
newer record.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any

from opamp_operator.kube.api.resources import KubeApi, KubeApiError
from opamp_operator.kube.writes.gate import WriteGate

log = logging.getLogger(__name__)

# Throttled / unavailable record writes are tried again this many times before given up.
RECORD_RETRIES = 3

Acted = Callable[[Mapping[str, Any]], bool]  # did this record's replica act on the agent?


async def record_handled(
    gate: WriteGate,
    api: KubeApi,
    name: str,
    seen: Mapping[str, Any],
    *,
    annotation: str,
    key: str,
    record: Mapping[str, Any],
    acted: Acted,
) -> None:
    """Write `record` into `status.<key>` of OpAMPAgent `name`, unless not wanted any more."""

    def change(body: Mapping[str, Any]) -> dict[str, Any] | None:
        annotations = (body.get("metadata") or {}).get("annotations") or {}
        if annotations.get(annotation) != record["requestedAt"]:
            return None  # a newer request came meanwhile: that one gets recorded
        if _answered((body.get("status") or {}).get(key), record, acted):
            return None
        return {key: dict(record)}

    write = functools.partial(gate.patch_agent_status, name, kind=key, retries=RECORD_RETRIES)
    try:
        await gate.update(seen, functools.partial(api.get_agent, name), change, write)
    except KubeApiError as error:
        log.warning("OpAMPAgent %s: %s not recorded: %s", name, key, error)


def _answered(recorded: Mapping[str, Any] | None, ours: Mapping[str, Any], acted: Acted) -> bool:
    """`recorded` (in the CR) already answers the request `ours` would record."""
    if not recorded or recorded.get("requestedAt") != ours["requestedAt"]:
        return False
    return acted(recorded) or not acted(ours)
