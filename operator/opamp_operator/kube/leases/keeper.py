"""This replica's Lease, renewed on a timer, and the list of every replica's Lease.

Why a Lease (as kubelets prove node liveness, KEP-589): one small write per replica every
`lease_renew_interval_seconds` proves that every session it holds is alive, so the CRs need
no periodic lastSeenAt writes. A replica whose Lease was not renewed for
`lease_duration_seconds` is lost, and a survivor adopts its agents (`kube/liveness/adoption.py`).

The Lease is current when a renewal succeeded within the last duration, measured on the
monotonic clock (a renewal in flight when the server went away does not count).

A renewal must not wait behind the replica's own CR writes, on either side of the wire: the
Lease has a connection of its own (`LeaseApi.own_connection`, requests bounded by
`renewal_timeout`), a failed renewal is retried within seconds (a jittered backoff capped at
the renew interval, as the kubelet retries its node Lease) rather than one interval later,
and in a cluster the manifests give this ServiceAccount's Lease requests an API Priority
and Fairness level of their own (`manifests/flowcontrol.yaml`), since APF queues the
requests of one user in one flow, writes and renewals alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from datetime import datetime
from typing import Any

from opamp_operator import metrics
from opamp_operator.backoff import EQUAL_JITTER, Backoff
from opamp_operator.config import KubeSettings
from opamp_operator.fleet.clock import Clock
from opamp_operator.kube.api import Conflict, KubeApiError, NotFound
from opamp_operator.kube.api.leases import LeaseApi
from opamp_operator.kube.shapes.lease import (
    REPLICA_LEASE_SELECTOR,
    ReplicaLease,
    lease_body,
    renewed,
)

log = logging.getLogger(__name__)

FIRST_RETRY_SECONDS = 0.5


def renewal_timeout(settings: KubeSettings) -> float:
    """A Lease request gives up after at most one renew interval: with the duration at
    least two intervals, a slow answer still leaves time for a retry before it expires."""
    return min(settings.request_timeout_seconds, settings.lease_renew_interval_seconds)


def retry_backoff(settings: KubeSettings) -> Backoff:
    """After a failed renewal: 0.25-0.5 s, doubling, up to the renew interval."""
    every = settings.lease_renew_interval_seconds
    return Backoff.up_to(every, initial=FIRST_RETRY_SECONDS, jitter=EQUAL_JITTER)


class LeaseKeeper:
    """`await start()` (first renewal and listing), `run()` as a task, `release()` at exit."""

    def __init__(self, api: LeaseApi, settings: KubeSettings, clock: Clock) -> None:
        self.api = api
        self.settings = settings
        self.clock = clock
        self.replica_id = settings.replica_id
        self.duration_seconds = max(1, math.ceil(settings.lease_duration_seconds))
        self.peers: dict[str, ReplicaLease] = {}  # every replica Lease, ours included
        self.peers_listed_at: float | None = None  # monotonic
        self.peers_listed_wall: datetime | None = None  # the same moment, on the clock
        self._body: dict[str, Any] | None = None  # ours, as last written
        self._renewed_at: float | None = None  # monotonic, last successful renewal
        self._failures = 0  # renewals failed in a row
        self.longest_gap = 0.0  # seconds between two successful renewals, at most
        self._retry = retry_backoff(settings)
        self._listed = asyncio.Event()  # set by each listing; the adopter waits for it
        metrics.replica_lease_current.set_function(lambda: 1.0 if self.current else 0.0)
        metrics.replica_lease_longest_gap.set_function(lambda: self.longest_gap)

    @property
    def current(self) -> bool:
        """Renewed within the last Lease duration."""
        renewed_at = self._renewed_at
        return renewed_at is not None and (
            time.monotonic() - renewed_at < self.settings.lease_duration_seconds
        )

    @property
    def peers_fresh(self) -> bool:
        """The Leases were listed after our latest renewal, within about a renew interval."""
        listed, renewed_at = self.peers_listed_at, self._renewed_at
        if listed is None or renewed_at is None or listed < renewed_at:
            return False
        return time.monotonic() - listed < 1.5 * self.settings.lease_renew_interval_seconds

    def live(self, replica_id: str) -> bool | None:
        """Whether `replica_id` holds a current Lease; None when it has no Lease at all."""
        lease = self.peers.get(replica_id)
        if lease is None:
            return None
        return not lease.claimed and not lease.expired(self.clock.now())

    def own_body(self) -> dict[str, Any] | None:
        """Our Lease as last written (None before the first renewal)."""
        return self._body

    async def next_listing(self, *, within: float) -> None:
        """Until the next listing of the Leases, or `within` seconds (listings failing)."""
        self._listed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._listed.wait(), within)

    async def start(self) -> None:
        """Take our Lease and read the others'; failures are logged and retried by `run`."""
        await self.tick()

    def next_delay(self) -> float:
        """Until the next renewal: the renew interval, or a backoff after failures."""
        if self._failures == 0:
            return self.settings.lease_renew_interval_seconds
        return self._retry.delay(self._failures)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.next_delay())
            try:
                await self.tick()
            except Exception:
                self._failures += 1
                log.exception("Lease %s renewal failed; trying again", self.replica_id)
            metrics.loop_passes.labels("lease").inc()

    async def tick(self) -> None:
        try:
            await self._renew()
            await self._list()
        except KubeApiError as error:
            metrics.replica_lease_renewals.labels(error.outcome).inc()
            if self._failures == 0:
                log.warning(
                    "cannot renew Lease %s (retrying in %.1fs, then backing off up to %gs): %s",
                    self.replica_id, self._retry.ceiling(1), self._retry.maximum, error,
                )  # fmt: skip
            self._failures += 1
        else:
            metrics.replica_lease_renewals.labels("ok").inc()
            if self._failures:
                log.info(
                    "Lease %s renewed again after %d failed attempts",
                    self.replica_id, self._failures,
                )  # fmt: skip
            self._failures = 0

    async def release(self) -> None:
        """Delete our Lease (graceful exit: nothing of ours is left to adopt)."""
        body = self._body
        if body is None:
            return
        uid = str((body.get("metadata") or {}).get("uid") or "")
        try:
            deleted = await self.api.delete(self.replica_id, uid=uid, resource_version=None)
        except KubeApiError as error:
            log.warning("Lease %s not released (it will expire): %s", self.replica_id, error)
            return
        self._body, self._renewed_at = None, None
        if deleted:
            log.info("Lease %s released", self.replica_id)

    async def _renew(self) -> None:
        attempt = time.monotonic()
        now = self.clock.now()
        body = self._body
        try:
            if body is None:
                body = await self._acquire(now)
            else:
                body = await self.api.replace(
                    self.replica_id, renewed(body, self.replica_id, self.duration_seconds, now)
                )
        except NotFound:
            # Only an adopter deletes another replica's Lease: we were taken for lost (cut
            # off longer than the duration). See docs/reliability.md (known limits) for what
            # the adoption did meanwhile.
            log.warning("Lease %s was deleted by another replica (this one was taken for "
                        "lost): creating it again", self.replica_id)  # fmt: skip
            body = await self._acquire(now)
        except Conflict:
            # Claimed by an adopter, or our previous renewal landed after we gave up on it.
            body = await self._take_back(now)
        metrics.replica_lease_renewal_seconds.observe(time.monotonic() - attempt)
        if self._renewed_at is not None:
            self.longest_gap = max(self.longest_gap, attempt - self._renewed_at)
        self._body, self._renewed_at = body, attempt

    async def _acquire(self, now: datetime) -> dict[str, Any]:
        """Create our Lease, or take the existing one (ours from a previous run, or claimed)."""
        try:
            return await self.api.create(
                lease_body(self.replica_id, self.replica_id, self.duration_seconds, now)
            )
        except Conflict:
            return await self._take_back(now)

    async def _take_back(self, now: datetime) -> dict[str, Any]:
        """Renew the Lease as it is now on the server, whoever wrote it last."""
        found = await self.api.get(self.replica_id)
        if found is None:
            raise KubeApiError(404, f"Lease {self.replica_id} vanished right after a conflict")
        holder = (found.get("spec") or {}).get("holderIdentity")
        if holder != self.replica_id:
            log.warning("Lease %s was claimed by %s (this one was taken for lost): taking it "
                        "back", self.replica_id, holder)  # fmt: skip
        return await self.api.replace(
            self.replica_id, renewed(found, self.replica_id, self.duration_seconds, now)
        )

    async def _list(self) -> None:
        listed, wall = time.monotonic(), self.clock.now()
        bodies = await self.api.list(REPLICA_LEASE_SELECTOR)
        leases = (ReplicaLease.from_body(body) for body in bodies)
        self.peers = {lease.name: lease for lease in leases if lease is not None}
        self.peers_listed_at, self.peers_listed_wall = listed, wall
        self._listed.set()
