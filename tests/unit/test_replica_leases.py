"""Replica Leases, pure parts: Lease bodies, which Leases are lost, the disruption guard,
and the CR judge deferring to a replica that has a Lease."""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from opamp_operator.config import KubeSettings
from opamp_operator.fleet.clock import FakeClock
from opamp_operator.kube.api import Conflict, Unavailable
from opamp_operator.kube.leases.keeper import LeaseKeeper
from opamp_operator.kube.liveness.adoption import Adopter, disrupted, lost_leases
from opamp_operator.kube.liveness.judge import Thresholds, due_at, judge
from opamp_operator.kube.shapes.lease import (
    LOST_RENEWAL_ANNOTATION,
    ReplicaLease,
    claimed,
    lease_body,
    renewed,
)

T0 = datetime(2026, 12, 2, 12, 0, 0, tzinfo=UTC)
LIMITS = Thresholds(timedelta(seconds=90), timedelta(seconds=300), None)


def lease(name: str, renewed_at: datetime, holder: str | None = None) -> ReplicaLease:
    body = lease_body(name, holder or name, 40, renewed_at)
    body["metadata"].update(resourceVersion="7", uid=f"uid-{name}")
    parsed = ReplicaLease.from_body(body)
    assert parsed is not None
    return parsed


def test_a_lease_body_round_trips_and_expires_after_its_duration() -> None:
    own = lease("r-a", T0)
    assert (own.name, own.holder, own.duration_seconds) == ("r-a", "r-a", 40)
    assert own.renew_time == T0 and own.lost_renewal == T0 and not own.claimed
    assert not own.expired(T0 + timedelta(seconds=39.9))
    assert own.expired(T0 + timedelta(seconds=40))
    assert ReplicaLease.from_body({"metadata": {"name": "x"}, "spec": {}}) is None


def test_renewal_keeps_the_version_and_a_claim_keeps_the_lost_renewal() -> None:
    body = lease_body("r-a", "r-a", 40, T0)
    body["metadata"]["resourceVersion"] = "7"
    later = renewed(body, "r-a", 40, T0 + timedelta(seconds=10))
    assert later["metadata"]["resourceVersion"] == "7"  # the PUT's precondition
    assert later["spec"]["acquireTime"] == body["spec"]["acquireTime"]
    stale = ReplicaLease.from_body(later)
    assert stale is not None
    claim = claimed(stale, later, "r-b", T0 + timedelta(seconds=60))
    parsed = ReplicaLease.from_body(claim)
    assert parsed is not None and parsed.claimed and parsed.holder == "r-b"
    assert parsed.lost_renewal == T0 + timedelta(seconds=10)  # not the claim's time
    assert parsed.renew_time == T0 + timedelta(seconds=60)
    assert LOST_RENEWAL_ANNOTATION in claim["metadata"]["annotations"]
    assert claim["spec"]["leaseTransitions"] == 1


def test_lost_leases_are_the_expired_ones_of_others_and_expired_claims() -> None:
    now = T0 + timedelta(seconds=100)
    leases = {
        "me": lease("me", T0),  # ours, even expired: never adopted by ourselves
        "live": lease("live", now - timedelta(seconds=5)),
        "gone": lease("gone", T0),
        "claim-fresh": lease("claim-fresh", now - timedelta(seconds=5), holder="other"),
        "claim-dead": lease("claim-dead", T0, holder="other"),
    }
    grace = timedelta(seconds=10)
    assert [x.name for x in lost_leases(leases, "me", now, grace)] == ["claim-dead", "gone"]
    # Expired less than a renew interval ago: not yet (others lost with it may follow).
    just = {"just": lease("just", now - timedelta(seconds=45))}
    assert lost_leases(just, "me", now, grace) == []
    assert [x.name for x in lost_leases(just, "me", now + grace, grace)] == ["just"]


