"""Adoption of a SIGKILLed replica at fleet scale (issue 15): how long until a survivor ends
what the lost replica held, and what it cost the survivor.

After the storm (or the offline scenario when the storm is skipped):
1. a second operator process (replica id `bench-survivor`, its own ports, the same namespace
   and database, the operator's default Lease settings) starts; wait for its /readyz and for
   its Lease in the API server;
2. SIGKILL the first operator, which holds the main fleet, and right after it the simulator.
   Not before: the simulator's exit would close every session on the live operator
   (`connection_closed`) and leave nothing to adopt. Not left running either: with no load
   balancer in the benchmark its agents can only retry the dead port (backoff 0.5 s to 30 s,
   hundreds of refused connects per second at 10,000 agents), CPU taken from the survivor on
   the shared 2 cores that measures nothing; killing a dead replica's clients is invisible to
   everyone else;
3. the benchmark's own CR watch times every CR that was Online on the killed replica going
   Offline `replica_lost`; then PostgreSQL: the killed replica's rows still open, the rows
   closed `replica_lost`, and one transition row per agent.

Expected (docs/benchmarks.md): the Lease was last renewed up to one renew interval before the
kill, expires one duration after that renewal, is adopted only one renew interval (the grace)
after it expired, as of a Lease listing made every renew interval, at the adopter's next look
(also every renew interval); then two writes per CR (status patch, Event) at the write pace.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from opamp_operator.config import KubeSettings
from opamp_operator.fleet.model import Reason
from opamp_operator.testbed.postgres import PostgresEndpoint
from tests.support.operator_process import OperatorProcess, kubectl

from .crwatch import CrWatch
from .pgstats import AdoptionRows, adoption_rows
from .procstat import ProcSample, cpu_percent, sample
from .simfleet import SimulatorGroup
from .stack import (
    OperatorOptions,
    TestBed,
    idle_queues,
    operator_pid,
    operator_process,
    scrape,
    wait_metrics,
    writes_by_kind,
)

SURVIVOR_ID = "bench-survivor"
REASON = str(Reason.REPLICA_LOST)
WRITES_PER_CR = 2  # the status patch and its Event
LEASE = KubeSettings()  # the operator's defaults: neither process gets a Lease flag


@dataclass
class AdoptionResult:
    agents: int  # CRs Online on the killed replica at the kill
    lost_replica: str
    lease_duration: float
    lease_renew_interval: float
    writes_per_second: float
    survivor_ready_seconds: float = 0.0  # spawn to /readyz and its Lease present
    renewed_before_kill: float | None = None  # the killed replica's last Lease renewal
    look_seconds: float | None = None  # kill to the survivor's log "replica ... lost"
    first_seconds: float | None = None  # kill to the first CR seen Offline replica_lost
    last_seconds: float | None = None  # kill to the last (None: not all within the bound)
    delays: list[float] = field(default_factory=list)  # kill to each CR seen, seconds
    adopted: int = 0  # of `agents`, seen Offline replica_lost
    other_outcomes: dict[str, int] = field(default_factory=dict)  # "phase/reason" of the rest
    unexpected: int = 0  # CRs not on the killed replica that went replica_lost
    duplicates: int = 0  # CRs the watch saw enter Offline replica_lost more than once
    adoptions: float = 0.0  # the survivor's opamp_replica_adoptions_total
    lost_lease_deleted: bool = False
    rows: AdoptionRows | None = None
    survivor_cpu_seconds: float = 0.0  # kill to adoption done
    survivor_cpu_pct_writing: float | None = None  # first to last CR Offline, % of one core
    survivor_kube_writes: dict[str, float] = field(default_factory=dict)  # kind/outcome
    timed_out: list[str] = field(default_factory=list)  # the waits that hit their bound

    @property
    def expected_first(self) -> tuple[float, float]:
        """Kill to the adopter's look that adopts: (earliest, latest) seconds."""
        d, r = self.lease_duration, self.lease_renew_interval
        # Renewed b = 0..r before the kill, lost d after that renewal, adopted r (the grace)
        # after that as of a Lease listing (every r), at the adopter's next look (every r):
        # d + r - b .. d + 3r - b, so d .. d + 3r when b is not known.
        b = self.renewed_before_kill
        return (d, d + 3 * r) if b is None else (d + r - b, d + 3 * r - b)

    @property
    def writes(self) -> float:
        """The survivor's successful CR status patches and Events."""
        return self.survivor_kube_writes.get("status/ok", 0.0) + self.survivor_kube_writes.get(
            "event/ok", 0.0
        )

    @property
    def expected_last(self) -> float:
        """The latest the last CR should be Offline: the latest look plus the writes."""
        return self.expected_first[1] + WRITES_PER_CR * self.agents / self.writes_per_second


