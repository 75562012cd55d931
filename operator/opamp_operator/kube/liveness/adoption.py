"""Adoption of lost replicas: the survivor that claims a stale Lease ends the lost sessions.

A replica whose Lease was not renewed for its duration is lost (SIGKILL, node failure, a
Deployment pod replaced under a new name). Every surviving replica looks each renew interval;
exactly one adopts, because adopting starts by claiming the stale Lease with a PUT carrying
the resourceVersion it read: the API server accepts one claim and answers the others 409.
The adopter then
- closes the lost replica's open history rows as of the Lease's last renewal (`close_rows`,
  given by the app: the store is not the Kubernetes side's business),
- moves every CR still Online and held by the lost replica to Offline `replica_lost` (each
  patch preconditioned on the CR's resourceVersion, so an agent that reconnected meanwhile
  is left alone) and posts one Event per CR moved,
- deletes the claimed Lease.
The adopter renews its claim every renew interval while it works (a long adoption stays
its alone). An adopter that dies half way leaves a claim that expires in turn; the next one
redoes what is left (rows already closed and CRs already Offline are not touched again).

Disruption guard (the node lifecycle controller's full-disruption mode): a replica whose own
Lease is not current adopts nobody (it may be the one cut off); when more than half of the
known Leases expired within the last Lease duration, adoption pauses (one log line, the
`opamp_replica_adoption_paused` gauge, one Event on our Lease) until they come back or
`adoption_pause_limit_seconds` passed. After either, adoption waits two renew intervals more:
the replicas cut off together come back one by one, and the first must not adopt the rest.
The adopter looks right after each listing of the Leases (`LeaseKeeper.next_listing`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from opamp_operator import metrics
from opamp_operator.config import KubeSettings
from opamp_operator.fleet.clock import Clock
from opamp_operator.fleet.model import AgentPhase, Reason
from opamp_operator.fleet.registry import Fleet
from opamp_operator.kube.api import Conflict, KubeApiError, NotFound
from opamp_operator.kube.api.resources import KubeApi, ObjectRef
from opamp_operator.kube.leases.keeper import LeaseKeeper
from opamp_operator.kube.shapes.agentstatus import disconnected_status, merge_patch, parse_time
from opamp_operator.kube.shapes.lease import (
    LEASE_API_VERSION,
    ReplicaLease,
    claimed,
    micro_time,
    renewed,
)
from opamp_operator.kube.shapes.transitionevent import describe_transition, event_type
from opamp_operator.kube.writes.gate import WriteGate

log = logging.getLogger(__name__)

CloseRows = Callable[[str, datetime], Awaitable[int]]  # (lost replica id, at) -> rows closed


class _ClaimLost(Exception):
    """Someone else wrote the Lease we claimed."""


@dataclass
class _Claim:
    body: dict[str, Any]  # the claimed Lease as last written (its resourceVersion)
    renewed_at: float  # monotonic


def lost_leases(
    leases: dict[str, ReplicaLease], me: str, now: datetime, grace: timedelta
) -> list[ReplicaLease]:
    """Pure: the Leases to adopt now (not ours, expired at least `grace` ago; a claim that
    expired is redone). The grace (one renew interval) lets every Lease lost in the same
    disruption expire before any is adopted: renewals are phase-shifted by up to one renew
    interval, so without it the first to expire would be adopted alone."""
    return sorted(
        (
            lease
            for name, lease in leases.items()
            if name != me and lease.expired(now) and now - lease.expires_at >= grace
        ),
        key=lambda lease: lease.name,
    )


def disrupted(
    leases: dict[str, ReplicaLease], now: datetime, window: timedelta, since: datetime | None = None
) -> bool:
    """Pure: more than half of the known Leases are expired, having expired within `window`
    before `since` (default: now) or later. Leases that expired long before are no
    disruption: their replicas are simply gone (no replica was left for a while)."""
    start = (since or now) - window
    lost = sum(1 for lease in leases.values() if lease.expired(now) and lease.expires_at >= start)
    return lost * 2 > len(leases)


class Adopter:
    """`run()` as a task; `adopt_due()` is one look (tests call it directly)."""

    def __init__(
        self,
        keeper: LeaseKeeper,
        fleet: Fleet,
        settings: KubeSettings,
        api: KubeApi,
        *,
        clock: Clock,
        gate: WriteGate,
        close_rows: CloseRows,
    ) -> None:
        self.keeper = keeper
        self.fleet = fleet
        self.settings = settings
        self.api = api
        self.clock = clock
        self.gate = gate  # CR patches and Events; Lease writes are the keeper's
        self.close_rows = close_rows
        self.paused_since: datetime | None = None
        self._blind = False  # our own Lease is not current: logged once
        # After a disruption (our own Lease lost, or adoption paused) the replicas cut off
        # with us come back one by one within a renew interval: none is adopted until they
        # all had the chance to renew and we listed them after that.
        self._hold_until = 0.0  # monotonic

    async def run(self) -> None:
        while True:
            # Right after each listing: looking on a timer of the same period as the keeper's
            # raced its renewal and, losing, used the listing before (one renew interval late
            # on every adoption the fleet benchmark measured). Listings come every renew
            # interval plus the renewal's and the listing's own time, hence 1.5 intervals at
            # most: waiting one woke this up between a renewal and its listing.
            await self.keeper.next_listing(within=1.5 * self.settings.lease_renew_interval_seconds)
            try:
                await self.adopt_due()
            except Exception:
                log.exception("adoption of lost replicas failed; trying again next interval")
            metrics.loop_passes.labels("adoption").inc()

    async def adopt_due(self) -> list[str]:
        """Adopt every lost replica we may adopt now; return their ids."""
        if not self.keeper.current:
            if not self._blind:
                log.warning("own Lease %s not current: adopting no replica until it is renewed",
                            self.keeper.replica_id)  # fmt: skip
            self._blind = True
            return []
        if not self.keeper.peers_fresh:
            # Between our renewal and the listing after it (or listings failing, which the
            # keeper logs): nothing to judge by yet, and no sign that we were cut off, so no
            # warning and no hold. The fleet benchmark's 50,000-agent run logged this as
            # "not current" 37 times in 27 minutes, each followed by a needless hold.
            return []
        if self._blind:
            self._blind = False
            self._hold()
        if time.monotonic() < self._hold_until:
            return []
        # As of the listing, not now: a listing that is a few seconds old must not make
        # Leases look expired that were renewed since.
        now = self.keeper.peers_listed_wall or self.clock.now()
        leases = dict(self.keeper.peers)
        grace = timedelta(seconds=self.settings.lease_renew_interval_seconds)
        lost = lost_leases(leases, self.keeper.replica_id, now, grace)
        if await self._paused(leases, lost, now):
            return []
        adopted = []
        for lease in lost:
            if await self.adopt(lease):
                adopted.append(lease.name)
        return adopted

    async def _paused(
        self, leases: dict[str, ReplicaLease], lost: list[ReplicaLease], now: datetime
    ) -> bool:
        window = timedelta(seconds=self.settings.lease_duration_seconds)
        since = self.paused_since
        if since is None:
            if not (lost and disrupted(leases, now, window)):
                return False
            self.paused_since = now
            metrics.replica_adoption_paused.set(1)
            expired = [lease.name for lease in leases.values() if lease.expired(now)]
            message = (
                f"adoption paused: {len(expired)} of {len(leases)} replica Leases expired "
                f"within {window.total_seconds():g}s ({', '.join(sorted(expired))}); "
                f"resuming when they are renewed or after "
                f"{self.settings.adoption_pause_limit_seconds:g}s"
            )
            log.warning("%s", message)
            await self._lease_event("AdoptionPaused", message, now)
            return True
        limit = timedelta(seconds=self.settings.adoption_pause_limit_seconds)
        if not disrupted(leases, now, window, since):
            log.warning("replica adoption resumed: Leases are being renewed again")
        elif now - since >= limit:
            log.warning(
                "replica adoption resumes: paused for %gs (the limit)", limit.total_seconds()
            )
        else:
            return True
        self.paused_since = None
        metrics.replica_adoption_paused.set(0)
        self._hold()
        return True  # this look was made while some were still coming back

    def _hold(self) -> None:
        self._hold_until = time.monotonic() + 2 * self.settings.lease_renew_interval_seconds

    async def adopt(self, lease: ReplicaLease) -> bool:
        """Claim `lease` (as read); if ours, end what the lost replica held. False: not ours."""
        claim = await self._claim(lease)
        if claim is None:
            return False
        lost_at = lease.lost_renewal
        log.warning(
            "replica %s lost (Lease last renewed %s, %ss): adopting its agents",
            lease.name, micro_time(lost_at), lease.duration_seconds,
        )  # fmt: skip
        rows = await self.close_rows(lease.name, lost_at)
        held = _Claim(claim, time.monotonic())
        try:
            moved = await self._end_crs(lease.name, lost_at, held)
        except _ClaimLost:
            log.warning("claim of Lease %s lost while adopting: leaving the rest", lease.name)
            return False
        await self._delete_claim(lease.name, held.body.get("metadata") or {})
        metrics.replica_adoptions.inc()
        log.warning(
            "adopted replica %s: %d CRs Offline (replica_lost), %d history rows closed",
            lease.name, moved, rows,
        )  # fmt: skip
        return True

    async def _delete_claim(self, name: str, metadata: dict[str, Any]) -> None:
        deleted = await self.keeper.api.delete(
            name, uid=str(metadata.get("uid") or ""),
            resource_version=str(metadata.get("resourceVersion") or "") or None,
        )  # fmt: skip
        if not deleted:
            log.info("Lease %s changed while it was adopted (its replica is back?)", name)

    async def _claim(self, lease: ReplicaLease) -> dict[str, Any] | None:
        body = await self.keeper.api.get(lease.name)
        if body is None:
            return None
        current = ReplicaLease.from_body(body)
        if current is None or current.resource_version != lease.resource_version:
            return None  # renewed or claimed since we listed it
        try:
            return await self.keeper.api.replace(
                lease.name, claimed(lease, body, self.keeper.replica_id, self.clock.now())
            )
        except (Conflict, NotFound):
            return None  # another survivor claimed it first

    async def _end_crs(self, replica: str, lost_at: datetime, held: _Claim) -> int:
        """End the lost replica's Online CRs, `api_threads` at a time (each a status patch
        and an Event in turn; one at a time reached 140 writes/s where 500 were allowed)."""
        ending = [b for b in await self.api.list_agents() if _held_at(b, replica, lost_at)]
        moved, step = 0, max(1, self.settings.api_threads)
        for start in range(0, len(ending), step):
            await self._keep(replica, held)
            batch = ending[start : start + step]
            moved += sum(await asyncio.gather(*(self._end_cr(b, replica) for b in batch)))
        return moved

    async def _keep(self, name: str, held: _Claim) -> None:
        """Renew our claim every renew interval, so a long adoption stays ours alone."""
        if time.monotonic() - held.renewed_at < self.settings.lease_renew_interval_seconds:
            return
        me, duration = self.keeper.replica_id, self.keeper.duration_seconds
        try:
            held.body = await self.keeper.api.replace(
                name, renewed(held.body, me, duration, self.clock.now())
            )
        except (Conflict, NotFound) as error:
            raise _ClaimLost(name) from error  # its replica is back, or another adopter
        held.renewed_at = time.monotonic()

    async def _end_cr(self, body: dict[str, Any], replica: str) -> bool:
        metadata, status = body.get("metadata") or {}, body.get("status") or {}
        name = str(metadata.get("name", ""))
        now = self.clock.now()
        desired = disconnected_status(
            status, AgentPhase.OFFLINE, Reason.REPLICA_LOST,
            generation=metadata.get("generation"), now=now,
        )  # fmt: skip
        try:
            await self.gate.patch_agent_status(
                name, merge_patch(status, desired), str(metadata.get("resourceVersion", ""))
            )
        except (Conflict, NotFound):
            return False  # the agent reconnected, or the CR went: nothing to end
        metrics.kube_liveness_transitions.labels(
            AgentPhase.OFFLINE.value, Reason.REPLICA_LOST
        ).inc()
        if self.settings.post_events:
            message = describe_transition(
                AgentPhase.ONLINE, AgentPhase.OFFLINE, Reason.REPLICA_LOST,
                self.fleet.settings, self.settings.replica_id,
            ) + f"; replica {replica} stopped renewing its Lease"  # fmt: skip
            target = ObjectRef(name, str(metadata.get("uid", "")), self.api.namespace)
            await self._post(target, Reason.REPLICA_LOST, message, now,
                             event_type(AgentPhase.OFFLINE, Reason.REPLICA_LOST))  # fmt: skip
        return True

    async def _lease_event(self, reason: str, message: str, now: datetime) -> None:
        own = (self.keeper.own_body() or {}).get("metadata") or {}
        target = ObjectRef(
            self.keeper.replica_id, str(own.get("uid") or ""), self.api.namespace,
            kind="Lease", api_version=LEASE_API_VERSION,
        )  # fmt: skip
        await self._post(target, reason, message, now, "Warning")

    async def _post(
        self, target: ObjectRef, reason: str, message: str, now: datetime, kind: str
    ) -> None:
        try:
            await self.gate.post_event(
                target, event_type=kind, reason=reason, message=message, at=now,
                reporter=self.settings.replica_id,
            )  # fmt: skip
        except KubeApiError as error:
            log.error("Event %s about %s not posted: %s", reason, target.name, error)


def _held_at(body: dict[str, Any], replica: str, lost_at: datetime) -> bool:
    """Pure: the CR is Online, held by `replica` in a session that began before the loss
    (a later one is a restart under that id: not ours to end)."""
    status = body.get("status") or {}
    connection = status.get("connection") or {}
    if status.get("phase") != AgentPhase.ONLINE or connection.get("replica") != replica:
        return False
    connected = parse_time(connection.get("connectedAt"))
    return connected is None or connected <= lost_at
