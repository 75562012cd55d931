"""The status writer: fleet events in, OpAMPAgent creates, status patches and Events out.

A heartbeat changes nothing the CR shows except `lastSeenAt`, and that alone is never
written unless the opt-in `last_seen_refresh_seconds` is set (then a periodic sweep finds
agents due for it: N agents cost N / refresh writes per second). By default a steady fleet
costs no API writes at all: the replica's Lease (`kube/leases/`) proves its sessions alive,
and `lastSeenAt` is as of the CR's latest change. Everything else (phase transitions, sessions,
what agents report) marks the agent in a bounded coalescing set; workers write each marked
agent's latest snapshot as a JSON merge patch of what differs from the CR, at a bounded rate,
retrying failures with backoff. Writes go through the shared `WriteGate`
(`kube/writes/gate.py`: the pace, the precondition, the count).

Every status patch carries the CR's resourceVersion as a precondition: if anyone else wrote
the CR meanwhile (another replica, the liveness timer, a user), the patch fails with 409 and
the writer re-reads the CR before it writes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, Protocol

from opamp_operator import metrics
from opamp_operator.config import KubeSettings
from opamp_operator.fleet.clock import Clock
from opamp_operator.fleet.events import FleetEvent, PhaseChanged, Subscription
from opamp_operator.fleet.model import AgentSnapshot
from opamp_operator.fleet.registry import Fleet
from opamp_operator.kube.api.resources import KubeApi, KubeApiError, ObjectRef
from opamp_operator.kube.mirror.known import Mirror, labels_patch
from opamp_operator.kube.mirror.pending import PendingUpdates
from opamp_operator.kube.shapes.agentstatus import (
    build_status,
    format_time,
    merge_patch,
    parse_time,
)
from opamp_operator.kube.shapes.configstatus import desired_config_status, remote_config_conditions
from opamp_operator.kube.shapes.naming import agent_labels, resource_name
from opamp_operator.kube.shapes.podref import PodLink, PodLinks, pod_labels, pod_status
from opamp_operator.kube.shapes.settingsstatus import (
    connection_settings_conditions,
    connection_settings_status,
)
from opamp_operator.kube.shapes.transitionevent import describe, event_type
from opamp_operator.kube.writes.gate import WriteGate, retry_hint

log = logging.getLogger(__name__)

_CONFLICT_RETRIES = 3
_NEVER = timedelta(days=36500)  # lastSeenAt refresh off: an interval that never comes
_PROBE_SECONDS = 2.0  # while the API server is unreachable, a retry at least this often
_Patch = Callable[[str], Awaitable[dict[str, Any]]]  # resourceVersion -> the CR as written


class RemoteConfigView(Protocol):
    """What the writer asks the GitOps controller about an agent."""

    def observed_generation(self, agent_id: str) -> int | None: ...

    def problem(self, agent_id: str) -> str | None: ...

    def settings_problem(self, agent_id: str) -> str | None: ...


class StatusWriter:
    """Mirrors the fleet into OpAMPAgent resources; `start()`, then `stop()` to flush."""

    def __init__(
        self,
        settings: KubeSettings,
        fleet: Fleet,
        subscription: Subscription,
        api: KubeApi,
        clock: Clock,
        *,
        gate: WriteGate | None = None,
        pod_links: PodLinks | None = None,
        remote_config: RemoteConfigView | None = None,
    ) -> None:
        self.settings = settings
        self.fleet = fleet
        self.subscription = subscription
        self.api = api
        self.clock = clock
        self.gate = gate or WriteGate.for_settings(api, settings)
        self.pending = PendingUpdates(settings.write_queue_size)
        self.requests: Counter[tuple[str, str]] = Counter()  # (kind, outcome) of API writes
        self._mirrors: dict[str, Mirror] = {}
        self._deleted: set[str] = set()  # CR deleted while the agent was not connected
        # status.pod and the pod labels (None: linking is off, and they are removed).
        self.pod_links = pod_links
        self._retiring: set[str] = set()  # delete the CR after the next write (Pod gone)
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._sweeper: asyncio.Task[None] | None = None
        refresh = settings.last_seen_refresh_seconds
        self._refresh = _NEVER if refresh is None else timedelta(seconds=refresh)
        self._api_ok = True  # the latest request got an answer we could act on
        # What GitOps resolved: the generation, and why an agent has no config (see
        # `kube/gitops/outcomes.py`). None: observedGeneration is the CR's generation.
        self.remote_config = remote_config

    # -- lifecycle -----------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Started, and the API server accepted the latest write (or none was needed yet).

        False while writes fail for lack of an answer, permission or capacity (no response,
        403, 429, 5xx); True again at the next success.
        """
        return bool(self._tasks) and self._api_ok

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="kube-writer-sweep")
        self._tasks = [self._sweeper, asyncio.create_task(self._consume(), name="kube-writer")]
        for number in range(self.settings.api_threads):
            self._tasks.append(asyncio.create_task(self._work(), name=f"kube-writer-{number}"))

    async def stop(self, within_seconds: float | None = None) -> bool:
        """Write what is pending (bounded by `stop_timeout_seconds` and `within_seconds`),
        then stop.

        False when something was left unwritten (the replica's Lease should then expire, so
        that a survivor adopts what this one could not write).
        """
        if self._sweeper is not None:
            self._sweeper.cancel()  # lastSeenAt refreshes are not worth the wait
        self.pending.clear_refresh()
        bound = self.settings.stop_timeout_seconds
        if within_seconds is not None:
            bound = min(bound, within_seconds)
        flushed = await self.flush(within_seconds=bound)
        if not flushed:
            log.warning("kube writer stopped with %d CR updates unwritten", len(self.pending))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        return flushed

    async def flush(self, *, within_seconds: float) -> bool:
        """Wait until every event received so far is written; False if that took too long."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_seconds
        while self.subscription.depth() or self.pending.busy:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    # -- inputs ----------------------------------------------------------------------

    def mark(self, agent_id: str, urgent: bool = True) -> None:
        """Ask for `agent_id`'s CR to be brought up to date."""
        if not self.pending.mark(agent_id, urgent):
            metrics.kube_updates_dropped.inc()
        self._wake()

    def cr_deleted(self, agent_id: str, uid: str | None) -> None:
        """The CR was deleted (by a user, or GC): recreate it only for a connected agent."""
        mirror = self._mirrors.get(agent_id)
        if mirror is not None and uid is not None and mirror.uid != uid:
            return  # an older incarnation; we already made a new one
        self._mirrors.pop(agent_id, None)
        snapshot = self.fleet.get(agent_id)
        if snapshot is not None and snapshot.connected:
            self.mark(agent_id)
        else:
            self._deleted.add(agent_id)

    def retire(self, agent_id: str) -> None:
        """Delete `agent_id`'s CR once its state so far is written (its Pod is gone).

        Events already published (its Offline transition) are taken in first, so their
        Kubernetes Events are posted before the CR goes. Connecting again cancels this.
        """
        while (event := self.subscription.get_nowait()) is not None:
            self._on_event(event)
        self._retiring.add(agent_id)
        self.mark(agent_id)

    def sweep(self) -> int:
        """Mark agents whose CR's lastSeenAt is due for a refresh; return how many."""
        if self.pending.overflowed or self.subscription.needs_resync:
            self._resync()
        now, marked = self.clock.now(), 0
        for agent_id, mirror in self._mirrors.items():
            if mirror.refresh_check_at > now:
                continue
            mirror.refresh_check_at = now + self._refresh
            seen = self.fleet.get(agent_id)
            written = mirror.last_seen_written
            if seen is not None and (
                written is None or seen.last_seen_at - written >= timedelta(seconds=1)
            ):
                self.mark(agent_id, urgent=False)
                marked += 1
        return marked

    def _resync(self) -> None:
        self.pending.overflowed = self.subscription.needs_resync = False
        log.warning("kube writer lost events; comparing every agent with its CR")
        for snapshot in self.fleet.snapshots():
            self.mark(snapshot.agent_id)

    async def _consume(self) -> None:
        while True:
            event = await self.subscription.get()
            self._on_event(event)

    def _on_event(self, event: FleetEvent) -> None:
        if isinstance(event, PhaseChanged) and self.settings.post_events:
            accepted = self.pending.add_transition(event)
        else:
            accepted = self.pending.mark(event.agent_id)
        if not accepted:
            metrics.kube_updates_dropped.inc()
        self._wake()

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_interval_seconds)
            try:
                self.sweep()
            except Exception:
                log.exception("kube writer sweep failed; trying again next interval")
            metrics.loop_passes.labels("cr_sweep").inc()

    # -- the workers -------------------------------------------------------------------

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            agent_id = await self._next()
            try:
                await self._sync(agent_id)
            except KubeApiError as error:
                self._failed(agent_id, error, loop.time())
            except Exception as error:
                log.exception("kube writer failed on agent %s", agent_id)
                self._failed(agent_id, KubeApiError(0, repr(error)), loop.time())
            else:
                self.pending.succeeded(agent_id)
            finally:
                metrics.kube_write_queue_depth.set(len(self.pending))

    async def _next(self) -> str:
        loop = asyncio.get_running_loop()
        while True:
            agent_id = self.pending.take(loop.time())
            if agent_id is not None:
                return agent_id
            self._wakeup.clear()
            retry_at = self.pending.next_retry_at()
            timeout = None if retry_at is None else max(0.0, retry_at - loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)

    def _failed(self, agent_id: str, error: KubeApiError, now: float) -> None:
        if not error.retryable:
            self.pending.abandoned(agent_id)
            log.error("kube API refused the CR of agent %s for good: %s", agent_id, error)
            return
        # While the API server does not answer, one agent at a time retries every few
        # seconds; its first success releases the others (see `_count`) instead of each
        # waiting out its own backoff (up to retry_max_seconds) after the server is back.
        probe = _PROBE_SECONDS if error.outcome == "unreachable" or error.status == 503 else None
        attempts, delay = self.pending.failed(
            agent_id, now, self.settings.retry_max_seconds, probe_delay=probe,
            at_least=retry_hint(error),
        )  # fmt: skip
        if attempts == 1 or attempts.bit_count() == 1:  # 1, 2, 4, 8...: log, do not flood
            log.warning(
                "kube write for agent %s failed (attempt %d, again in %.1fs): %s",
                agent_id, attempts, delay, error,
            )  # fmt: skip

    async def _sync(self, agent_id: str) -> None:
        """Bring one agent's CR up to date with the fleet (create, patch, post Events)."""
        # Read before the snapshot: a retire() asked for after it is done by the next sync.
        retiring = agent_id in self._retiring
        snapshot = self.fleet.get(agent_id)
        if snapshot is None:
            self.pending.drop_transitions(agent_id)
            self._retiring.discard(agent_id)
            return
        mirror = self._mirrors.get(agent_id)
        if mirror is None:
            if agent_id in self._deleted and not snapshot.connected:
                self.pending.drop_transitions(agent_id)  # respect the deletion until reconnect
                self._retiring.discard(agent_id)
                return
            self._deleted.discard(agent_id)
            mirror = await self._ensure(snapshot)
        for _ in range(_CONFLICT_RETRIES):
            outcome = await self._write(snapshot, mirror)
            if outcome == "ok":
                break
            if outcome == "foreign":
                self.pending.drop_transitions(agent_id)
                return
            mirror = await self._reload(snapshot, recreate=outcome == "gone")
            if mirror is None:
                return
            snapshot = self._latest(snapshot)
        else:
            raise KubeApiError(409, f"CR of agent {agent_id} kept changing under us")
        await self._post_transitions(snapshot, mirror)
        if retiring:
            await self._retire(agent_id, mirror)

    async def _retire(self, agent_id: str, mirror: Mirror) -> None:
        """Delete the CR (by uid, whatever its version) unless the agent connected again."""
        self._retiring.discard(agent_id)
        latest = self.fleet.get(agent_id)
        if latest is not None and latest.connected:
            return
        try:
            await self.gate.delete_agent(mirror.name, mirror.uid, None)
        except KubeApiError as error:
            self._count("delete", error.outcome)
            self._retiring.add(agent_id)  # the retry does it
            raise
        self._count("delete", "ok")
        self._mirrors.pop(agent_id, None)
        self._deleted.add(agent_id)  # as if a user deleted it: back when the agent connects

    async def _ensure(self, snapshot: AgentSnapshot) -> Mirror:
        name = resource_name(snapshot.agent_id)
        try:
            body = await self.gate.create_agent(name, self._labels(snapshot))
        except KubeApiError as error:
            self._count("create", error.outcome)
            if error.status != 409:
                raise
            found = await self.api.get_agent(name)
            if found is None:
                raise KubeApiError(404, f"{name} vanished right after a conflict") from error
            body = found
        else:
            self._count("create", "ok")
        return self._remember(snapshot.agent_id, body)

    async def _reload(self, snapshot: AgentSnapshot, recreate: bool) -> Mirror | None:
        """Read the CR again after a conflict; after a 404, make it again if still wanted."""
        self._mirrors.pop(snapshot.agent_id, None)
        if recreate:
            if not snapshot.connected:
                self._deleted.add(snapshot.agent_id)
                self.pending.drop_transitions(snapshot.agent_id)
                return None
            return await self._ensure(snapshot)
        body = await self.api.get_agent(resource_name(snapshot.agent_id))
        if body is None:
            return await self._reload(snapshot, recreate=True)
        return self._remember(snapshot.agent_id, body)

    async def _write(self, snapshot: AgentSnapshot, mirror: Mirror) -> str:
        """One attempt: "ok", "conflict", "gone", or "foreign" (another replica is fresher)."""
        previous = mirror.status()
        if self._held_elsewhere(snapshot, previous):
            self.gate.skipped("status", "skipped_foreign")
            return "foreign"
        now = self.clock.now()
        labels = labels_patch(mirror.labels, self._labels(snapshot))
        if labels:
            call = functools.partial(self.gate.patch_agent_labels, mirror.name, labels)
            outcome = await self._request("labels", mirror, call)
            if outcome != "ok":
                return outcome
        generation, problem = self._remote_config_inputs(snapshot, mirror, previous)
        desired = build_status(
            snapshot, previous, generation=generation,
            replica=self.settings.replica_id, now=now,
        )  # fmt: skip
        desired["pod"] = pod_status(self._pod_link(snapshot.agent_id))
        desired["desiredConfig"] = desired_config_status(snapshot)
        desired["conditions"] += remote_config_conditions(
            snapshot, problem, previous, generation=generation, now=now
        )
        desired["connectionSettings"] = connection_settings_status(snapshot)
        refused = (
            self.remote_config.settings_problem(snapshot.agent_id) if self.remote_config else None
        )
        desired["conditions"] += connection_settings_conditions(
            snapshot, refused, previous, generation=generation, now=now
        )
        patch = merge_patch(previous, desired)
        refresh_due = mirror.last_seen_written is None or (
            now - mirror.last_seen_written >= self._refresh
        )
        if not patch or (set(patch) == {"lastSeenAt"} and not refresh_due):
            return "ok"
        call = functools.partial(self.gate.patch_agent_status, mirror.name, patch)
        return await self._request("status", mirror, call)

    async def _request(self, kind: str, mirror: Mirror, call: _Patch) -> str:
        """One write through the gate, preconditioned on the CR's resourceVersion."""
        try:
            body = await call(mirror.resource_version)
        except KubeApiError as error:
            self._count(kind, error.outcome)
            if error.status == 409:
                return "conflict"
            if error.status == 404:
                return "gone"
            raise
        self._count(kind, "ok")
        mirror.update(body, self._refresh)
        return "ok"

    async def _post_transitions(self, snapshot: AgentSnapshot, mirror: Mirror) -> None:
        target = ObjectRef(mirror.name, mirror.uid, self.api.namespace)
        for event in self.pending.transitions(snapshot.agent_id):
            try:
                await self.gate.post_event(
                    target, event_type=event_type(event.current, event.reason), reason=event.reason,
                    message=describe(event, self.fleet.settings, self.settings.replica_id),
                    at=event.at,
                    reporter=self.settings.replica_id,
                )  # fmt: skip
            except KubeApiError as error:
                self._count("event", error.outcome)
                if error.retryable:
                    raise
                log.error("Event for agent %s refused: %s", snapshot.agent_id, error)
            else:
                self._count("event", "ok")
            self.pending.transition_done(snapshot.agent_id, event)

    # -- helpers ---------------------------------------------------------------------

    def _remote_config_inputs(
        self, snapshot: AgentSnapshot, mirror: Mirror, previous: dict[str, Any]
    ) -> tuple[int | None, str | None]:
        """observedGeneration to write, and why the agent has no config (if it should)."""
        view = self.remote_config
        if view is None:
            return mirror.generation, None
        generation = view.observed_generation(snapshot.agent_id)
        if generation is None:  # not resolved yet: keep what the CR says
            kept = previous.get("observedGeneration")
            generation = kept if isinstance(kept, int) else None
        return generation, view.problem(snapshot.agent_id)

    def _pod_link(self, agent_id: str) -> PodLink | None:
        return self.pod_links.get(agent_id) if self.pod_links is not None else None

    def _labels(self, snapshot: AgentSnapshot) -> dict[str, str]:
        return {**agent_labels(snapshot), **pod_labels(self._pod_link(snapshot.agent_id))}

    def _latest(self, snapshot: AgentSnapshot) -> AgentSnapshot:
        return self.fleet.get(snapshot.agent_id) or snapshot

    def _held_elsewhere(self, snapshot: AgentSnapshot, previous: dict[str, Any]) -> bool:
        """A disconnected agent whose CR another replica wrote with fresher news."""
        if snapshot.connected:
            return False
        replica = (previous.get("connection") or {}).get("replica")
        seen = parse_time(previous.get("lastSeenAt"))
        ours = parse_time(format_time(snapshot.last_seen_at))
        if seen is None or ours is None or replica == self.settings.replica_id:
            return False
        # lastSeenAt has whole seconds: an agent that reached the other replica within the
        # second of its last message here is tied, and the other replica says it is Online.
        tied_online = seen == ours and previous.get("phase") == "Online"
        return seen > ours or tied_online

    def _remember(self, agent_id: str, body: dict[str, Any]) -> Mirror:
        mirror = Mirror.from_body(body, self.clock.now(), self._refresh)
        mirror.name = mirror.name or resource_name(agent_id)
        self._mirrors[agent_id] = mirror
        return mirror

    def _count(self, kind: str, outcome: str) -> None:
        if outcome == "ok":
            if not self._api_ok and self.pending.retry_all_now():
                self._wake()  # the API server answers again: no need to wait out backoffs
            self._api_ok = True
        elif outcome in ("unreachable", "throttled", "error"):
            self._api_ok = False
        self.requests[(kind, outcome)] += 1  # the gate counted it in the metric

    def _wake(self) -> None:
        self._wakeup.set()
        metrics.kube_write_queue_depth.set(len(self.pending))