def leases(kubeconfig: Path, namespace: str) -> dict[str, dict[str, Any]]:
    found = kubectl(kubeconfig, "-n", namespace, "get", "leases", "-o", "json")
    return {item["metadata"]["name"]: item for item in json.loads(found)["items"]}


def lease_exists(kubeconfig: Path, namespace: str, name: str) -> bool:
    return name in leases(kubeconfig, namespace)


def renewed_at(lease: dict[str, Any] | None) -> float | None:
    """spec.renewTime (a MicroTime, "2026-12-03T15:40:01.123456Z") as Unix seconds."""
    text = ((lease or {}).get("spec") or {}).get("renewTime")
    if not isinstance(text, str):
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def wait_lease(
    kubeconfig: Path, namespace: str, name: str, present: bool, within: float
) -> bool:
    deadline = time.monotonic() + within
    while await asyncio.to_thread(lease_exists, kubeconfig, namespace, name) != present:
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.5)
    return True


def adopting_at(log_text: str, lost_id: str) -> float | None:
    """When the survivor's log says it began adopting `lost_id` (Unix seconds), if it did.

    The operator logs in local time with milliseconds: "2026-12-03 15:41:25,521 WARNING ..."."""
    marker = f"replica {lost_id} lost ("
    for line in log_text.splitlines():
        if marker in line:
            stamp, _, millis = line[:23].partition(",")
            try:
                return time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1e3
            except ValueError:
                return None
    return None


