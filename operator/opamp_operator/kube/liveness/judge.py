"""Liveness of CRs that no live session in this process holds (see `kube/liveness/schedule.py`).

The fleet's own state machine moves agents this process knows, and the status writer
mirrors that. But the process that held an agent may have died (a crash, a rolling update,
another replica gone), and then only the CR remembers the agent. Who judges an Online CR:
- held by another replica that has a Lease: nobody here. While the Lease is current that
  replica's own deadlines move its agents; once it expires, a survivor adopts them
  (`kube/liveness/adoption.py`, reason `replica_lost`). CRs are written on change only, so
  their `lastSeenAt` says nothing about a live replica's agents.
- held by this replica id (a previous run of this process) or by a replica without a Lease
  (an older version, or one whose Lease is gone): Online -> Offline (`heartbeat_timeout`)
  once `lastSeenAt` is older than the heartbeat timeout plus the lastSeenAt refresh interval
  (`LEGACY_REFRESH_SECONDS` when refresh is off: what a replica without Leases writes).
Then Offline -> Error (`offline_too_long`), posting an Event for each; with a GC TTL it
deletes CRs that stayed Offline/Error that long (their history stays in PostgreSQL).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from opamp_operator import metrics
from opamp_operator.config import KubeSettings
from opamp_operator.fleet.clock import Clock
from opamp_operator.fleet.model import DEPARTURES, AgentPhase, AgentSnapshot, Reason
from opamp_operator.fleet.registry import Fleet
from opamp_operator.kube.api.resources import KubeApi, KubeApiError, ObjectRef
from opamp_operator.kube.shapes.agentstatus import (
    disconnected_status,
    merge_patch,
    offline_since,
    parse_time,
)
from opamp_operator.kube.shapes.naming import agent_id_from_name
from opamp_operator.kube.shapes.transitionevent import describe_transition, event_type
from opamp_operator.kube.writes.gate import WriteGate

log = logging.getLogger(__name__)

# Replicas without Leases (before issue 15) refresh lastSeenAt every 60 s by default.
LEGACY_REFRESH_SECONDS = 60.0


class ReplicaView(Protocol):
    """Which replicas hold a Lease (`kube/leases/keeper.py`)."""

    def live(self, replica_id: str) -> bool | None: ...


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with one CR: move it to `phase` for `reason`, or delete it."""

    phase: AgentPhase | None  # None: delete (GC)
    reason: str


@dataclass(frozen=True, slots=True)
class Thresholds:
    offline_after: timedelta  # lastSeenAt older than this: Offline
    error_after: timedelta  # Offline longer than this: Error
    gc_after: timedelta | None  # Offline/Error longer than this: delete


def judge(
    status: Mapping[str, Any],
    created_at: datetime | None,
    now: datetime,
    limits: Thresholds,
    *,
    known_here: bool,
    leased_elsewhere: bool = False,
) -> Verdict | None:
    """Pure: what a CR nobody holds a session for should become, if anything.

    `known_here`: this process's fleet knows the agent (without a session); its state
    machine then owns the Offline/Error transitions, and only GC is left to decide here.
    `leased_elsewhere`: the CR names another replica that has a Lease; that replica (or
    the survivor adopting it) owns the Online -> Offline transition.
    """
    phase = status.get("phase")
    since = offline_since(status)
    offline_for = None if since is None else now - since
    if (
        phase in (AgentPhase.OFFLINE, AgentPhase.ERROR)
        and offline_for is not None
        and limits.gc_after is not None
        and offline_for >= limits.gc_after
    ):
        return Verdict(None, "gc_ttl_expired")
    if known_here:
        return None
    if phase == AgentPhase.OFFLINE:
        if status.get("disconnectReason") in DEPARTURES:
            return None  # it said goodbye (or its Pod is gone): Offline, never Error
        if offline_for is not None and offline_for >= limits.error_after:
            return Verdict(AgentPhase.ERROR, Reason.OFFLINE_TOO_LONG)
        return None
    if phase == AgentPhase.ERROR or leased_elsewhere:
        return None
    last_seen = parse_time(status.get("lastSeenAt")) or created_at
    if last_seen is not None and now - last_seen >= limits.offline_after:
        return Verdict(AgentPhase.OFFLINE, Reason.HEARTBEAT_TIMEOUT)
    return None


def due_at(
    status: Mapping[str, Any],
    created_at: datetime | None,
    limits: Thresholds,
    *,
    leased_elsewhere: bool = False,
) -> datetime | None:
    """Pure: the first moment `judge` may decide something about this CR (None: never)."""
    phase = status.get("phase")
    if phase in (AgentPhase.OFFLINE, AgentPhase.ERROR):
        since = offline_since(status)
        if since is None:
            return None
        departed = status.get("disconnectReason") in DEPARTURES
        erring = phase == AgentPhase.OFFLINE and not departed
        moments = [since + limits.error_after] if erring else []
        if limits.gc_after is not None:
            moments.append(since + limits.gc_after)
        return min(moments, default=None)
    if leased_elsewhere:
        return None  # its replica, or the survivor adopting it, decides (watch events reset)
    last_seen = parse_time(status.get("lastSeenAt")) or created_at
    return None if last_seen is None else last_seen + limits.offline_after