def test_disruption_is_more_than_half_expiring_within_one_duration() -> None:
    window = timedelta(seconds=40)
    now = T0 + timedelta(seconds=60)
    fresh, recent = now - timedelta(seconds=5), now - timedelta(seconds=50)  # expired 10 s ago
    old = now - timedelta(hours=1)
    two = {"a": lease("a", fresh), "b": lease("b", recent)}
    assert not disrupted(two, now, window)  # one of two lost: adopt it
    three = {**two, "c": lease("c", recent)}
    assert disrupted(three, now, window)  # two of three at once: pause
    # Leases that expired long ago (no replica was left for a while) are no disruption.
    stale = {"a": lease("a", fresh), "b": lease("b", old), "c": lease("c", old)}
    assert not disrupted(stale, now, window)
    # Once paused, the same Leases keep it paused (they expired within the window before
    # the pause began) until they are renewed.
    paused_at = now
    later = now + timedelta(minutes=5)
    assert not disrupted(three, later, window)  # as seen afresh: long expired
    assert disrupted(three, later, window, since=paused_at)
    renewing = later - timedelta(seconds=1)
    back = {**three, "a": lease("a", renewing), "b": lease("b", renewing)}
    assert not disrupted(back, later, window, since=paused_at)


def test_the_judge_leaves_online_crs_of_a_leased_replica_alone() -> None:
    online = {"phase": "Online", "lastSeenAt": "2026-12-02T12:00:00Z"}
    much_later = T0 + timedelta(days=1)
    assert judge(online, T0, much_later, LIMITS, known_here=False) is not None
    assert judge(online, T0, much_later, LIMITS, known_here=False, leased_elsewhere=True) is None
    assert due_at(online, T0, LIMITS, leased_elsewhere=True) is None
    # Offline CRs still escalate to Error, whoever wrote them.
    offline = {"phase": "Offline", "disconnectReason": "replica_lost",
               "lastDisconnectedAt": "2026-12-02T12:00:00Z"}  # fmt: skip
    verdict = judge(offline, T0, much_later, LIMITS, known_here=False, leased_elsewhere=True)
    assert verdict is not None and verdict.reason == "offline_too_long"