class AdoptionRun:
    """One run: `await AdoptionRun(...).run()` with the first operator and its fleet live."""

    def __init__(
        self,
        bed: TestBed,
        namespace: str,
        database: PostgresEndpoint,
        options: OperatorOptions,
        *,
        lost: OperatorProcess,
        fleet: SimulatorGroup | None,
        watch: CrWatch,
        log: Path,
        within: float,
    ) -> None:
        self.bed, self.namespace, self.database = bed, namespace, database
        self.lost, self.fleet, self.watch, self.within = lost, fleet, watch, within
        self.survivor = operator_process(
            bed, namespace, database, options, log, replica_id=SURVIVOR_ID
        )
        self.lost_id = lost.config.replica_id
        self.held: set[str] = set()  # CRs Online on the killed replica at the kill
        self.result = AdoptionResult(
            0, self.lost_id, LEASE.lease_duration_seconds,
            LEASE.lease_renew_interval_seconds, options.kube_writes_per_second,
        )  # fmt: skip

    async def run(self) -> AdoptionResult:
        try:
            if await self._start_survivor():
                await self._kill_and_measure()
        finally:
            await self.survivor.cleanup()
        return self.result

    async def _start_survivor(self) -> bool:
        started = time.monotonic()
        try:
            await self.survivor.start(within=120)
        except AssertionError as error:  # not ready in time, or exited: its log tail says why
            self.result.timed_out.append(f"survivor ready (120 s): {str(error)[:200]}")
            return False
        if not await wait_lease(self.bed.kubeconfig, self.namespace, SURVIVOR_ID, True, 60):
            self.result.timed_out.append("survivor Lease (60 s)")
            return False
        self.result.survivor_ready_seconds = time.monotonic() - started
        return True

    async def _kill_and_measure(self) -> None:
        r, pid = self.result, operator_pid(self.survivor)
        self.held = {
            a
            for a, v in self.watch.crs.items()
            if v.phase == "Online" and v.replica == self.lost_id
        }
        r.agents = len(self.held)
        m0, s0 = await scrape(self.survivor.api_url), sample(pid)
        killed = await self._kill()
        (first, s_first), (last, s_last) = await self._wait_offline(killed, pid)
        done = await wait_metrics(
            self.survivor.api_url,
            lambda m: m.value("opamp_replica_adoptions_total") >= 1 and idle_queues(m), 60,
        )  # fmt: skip
        if done is None:
            r.timed_out.append("survivor's adoption counted and queues idle (60 s)")
        m1, s1 = await scrape(self.survivor.api_url), sample(pid)
        self._times(killed, first, last, s_first, s_last)
        r.adoptions = m1.value("opamp_replica_adoptions_total")
        r.survivor_cpu_seconds = s1.cpu_seconds - s0.cpu_seconds
        before, after = writes_by_kind(m0), writes_by_kind(m1)
        r.survivor_kube_writes = {
            k: v - before.get(k, 0.0) for k, v in after.items() if v > before.get(k, 0.0)
        }
        r.lost_lease_deleted = await wait_lease(
            self.bed.kubeconfig, self.namespace, self.lost_id, False, 10
        )
        r.rows = await adoption_rows(self.database, self.lost_id, REASON)
        began = adopting_at(self.survivor.log_text(), self.lost_id)
        r.look_seconds = None if began is None else began - killed

    async def _kill(self) -> float:
        """SIGKILL the replica, then its agents; the wall time of the kill."""
        killed = time.time()
        await self.lost.kill()
        if self.fleet is not None:
            await self.fleet.kill()
        # Read after the kill, so no renewal can follow; adoption deletes it tens of s later.
        found = await asyncio.to_thread(leases, self.bed.kubeconfig, self.namespace)
        renewal = renewed_at(found.get(self.lost_id))
        self.result.renewed_before_kill = None if renewal is None else killed - renewal
        return killed

    async def _wait_offline(
        self, killed: float, pid: int
    ) -> tuple[tuple[bool, ProcSample], tuple[bool, ProcSample]]:
        """Wait for the first and for every held CR Offline replica_lost (one bound for
        both); whether each was seen, with the survivor's CPU sampled then."""
        deadline = time.monotonic() + self.within

        def seen() -> int:
            return sum(1 for a in self.held if self.watch.seen_with(a, "Offline", REASON, killed))

        first = await self.watch.wait_for(lambda: seen() > 0, self.within)
        s_first = sample(pid)
        left = max(0.0, deadline - time.monotonic())
        last = await self.watch.wait_for(lambda: seen() >= len(self.held), left)
        if last is None:
            self.result.timed_out.append(f"every CR Offline {REASON} ({self.within:g} s)")
        return (first is not None, s_first), (last is not None, sample(pid))

    def _times(
        self, killed: float, first: bool, last: bool, s_first: ProcSample, s_last: ProcSample
    ) -> None:
        r, watch = self.result, self.watch
        for agent_id in self.held:
            times = watch.seen_with(agent_id, "Offline", REASON, killed)
            if times:
                r.delays.append(times[0] - killed)
                r.duplicates += int(len(times) > 1)
            else:
                view = watch.crs.get(agent_id)
                key = "gone" if view is None else f"{view.phase}/{view.reason}"
                r.other_outcomes[key] = r.other_outcomes.get(key, 0) + 1
        r.adopted = len(r.delays)
        r.unexpected = sum(
            1
            for agent_id in watch.crs
            if agent_id not in self.held and watch.seen_with(agent_id, "Offline", REASON, killed)
        )
        if r.delays:
            r.first_seconds = min(r.delays) if first else None
            r.last_seconds = max(r.delays) if last else None
        if first and last:
            r.survivor_cpu_pct_writing = cpu_percent(s_first, s_last)