class LivenessChecker:
    """Applies `judge` to one CR at a time and writes the outcome (status, Event, delete)."""

    def __init__(
        self,
        fleet: Fleet,
        settings: KubeSettings,
        api: KubeApi,
        clock: Clock,
        gate: WriteGate,
        *,
        replicas: ReplicaView | None = None,
    ) -> None:
        self.fleet = fleet
        self.replicas = replicas
        self.settings = settings
        self.api = api  # reads; writes go through the gate
        self.clock = clock
        self.gate = gate
        self.requests: Counter[tuple[str, str]] = Counter()
        fleet_settings = fleet.settings
        gc = settings.gc_ttl_seconds
        self.limits = Thresholds(
            offline_after=timedelta(
                seconds=fleet_settings.heartbeat_timeout_seconds
                + (settings.last_seen_refresh_seconds or LEGACY_REFRESH_SECONDS)
            ),
            error_after=timedelta(seconds=fleet_settings.error_after_offline_seconds),
            gc_after=None if gc is None else timedelta(seconds=gc),
        )

    async def check(self, body: Mapping[str, Any]) -> Verdict | None:
        """Look at one OpAMPAgent (a plain dict) and act on it; return what was decided."""
        metadata = body.get("metadata") or {}
        status = body.get("status") or {}
        agent_id = _agent_id(body)
        if not agent_id:
            return None
        snapshot = self.fleet.get(agent_id)
        if _connected(snapshot):
            return None  # held right here: the status writer keeps the CR fresh
        if metadata.get("deletionTimestamp"):
            return None
        now = self.clock.now()
        created = parse_time(metadata.get("creationTimestamp"))
        verdict = judge(
            status, created, now, self.limits,
            known_here=snapshot is not None, leased_elsewhere=self.leased_elsewhere(status),
        )  # fmt: skip
        if verdict is None:
            return None
        target = ObjectRef(
            str(metadata.get("name", "")), str(metadata.get("uid", "")), self.api.namespace
        )
        version = str(metadata.get("resourceVersion", ""))
        if verdict.phase is None:
            await self._delete(target, version)
        else:
            await self._transition(target, body, verdict, now)
        return verdict

    def leased_elsewhere(self, status: Mapping[str, Any]) -> bool:
        """The CR names another replica, and that replica has a Lease (current or not)."""
        replica = (status.get("connection") or {}).get("replica")
        if self.replicas is None or not replica or replica == self.settings.replica_id:
            return False
        return self.replicas.live(str(replica)) is not None

    def next_look(self, body: Mapping[str, Any]) -> datetime | None:
        """When `judge` may first decide something about this CR (None: never, or not
        until the CR changes).

        None too while a session in this process holds the agent: the fleet's own deadline
        judges it, and the session's end is written to the CR, whose watch event asks
        again. Without this, CRs are written on change only, so an Online CR's lastSeenAt
        falls behind and every CR held here fell due and was read again every few seconds
        (10,000 CRs every 5 s at 10,000 agents, a fifth of the operator's steady CPU).
        """
        agent_id = _agent_id(body)
        if agent_id and _connected(self.fleet.get(agent_id)):
            return None
        status = body.get("status") or {}
        created = parse_time((body.get("metadata") or {}).get("creationTimestamp"))
        return due_at(status, created, self.limits, leased_elsewhere=self.leased_elsewhere(status))

    async def _transition(
        self, target: ObjectRef, body: Mapping[str, Any], verdict: Verdict, now: datetime
    ) -> None:
        assert verdict.phase is not None
        metadata, status = body.get("metadata") or {}, body.get("status") or {}
        version = str(metadata.get("resourceVersion", ""))
        desired = disconnected_status(
            status, verdict.phase, verdict.reason, generation=metadata.get("generation"), now=now
        )
        try:
            await self.gate.patch_agent_status(target.name, merge_patch(status, desired), version)
        except KubeApiError as error:
            self._count("status", error)
            if error.status in (404, 409):
                return  # it changed or went away: the next tick looks again
            raise
        self._count("status", None)
        metrics.kube_liveness_transitions.labels(verdict.phase.value, verdict.reason).inc()
        previous = str(status.get("phase", ""))
        message = describe_transition(
            AgentPhase(previous) if previous in set(AgentPhase) else None,
            verdict.phase,
            verdict.reason,
            self.fleet.settings,
            self.settings.replica_id,
        )
        message += f"; no live session holds it (lastSeenAt {status.get('lastSeenAt', 'never')})"
        log.info("OpAMPAgent %s: %s", target.name, message)
        if self.settings.post_events:
            try:
                await self.gate.post_event(
                    target, event_type=event_type(verdict.phase, verdict.reason),
                    reason=verdict.reason, message=message, at=now,
                    reporter=self.settings.replica_id,
                )  # fmt: skip
            except KubeApiError as error:
                # The transition is written; the next tick will not repeat it, so this
                # Event is lost: say so once, and count it.
                self._count("event", error)
                log.error("Event for OpAMPAgent %s not posted: %s", target.name, error)
            else:
                self._count("event", None)

    async def _delete(self, target: ObjectRef, version: str) -> None:
        try:
            deleted = await self.gate.delete_agent(target.name, target.uid, version)
        except KubeApiError as error:
            self._count("delete", error)
            raise
        self._count("delete", None)
        if deleted:
            metrics.kube_gc_deleted.inc()
            log.info("OpAMPAgent %s deleted: Offline/Error longer than the GC TTL", target.name)

    def _count(self, kind: str, error: KubeApiError | None) -> None:
        outcome = "ok" if error is None else error.outcome
        self.requests[(kind, outcome)] += 1  # the gate counted it in the metric


def _agent_id(body: Mapping[str, Any]) -> str | None:
    """The agent a CR mirrors: from its name, else its status."""
    name = str((body.get("metadata") or {}).get("name", ""))
    found = agent_id_from_name(name) or (body.get("status") or {}).get("instanceUid")
    return str(found) if found else None


def _connected(snapshot: AgentSnapshot | None) -> bool:
    """A session in this process holds the agent."""
    return snapshot is not None and snapshot.connected