class ListingOnlyApi:
    """Answers the keeper's listing with no Lease; `wait` holds each listing until released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def list(self, label_selector: str) -> list[dict[str, Any]]:
        await self.release.wait()
        return []


async def test_the_adopter_looks_right_after_each_listing_not_on_its_own_timer() -> None:
    api = ListingOnlyApi()
    keeper = LeaseKeeper(api, KubeSettings(replica_id="me"), FakeClock())  # type: ignore[arg-type]
    listing = asyncio.create_task(keeper._list())
    waiting = asyncio.create_task(keeper.next_listing(within=30))
    await asyncio.sleep(0.01)
    assert not waiting.done()  # no listing yet
    started = time.monotonic()
    api.release.set()
    await asyncio.wait_for(waiting, 1)
    assert time.monotonic() - started < 0.5  # woken by the listing, not after `within`
    await listing
    # Listings failing: the adopter still looks every `within` (and adopts nobody then).
    started = time.monotonic()
    await keeper.next_listing(within=0.05)
    assert 0.04 <= time.monotonic() - started < 1


class FlakyLeaseApi:
    """Lease requests in memory: `fail` makes the next replaces time out, `landed` makes the
    next replace apply on the "server" yet fail for the client (its answer never came)."""

    def __init__(self) -> None:
        self.stored: dict[str, Any] | None = None
        self.version = 0
        self.fail = 0
        self.landed = False
        self.requests: list[str] = []

    def _store(self, body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        stored = {**body, "metadata": {**body["metadata"], "resourceVersion": str(self.version)}}
        self.stored = stored
        return copy.deepcopy(stored)

    async def create(self, body: dict[str, Any]) -> dict[str, Any]:
        self.requests.append("create")
        if self.stored is not None:
            raise Conflict(409, "already exists")
        return self._store(body)

    async def get(self, name: str) -> dict[str, Any] | None:
        self.requests.append("get")
        return copy.deepcopy(self.stored)

    async def replace(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self.requests.append("replace")
        if self.fail:
            self.fail -= 1
            raise Unavailable(0, "no response from the API server: timeout")
        assert self.stored is not None
        if body["metadata"]["resourceVersion"] != self.stored["metadata"]["resourceVersion"]:
            raise Conflict(409, "the object has been modified")
        stored = self._store(body)
        if self.landed:
            self.landed = False
            raise Unavailable(0, "no response from the API server: timeout")
        return stored

    async def list(self, label_selector: str) -> list[dict[str, Any]]:
        return [self.stored] if self.stored else []


def flaky_keeper() -> tuple[LeaseKeeper, FlakyLeaseApi]:
    api = FlakyLeaseApi()
    settings = KubeSettings(replica_id="me", lease_renew_interval_seconds=10.0)
    return LeaseKeeper(api, settings, FakeClock(T0)), api  # type: ignore[arg-type]


async def test_a_failed_renewal_is_retried_within_seconds_backing_off_to_the_interval() -> None:
    keeper, api = flaky_keeper()
    await keeper.start()
    assert keeper.current and keeper.next_delay() == 10.0
    api.fail = 10
    delays = []
    for _ in range(7):
        await keeper.tick()
        delays.append(keeper.next_delay())
    # 0.25-0.5 s after the first failure (not a whole renew interval), doubling, capped at
    # the interval: [ceiling / 2, ceiling] for ceilings 0.5, 1, 2, 4, 8, 10, 10.
    ceilings = [0.5, 1, 2, 4, 8, 10, 10]
    assert all(c / 2 <= d <= c for c, d in zip(ceilings, delays, strict=True)), delays
    await asyncio.sleep(0.05)
    api.fail = 0
    await keeper.tick()
    assert keeper.next_delay() == 10.0
    assert keeper.longest_gap >= 0.05  # from the last renewal before the failures


async def test_a_renewal_that_landed_after_its_timeout_is_taken_up_without_a_takeover(
    caplog: pytest.LogCaptureFixture,
) -> None:
    keeper, api = flaky_keeper()
    await keeper.start()
    api.landed = True
    await keeper.tick()  # applied on the server, the client saw a timeout
    assert keeper.next_delay() < 1
    api.requests.clear()
    with caplog.at_level(logging.WARNING):
        await keeper.tick()  # stale version: Conflict, then the Lease as it is now
    assert api.requests == ["replace", "get", "replace"]
    assert keeper.own_body() == api.stored and keeper.next_delay() == 10.0
    assert not [r for r in caplog.records if "taken for lost" in r.getMessage()]
    # Claimed by another replica: the same path, and now it says so.
    assert api.stored is not None
    api.stored["spec"] = {**api.stored["spec"], "holderIdentity": "other"}
    api.version += 1
    api.stored["metadata"]["resourceVersion"] = str(api.version)
    with caplog.at_level(logging.WARNING):
        await keeper.tick()
    assert [r for r in caplog.records if "claimed by other" in r.getMessage()]
    assert api.stored["spec"]["holderIdentity"] == "me"


async def test_between_a_renewal_and_its_listing_the_adopter_waits_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Our Lease current, the listing older than the renewal (the keeper is mid-tick): no
    "not current" warning, and the next fresh listing is judged at once (no hold)."""
    keeper, _ = flaky_keeper()
    await keeper.start()
    adopter = Adopter(
        keeper, None, keeper.settings, None,  # type: ignore[arg-type]
        clock=FakeClock(T0), gate=None, close_rows=None,  # type: ignore[arg-type]
    )  # fmt: skip
    await keeper._renew()  # renewed, not yet listed
    assert keeper.current and not keeper.peers_fresh
    with caplog.at_level(logging.WARNING):
        assert await adopter.adopt_due() == []
    assert not [r for r in caplog.records if "not current" in r.getMessage()]
    await keeper._list()
    assert keeper.peers_fresh
    assert time.monotonic() >= adopter._hold_until  # not held back by the stale look
