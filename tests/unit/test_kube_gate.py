"""The write gate's logic with a scripted API (pure; on the API server: test_kube_gitops_writes).

Pacing, the resourceVersion precondition (re-read on Conflict), retries of throttled and
unavailable writes with the one backoff type, and the `opamp_kube_writes_total` count.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from opamp_operator.backoff import NO_JITTER, Backoff
from opamp_operator.kube.api import (
    Conflict,
    Forbidden,
    KubeApiError,
    NotFound,
    Throttled,
    Unavailable,
)
from opamp_operator.kube.mirror.pending import PendingUpdates
from opamp_operator.kube.writes.gate import WriteGate, retry_hint, write_backoff
from opamp_operator.kube.writes.pace import WriteLimiter
from opamp_operator.metrics import REGISTRY

QUICK = Backoff(initial=0.001, maximum=0.004, jitter=NO_JITTER)


@dataclass
class ScriptedApi:
    """Answers status patches from `failures` first, then with the object at a new version."""

    namespace: str = "ns"
    failures: list[KubeApiError] = field(default_factory=list)
    patches: list[tuple[str, dict[str, Any], str | None]] = field(default_factory=list)
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    version: int = 1

    async def patch_config_status(
        self, name: str, status: Mapping[str, Any], resource_version: str | None
    ) -> dict[str, Any]:
        self.patches.append((name, dict(status), resource_version))
        if self.failures:
            raise self.failures.pop(0)
        current = self.objects.get(name)
        if current is None:
            raise NotFound(404, f"{name} not found")
        if resource_version != current["metadata"].get("resourceVersion"):
            raise Conflict(409, "the object has been modified")
        self.version += 1
        current["status"].update(status)
        current["metadata"]["resourceVersion"] = str(self.version)
        return current

    async def get_config(self, name: str) -> dict[str, Any] | None:
        found = self.objects.get(name)
        return None if found is None else {**found, "status": dict(found["status"])}


class CountingPace(WriteLimiter):
    def __init__(self) -> None:
        super().__init__(rate=1000)
        self.turns = 0

    async def acquire(self) -> None:
        self.turns += 1
        await super().acquire()


def gate_on(api: ScriptedApi, pace: WriteLimiter | None = None) -> WriteGate:
    return WriteGate(api, pace or CountingPace(), QUICK)  # type: ignore[arg-type]


def written(kind: str, outcome: str) -> float:
    labels = {"kind": kind, "outcome": outcome}
    return REGISTRY.get_sample_value("opamp_kube_writes_total", labels) or 0.0


def stored(api: ScriptedApi, name: str, version: str, **status: Any) -> None:
    api.objects[name] = {"metadata": {"resourceVersion": version}, "status": dict(status)}


async def test_every_attempt_waits_for_the_pace_and_is_counted() -> None:
    api = ScriptedApi(failures=[Unavailable(503, "busy")])
    stored(api, "c", "1")
    pace = CountingPace()
    before = written("config_status", "error"), written("config_status", "ok")
    await gate_on(api, pace).patch_config_status("c", {"x": 1}, "1", retries=1)
    assert pace.turns == 2  # the retry waited its turn too
    after = written("config_status", "error"), written("config_status", "ok")
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)


async def test_a_patch_carries_its_precondition_and_refuses_to_go_without_one() -> None:
    api = ScriptedApi()
    stored(api, "c", "7")
    await gate_on(api).patch_config_status("c", {"x": 1}, "7")
    assert api.patches == [("c", {"x": 1}, "7")]
    with pytest.raises(ValueError, match="resourceVersion"):
        await gate_on(api).patch_config_status("c", {"x": 2}, "")
    assert len(api.patches) == 1  # nothing was sent


async def test_the_gate_paces_concurrent_writers_at_the_rate() -> None:
    api = ScriptedApi()
    gate = gate_on(api, WriteLimiter(rate=40))
    stored(api, "c", "1")
    loop = asyncio.get_running_loop()
    started = loop.time()

    async def one(number: int) -> None:
        with pytest.raises(Conflict):  # the versions do not matter here, the pace does
            await gate.patch_config_status("c", {"n": number}, "stale")

    await asyncio.gather(*(one(n) for n in range(80)))
    # A burst of 40 is free, the other 40 come at 40/s: about a second.
    assert 0.85 <= loop.time() - started < 2.0
    assert len(api.patches) == 80


async def test_update_rereads_after_a_conflict_and_patches_from_the_fresh_object() -> None:
    api = ScriptedApi()
    stored(api, "c", "5", matched=3, hash="bogus")  # someone wrote it after we looked
    seen = {"metadata": {"resourceVersion": "4"}, "status": {"matched": 3, "hash": "h1"}}
    desired = {"matched": 4, "hash": "h1"}
    gate = gate_on(api)
    conflicts = written("config_status", "conflict")

    def change(body: Mapping[str, Any]) -> dict[str, Any] | None:
        patch = {k: v for k, v in desired.items() if body["status"].get(k) != v}
        return patch or None

    async def write(patch: Mapping[str, Any], version: str) -> dict[str, Any]:
        return await gate.patch_config_status("c", patch, version)

    body = await gate.update(seen, lambda: api.get_config("c"), change, write)
    assert body is not None and body["status"] == {"matched": 4, "hash": "h1"}
    # The stale patch (matched only) was refused; the second, from the re-read, fixed both.
    assert api.patches == [("c", {"matched": 4}, "4"), ("c", {"matched": 4, "hash": "h1"}, "5")]
    assert written("config_status", "conflict") - conflicts == 1


async def test_update_stops_when_the_fresh_object_needs_nothing_or_is_gone() -> None:
    api = ScriptedApi()
    stored(api, "c", "5", matched=4)
    gate = gate_on(api)
    seen = {"metadata": {"resourceVersion": "4"}, "status": {"matched": 3}}

    def change(body: Mapping[str, Any]) -> dict[str, Any] | None:
        return None if body["status"].get("matched") == 4 else {"matched": 4}

    async def write(patch: Mapping[str, Any], version: str) -> dict[str, Any]:
        return await gate.patch_config_status("c", patch, version)

    assert await gate.update(seen, lambda: api.get_config("c"), change, write) is None
    assert len(api.patches) == 1  # another writer got there first: no second write
    del api.objects["c"]
    assert await gate.update(None, lambda: api.get_config("c"), change, write) is None
    with pytest.raises(NotFound):  # a write that finds it gone says so
        await gate.update(seen, lambda: api.get_config("c"), change, write)


async def test_update_gives_up_on_an_object_that_keeps_moving() -> None:
    api = ScriptedApi(failures=[Conflict(409, "moved")] * 10)
    stored(api, "c", "1")
    gate = gate_on(api)

    async def write(patch: Mapping[str, Any], version: str) -> dict[str, Any]:
        return await gate.patch_config_status("c", patch, version)

    with pytest.raises(Conflict):
        await gate.update(None, lambda: api.get_config("c"), lambda _: {"x": 1}, write, conflicts=2)
    assert len(api.patches) == 3


async def test_throttled_and_unavailable_are_retried_the_rest_is_not() -> None:
    api = ScriptedApi(failures=[Throttled(429, "slow down"), Unavailable(0, "no answer")])
    stored(api, "c", "1")
    await gate_on(api).patch_config_status("c", {"x": 1}, "1", retries=2)
    assert len(api.patches) == 3
    for error in (Forbidden(403, "no"), KubeApiError(422, "invalid"), Conflict(409, "moved")):
        api = ScriptedApi(failures=[error])
        stored(api, "c", "1")
        with pytest.raises(type(error)):
            await gate_on(api).patch_config_status("c", {"x": 1}, "1", retries=5)
        assert len(api.patches) == 1


async def test_retries_are_bounded_and_the_last_error_reaches_the_caller() -> None:
    api = ScriptedApi(failures=[Unavailable(503, f"busy {n}") for n in range(5)])
    stored(api, "c", "1")
    with pytest.raises(Unavailable, match="busy 2"):
        await gate_on(api).patch_config_status("c", {"x": 1}, "1", retries=2)
    assert len(api.patches) == 3


async def test_a_throttled_write_waits_at_least_the_servers_retry_after() -> None:
    api = ScriptedApi(failures=[Throttled(429, "slow down", retry_after=0.3)])
    stored(api, "c", "1")
    loop = asyncio.get_running_loop()
    started = loop.time()
    await gate_on(api).patch_config_status("c", {"x": 1}, "1", retries=1)
    assert loop.time() - started >= 0.3  # the backoff alone would be 1 ms
    assert retry_hint(Throttled(429, "x", retry_after=2.0)) == 2.0
    assert retry_hint(Unavailable(503, "x")) is None


def test_write_backoff_keeps_the_status_writers_delays() -> None:
    backoff = write_backoff(10.0)
    assert [backoff.ceiling(n) for n in range(1, 7)] == [0.5, 1, 2, 4, 8, 10]
    assert all(8.0 <= backoff.delay(5) <= 9.6 for _ in range(50))  # up to a fifth later
    assert write_backoff(0.2).delay(1) >= 0.2  # a cap below 0.5 s is still a cap


def test_the_status_writers_queue_never_retries_before_the_servers_retry_after() -> None:
    pending = PendingUpdates(capacity=10)
    pending.mark("a")
    assert pending.take(0.0) == "a"
    _, delay = pending.failed("a", 0.0, 30.0, probe_delay=2.0, at_least=7.0)
    assert delay == 7.0  # neither the 0.5 s backoff nor the 2 s probe undercut the hint
    assert pending.take(6.9) is None and pending.take(7.0) == "a"
