"""GitOps: remote config declared in Kubernetes, handed to the fleet, reported back in status.

Every replica runs one `GitOpsController` (see `kube/api/listwatch.py` for why not Kopf handlers):
- two informers keep a small cache of every OpAMPAgent (labels, generation, own
  `spec.remoteConfig`, the reconnect annotation, a few status fields) and every
  OpAMPAgentConfig (selector, priority, config);
- a resolver task gives each agent whose inputs changed its effective config
  (`kube/gitops/resolver.py` has the precedence) through `Fleet.set_desired_config`; the fleet sends
  it to the agent if it is connected here, and keeps it for when it connects;
- the status writer asks `observed_generation` and `problem` when it writes an OpAMPAgent
  (`observedGeneration`, and the RemoteConfigApplied/Reconciling/Stalled conditions);
- a status task writes each OpAMPAgentConfig's counts and conditions, from the OpAMPAgent
  statuses (written by whichever replica holds each agent), at most every interval;
- `opamp.dev/reconnect-requested-at` on an OpAMPAgent: the replica holding the agent asks it
  to reconnect, once per annotation value, and records the value in `status.reconnect`;
- `spec.rollout` of an OpAMPAgentConfig: which agents get its new config and which keep the
  stable one, and the step decision, are in `kube/gitops/rollouts.py`.

Every write (config status, reconnect and restart records, rollout decisions and their
Events) goes through the shared `WriteGate` (paced with every other CR write), each
preconditioned on the resourceVersion its patch was computed from: on Conflict the object is
read again and the patch computed anew (a rollout decision is decided anew), so a lagging
watch never makes a replica overwrite a newer status (another replica's counts, another
replica's reconnect record, another replica's step decision).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from opamp_operator import metrics
from opamp_operator.config import KubeSettings
from opamp_operator.fleet.clock import Clock
from opamp_operator.fleet.model import AgentPhase
from opamp_operator.fleet.registry import Fleet
from opamp_operator.fleet.remoteconfig import DesiredConfig
from opamp_operator.kube.api import NotFound
from opamp_operator.kube.api.listwatch import Informer, InformerHandler
from opamp_operator.kube.api.resources import KubeApi, KubeApiError
from opamp_operator.kube.gitops.connsettings import (
    FleetSettings,
    SettingsSpec,
    SettingsSpecError,
    build,
    choose,
    parse_settings,
)
from opamp_operator.kube.gitops.outcomes import ConfigOutcomes
from opamp_operator.kube.gitops.requests import RECORD_RETRIES, record_handled
from opamp_operator.kube.gitops.resolver import (
    ConfigSpecError,
    FleetConfig,
    Resolution,
    fleet_config,
    own_config,
    resolve,
)
from opamp_operator.kube.gitops.restart import RestartRequests
from opamp_operator.kube.gitops.rollouts import (
    ConfigRollout,
    RolloutDecider,
    observe,
    offered_config,
    read_rollout,
    rolled_back_error,
    rollout_conditions,
)
from opamp_operator.kube.shapes.agentstatus import condition, format_time, merge_patch
from opamp_operator.kube.shapes.configstatus import REMOTE_CONFIG_APPLIED, AgentView, config_status
from opamp_operator.kube.shapes.naming import (
    CONFIG_PLURAL,
    PLURAL,
    RECONNECT_ANNOTATION,
    agent_id_from_name,
)
from opamp_operator.kube.writes.gate import WriteGate

log = logging.getLogger(__name__)

_YIELD_EVERY = 500  # agents resolved between two yields to the event loop
# The status fields kept per OpAMPAgent, and of the maps among them the keys read: the rest
# of each map (the connection's address, transport, liveness...) was ~0.5 KB per agent.
_STATUS_KEYS: Mapping[str, tuple[str, ...] | None] = {
    "phase": None,
    "desiredConfig": ("hash", "source"),
    "reconnect": ("requestedAt",),
    "connection": ("replica",),
    "disconnectReason": None,
}
_CONDITION_KEYS = ("type", "status", "reason", "message")
# Throttled / unavailable config status writes are tried again this many times (with the
# gate's backoff) before the status waits for its next interval.
_WRITE_RETRIES = RECORD_RETRIES
# Secrets referenced by connection settings are read again this often (the operator may only
# `get` Secrets, never list or watch them): a rotated token is offered within this time.
SECRET_REFRESH_SECONDS = 5.0


@dataclass(slots=True)
class _Agent:
    """What the controller keeps of one OpAMPAgent (not its whole status: fleets are large)."""

    name: str
    agent_id: str
    generation: int | None
    labels: dict[str, str]
    own: DesiredConfig | None
    own_error: str | None
    reconnect: str | None  # the annotation's value
    status: dict[str, Any]  # _STATUS_KEYS and the RemoteConfigApplied condition
    settings: SettingsSpec | None = None  # spec.connectionSettings
    settings_error: str | None = None


@dataclass(slots=True)
class _Config:
    name: str
    generation: int | None
    parsed: FleetConfig | None
    error: str | None
    status: dict[str, Any]
    resource_version: str  # of `status`: the precondition of the next status write
    written: dict[str, Any] | None = None  # the last status this replica wrote
    rollout: ConfigRollout | None = None
    settings: FleetSettings | None = None  # spec.connectionSettings, when the spec is valid


@dataclass(frozen=True)
class _Events:
    """Adapts one informer's calls to the controller's methods for that kind."""

    replace_all: Callable[[list[dict[str, Any]]], None]
    apply_one: Callable[[str, Mapping[str, Any]], None]

    def replace(self, items: list[dict[str, Any]]) -> None:
        self.replace_all(items)

    def apply(self, event_type: str, obj: dict[str, Any]) -> None:
        self.apply_one(event_type, obj)


class GitOpsController:
    """Remote config from OpAMPAgent and OpAMPAgentConfig resources; `start()`, `stop()`."""

    def __init__(
        self,
        fleet: Fleet,
        settings: KubeSettings,
        api: KubeApi,
        clock: Clock,
        *,
        mark: Callable[[str], None] | None = None,
        status_interval_seconds: float = 1.0,
        gate: WriteGate | None = None,
        outcomes: ConfigOutcomes | None = None,
    ) -> None:
        self.fleet = fleet
        self.settings = settings
        self.api = api  # reads (and the informers); writes go through the gate
        self.gate = gate or WriteGate.for_settings(api, settings)
        self.clock = clock
        self._started = clock.monotonic()
        self.mark = mark  # StatusWriter.mark: rewrite an agent's CR
        self.status_interval_seconds = status_interval_seconds
        self._agents: dict[str, _Agent] = {}
        self._configs: dict[str, _Config] = {}
        self._valid: list[FleetConfig] = []
        self._resolutions: dict[str, Resolution] = {}  # by CR name
        self.outcomes = outcomes or ConfigOutcomes()  # what the status writer reads
        self._reconnects: dict[str, str] = {}  # CR name -> annotation value acted upon
        self._dirty: set[str] = set()  # CR names to resolve again
        self._resync = False
        self._counts_dirty = True
        self._wake = asyncio.Event()
        self._agents_synced = False
        self._configs_synced = False
        self._writes: set[asyncio.Task[None]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self.informers: list[Informer] = []
        self.restarts = RestartRequests(fleet, settings, api, clock, gate=self.gate)
        self.decider = RolloutDecider(self.gate, settings.replica_id)
        self._settings_wake = asyncio.Event()
        # Agents whose settings need choosing again; None: every agent (a config changed).
        self._settings_dirty: set[str] | None = None
        self._settings_owed = False  # woken for the agents above (or all)
        self._secrets_in_use = False  # the last pass read Secrets: look again periodically

    # -- what the status writer asks ---------------------------------------------------

    def observed_generation(self, agent_id: str) -> int | None:
        return self.outcomes.observed_generation(agent_id)

    def problem(self, agent_id: str) -> str | None:
        return self.outcomes.problem(agent_id)

    def settings_problem(self, agent_id: str) -> str | None:
        return self.outcomes.settings_problem(agent_id)

    @property
    def ready(self) -> bool:
        return self._agents_synced and self._configs_synced

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def agent_events(self) -> InformerHandler:
        """What the replica's one OpAMPAgent watch must feed (`kube/wiring/agentwatch.py`)."""
        return _Events(self.replace_agents, self.apply_agent)

    async def start(self, *, watch_agents: bool = True) -> None:
        """Watch OpAMPAgentConfigs and resolve; with `watch_agents=False` the OpAMPAgents
        come from the replica's shared watch (subscribe `agent_events` to it)."""
        namespace = self.settings.namespace
        configs = _Events(self.replace_configs, self.apply_config)
        self.informers = [Informer(self.api.session, namespace, CONFIG_PLURAL, configs)]
        if watch_agents:  # on its own (tests, tools): a watch of its own
            self.informers.append(Informer(self.api.session, namespace, PLURAL, self.agent_events))
        self._tasks = [
            *(asyncio.create_task(i.run(), name=f"gitops-{i.plural}") for i in self.informers),
            asyncio.create_task(self._resolve_forever(), name="gitops-resolver"),
            asyncio.create_task(self._write_counts_forever(), name="gitops-config-status"),
            asyncio.create_task(self._settings_forever(), name="gitops-connection-settings"),
        ]

    async def stop(self) -> None:
        for task in [*self._tasks, *self._writes]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._writes, return_exceptions=True)
        self._tasks = []
        await self.restarts.stop()

    # -- OpAMPAgent events -------------------------------------------------------------

    def replace_agents(self, items: list[dict[str, Any]]) -> None:
        seen = set()
        for item in items:
            name = _name(item)
            seen.add(name)
            self.apply_agent("ADDED", item)
        for name in set(self._agents) - seen:
            self._agent_deleted(name)
        self._agents_synced = True
        self._resync = True
        self._wake.set()

    def apply_agent(self, event_type: str, obj: Mapping[str, Any]) -> None:
        name = _name(obj)
        if event_type == "DELETED":
            self._agent_deleted(name)
            return
        old = self._agents.get(name)
        entry = self._parse_agent(obj, old)
        if entry is None:
            return
        self._agents[name] = entry
        if (
            old is None
            or old.generation != entry.generation
            or old.labels != entry.labels
            or old.agent_id != entry.agent_id
        ):
            self._dirty.add(name)
            self._wake.set()
            if self._settings_dirty is not None:  # None: every agent is due anyway
                self._settings_dirty.add(name)
            self._settings_wake.set()
        if old is None or old.status != entry.status:
            self._counts_dirty = True
            self._note_rollback(entry)
        self._check_reconnect(entry, obj)
        self.restarts.check(name, entry.agent_id, obj)

    def _parse_agent(self, obj: Mapping[str, Any], old: _Agent | None) -> _Agent | None:
        metadata = obj.get("metadata") or {}
        status = obj.get("status") or {}
        name = str(metadata.get("name", ""))
        agent_id = agent_id_from_name(name) or status.get("instanceUid")
        if not agent_id:
            return None
        generation = metadata.get("generation")
        settings, settings_error = None, None
        if old is not None and old.generation == generation:
            own, own_error = old.own, old.own_error  # the spec did not change
            settings, settings_error = old.settings, old.settings_error
        else:
            own, own_error = None, None
            try:
                own = own_config(name, obj.get("spec"))
            except ConfigSpecError as error:
                own_error = str(error)
            try:
                settings = parse_settings((obj.get("spec") or {}).get("connectionSettings"))
            except SettingsSpecError as error:
                settings_error = str(error)
        kept = {
            key: _narrow(status[key], keys) for key, keys in _STATUS_KEYS.items() if key in status
        }
        applied = condition(status, REMOTE_CONFIG_APPLIED)
        if applied is not None:
            kept["conditions"] = [_narrow(applied, _CONDITION_KEYS)]
        kept["healthy"] = (status.get("health") or {}).get("healthy")  # for rollout gates
        return _Agent(
            name=name,
            agent_id=str(agent_id),
            generation=generation,
            labels=dict(metadata.get("labels") or {}),
            own=own,
            own_error=own_error,
            reconnect=(metadata.get("annotations") or {}).get(RECONNECT_ANNOTATION),
            status=kept,
            settings=settings,
            settings_error=settings_error,
        )

    def _agent_deleted(self, name: str) -> None:
        entry = self._agents.pop(name, None)
        self._resolutions.pop(name, None)
        self._reconnects.pop(name, None)
        self.restarts.forget(name)
        self._dirty.discard(name)
        if entry is None:
            return
        self.outcomes.forget(entry.agent_id)  # config and settings outcomes
        if self.fleet.desired_config(entry.agent_id) is not None:
            self.fleet.set_desired_config(entry.agent_id, None)
            metrics.kube_desired_config_changes.labels("deleted").inc()
        self.fleet.set_desired_settings(entry.agent_id, None)
        self._counts_dirty = True

    # -- OpAMPAgentConfig events -------------------------------------------------------

    def replace_configs(self, items: list[dict[str, Any]]) -> None:
        self._configs = {}
        for item in items:
            self._put_config(item)
        self._configs_changed()
        self._configs_synced = True

    def apply_config(self, event_type: str, obj: Mapping[str, Any]) -> None:
        name = _name(obj)
        if event_type == "DELETED":
            self._configs.pop(name, None)
            self._configs_changed()
            return
        old = self._configs.get(name)
        config = self._put_config(obj)
        if old is None or old.generation != config.generation or _key(old) != _key(config):
            self._configs_changed()  # new spec, or the rollout moved: offer anew
        self._counts_dirty = True

    def _put_config(self, obj: Mapping[str, Any]) -> _Config:
        metadata = obj.get("metadata") or {}
        name = str(metadata.get("name", ""))
        old = self._configs.get(name)
        generation = metadata.get("generation")
        parsed, error, settings = None, None, None
        if old is not None and old.generation == generation:
            parsed, error, settings = old.parsed, old.error, old.settings
        else:
            try:
                parsed = fleet_config(name, obj.get("spec"))
                spec = parse_settings((obj.get("spec") or {}).get("connectionSettings"))
                if spec is not None:
                    settings = FleetSettings(name, parsed.selector, parsed.priority, spec)
            except (ConfigSpecError, SettingsSpecError) as failure:
                parsed, error = None, str(failure)
                metrics.kube_invalid_config_specs.inc()
                log.warning(
                    "OpAMPAgentConfig %s generation %s not used: %s", name, generation, error
                )
        status = dict(obj.get("status") or {})
        config = _Config(name, generation, parsed, error, status, _version(obj), settings=settings)
        config.rollout = read_rollout(name, obj, None if old is None else old.rollout)
        if old is not None and old.generation == generation:
            config.written = old.written
        self._configs[name] = config
        return config

    def _configs_changed(self) -> None:
        self._valid = [c.parsed for c in self._configs.values() if c.parsed is not None]
        self._resync = True
        self._counts_dirty = True
        self._wake.set()
        self._settings_dirty = None
        self._settings_wake.set()

    # -- connection settings -------------------------------------------------------------

    async def _settings_forever(self) -> None:
        """Choose settings for the agents (or configs) that changed; every
        `SECRET_REFRESH_SECONDS` for every agent, but only while some settings use Secrets
        (they are read, not watched): a fleet without them costs no pass over its agents."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settings_wake.wait(), SECRET_REFRESH_SECONDS)
            if self._settings_wake.is_set():  # kept until ready: a wake is never lost
                self._settings_wake.clear()
                self._settings_owed = True
            if not self.ready or not (self._settings_owed or self._secrets_in_use):
                continue
            names = self._settings_dirty if self._settings_owed else None
            self._settings_owed, self._settings_dirty = False, set()
            try:
                await self.refresh_settings(names)
            except Exception:
                self._settings_dirty = None  # the next pass takes everyone
                log.exception("offering connection settings failed; trying again")

    async def refresh_settings(self, names: Collection[str] | None = None) -> None:
        """Give the agents `names` (None: every agent) their connection settings, with the
        Secrets read now."""
        fleet = [c.settings for c in self._configs.values() if c.settings is not None]
        chosen: dict[str, tuple[_Agent, SettingsSpec | None, str]] = {}
        conflicts: dict[str, SettingsSpecError] = {}
        entries = (
            list(self._agents.values())
            if names is None
            else [e for n in names if (e := self._agents.get(n)) is not None]
        )
        for entry in entries:
            try:
                spec, source = choose(entry.labels, entry.settings, fleet)
            except SettingsSpecError as error:
                spec, source = None, ""
                conflicts[entry.agent_id] = error
            if source == "OpAMPAgent":
                source = f"OpAMPAgent/{entry.name}"
            chosen[entry.agent_id] = (entry, spec, source)
        secret_names = {name for _, spec, _ in chosen.values() if spec for name in spec.secrets}
        if names is None:
            self._secrets_in_use = bool(secret_names)
        elif secret_names:
            self._secrets_in_use = True
        secrets: dict[str, Mapping[str, bytes] | None] = {}
        for name in sorted(secret_names):
            try:
                secrets[name] = await self.api.get_secret_data(name)
            except KubeApiError as error:  # not this round: keep what the agents have
                log.warning("reading Secret %s for connection settings failed: %s", name, error)
                return
        for number, (agent_id, (entry, spec, source)) in enumerate(chosen.items(), 1):
            self._offer_settings(entry, spec, source, secrets, conflict=conflicts.get(agent_id))
            if number % _YIELD_EVERY == 0:
                await asyncio.sleep(0)

    def _offer_settings(
        self,
        entry: _Agent,
        spec: SettingsSpec | None,
        source: str,
        secrets: Mapping[str, Mapping[str, bytes] | None],
        *,
        conflict: SettingsSpecError | None = None,
    ) -> None:
        agent_id = entry.agent_id
        desired, problem, reason = None, entry.settings_error, "invalid_spec"
        if problem is None and conflict is not None:
            problem, reason = str(conflict), conflict.reason
        if problem is None and spec is not None:
            try:
                desired = build(spec, source, secrets)
            except SettingsSpecError as error:
                problem, reason = f"{source}: {error}", error.reason
        before = self.outcomes.record_settings_problem(agent_id, problem)
        if problem is not None and before != problem:
            metrics.connection_settings_refusals.labels(reason).inc()
            log.warning("OpAMPAgent %s: connection settings not offered: %s", entry.name, problem)
        if before != problem and self.mark is not None:
            self.mark(agent_id)  # the condition shows it
        self.fleet.set_desired_settings(agent_id, desired)

    # -- resolving ---------------------------------------------------------------------

    async def _resolve_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            metrics.loop_passes.labels("gitops_resolver").inc()  # counted on waking: events applied
            if not self.ready:
                continue
            if self._resync:
                self._resync = False
                self._dirty.clear()
                names = list(self._agents)
            else:
                names, self._dirty = list(self._dirty), set()
            for number, name in enumerate(names, 1):
                entry = self._agents.get(name)
                if entry is not None:
                    self._resolve(entry)
                if number % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)

    def resolve_now(self) -> None:
        """Resolve every agent at once (tests; the task does it in slices)."""
        for entry in list(self._agents.values()):
            self._resolve(entry)

    def _resolve(self, entry: _Agent) -> None:
        result = resolve(entry.labels, entry.own, self._valid, entry.own_error)
        old = self._resolutions.get(entry.name)
        self._resolutions[entry.name] = result
        agent_id = entry.agent_id
        offered = self._offered(result, agent_id)
        before = self.fleet.desired_config(agent_id)
        if _identity(before) != _identity(offered):
            self.fleet.set_desired_config(agent_id, offered)
            source = offered.source.split("/")[0] if offered else "none"
            metrics.kube_desired_config_changes.labels(source).inc()
        rewrite = self.outcomes.record(agent_id, entry.generation, result.problem)
        if old is None or old.matched != result.matched or old.desired is not result.desired:
            self._counts_dirty = True
        if rewrite and self.mark is not None:
            self.mark(agent_id)

    def _offered(self, result: Resolution, agent_id: str) -> DesiredConfig | None:
        """What the agent is offered: a fleet config's new or stable version, by its rollout."""
        desired = result.desired
        if desired is None or not desired.source.startswith("OpAMPAgentConfig/"):
            return desired
        config = self._configs.get(desired.source.split("/", 1)[1])
        if config is None or config.parsed is None or config.parsed.desired is not desired:
            return desired
        return offered_config(config.parsed, config.rollout, agent_id)

    def _note_rollback(self, entry: _Agent) -> None:
        """Tell this replica's fleet about an agent that rolled itself back (its CR says so).

        The replica holding the agent saw it happen; the others, and every replica after a
        restart, learn it here, so that none offers that config again when the agent
        reconnects to it.
        """
        found = rolled_back_error(entry.status)
        if found is not None:
            self.fleet.note_rolled_back(entry.agent_id, *found)

    # -- rollouts --------------------------------------------------------------------------

    async def decide_rollouts(self, *, everything: bool = True) -> int:
        """Evaluate the rollout of each OpAMPAgentConfig; return how many decisions were written.

        Unless `everything`, only rollouts still under way (their gates depend on time).
        """
        agents: dict[str, list[_Agent]] | None = None  # walks every agent: only when needed
        written = 0
        for name, config in list(self._configs.items()):
            parsed, rollout = config.parsed, config.rollout
            if parsed is None or rollout is None:
                continue
            state = rollout.state
            if (
                not everything
                and state is not None
                and state.done
                and (state.config_hash == parsed.desired.hash_hex)
            ):
                continue
            if agents is None:
                agents = self._selected_agents()
            lost = self._offline_counts()
            observed = [
                observe(e.name, e.agent_id, e.status, offline_counts=lost)
                for e in agents.get(name, [])
            ]
            body = await self.decider.run(
                name, parsed, rollout, observed,
                status=config.status, generation=config.generation, now=self.clock.now(),
            )  # fmt: skip
            if body is not None:
                written += 1
                self.apply_config("MODIFIED", body)
        return written

    def _offline_counts(self) -> bool:
        """Whether an agent Offline after a heartbeat timeout may count as a rollout failure.

        Not for two heartbeat timeouts after this replica started: after an operator restart
        (or a replica's crash) the liveness judge marks the agents it has not heard from yet
        Offline although they are only reconnecting, and a reconnect storm is no failure.
        """
        grace = 2 * self.fleet.settings.heartbeat_timeout_seconds
        return self.clock.monotonic() - self._started >= grace

    def _selected_agents(self) -> dict[str, list[_Agent]]:
        """Config name -> the agents it is the effective config of."""
        selected: dict[str, list[_Agent]] = {}
        for name, result in self._resolutions.items():
            entry = self._agents.get(name)
            source = result.desired.source if result.desired is not None else ""
            if entry is not None and source.startswith("OpAMPAgentConfig/"):
                selected.setdefault(source.split("/", 1)[1], []).append(entry)
        return selected

    # -- OpAMPAgentConfig status ---------------------------------------------------------

    async def _write_counts_forever(self) -> None:
        while True:
            await asyncio.sleep(self.status_interval_seconds)
            if not self.ready:
                continue
            try:
                await self.decide_rollouts(everything=self._counts_dirty)
            except Exception:
                log.exception("deciding rollouts failed; trying again")
            metrics.loop_passes.labels("gitops_rollout").inc()
            if not self._counts_dirty:
                continue
            self._counts_dirty = False
            try:
                await self.write_config_statuses()
            except KubeApiError as error:
                self._counts_dirty = True
                log.warning("writing OpAMPAgentConfig statuses failed; trying again: %s", error)
            except Exception:
                self._counts_dirty = True
                log.exception("writing OpAMPAgentConfig statuses failed; trying again")

    def config_statuses(self) -> dict[str, dict[str, Any]]:
        """Every OpAMPAgentConfig's status as this replica sees the fleet now."""
        matched: dict[str, list[AgentView]] = {name: [] for name in self._configs}
        selected: dict[str, list[AgentView]] = {name: [] for name in self._configs}
        conflicted: dict[str, list[AgentView]] = {name: [] for name in self._configs}
        for name, result in self._resolutions.items():
            entry = self._agents.get(name)
            if entry is None:
                continue
            view = AgentView(name, entry.status)
            for config_name in result.matched:
                matched.setdefault(config_name, []).append(view)
            for config_name in result.conflict:
                conflicted.setdefault(config_name, []).append(view)
            source = result.desired.source if result.desired is not None else ""
            if source.startswith("OpAMPAgentConfig/"):
                selected.setdefault(source.split("/", 1)[1], []).append(view)
        now = self.clock.now()
        statuses = {}
        for name, config in self._configs.items():
            statuses[name] = status = config_status(
                config_hash=config.parsed.desired.hash_hex if config.parsed else None,
                error=config.error,
                matched=matched[name],
                selected=selected[name],
                conflicted=conflicted[name],
                previous=config.status,
                generation=config.generation,
                now=now,
            )
            if config.parsed is not None:
                rolling = rollout_conditions(
                    config.parsed, config.rollout, config.status,
                    generation=config.generation, now=now,
                )  # fmt: skip
                if rolling is not None:
                    status["conditions"] = rolling
        return statuses

    async def write_config_statuses(self) -> int:
        """Patch the OpAMPAgentConfigs whose status differs; return how many were written."""
        written = 0
        for name, desired in self.config_statuses().items():
            config = self._configs.get(name)
            if config is None:
                continue
            if desired == config.written or not merge_patch(config.status, desired):
                continue
            if await self._write_config_status(config, desired):
                written += 1
        return written

    async def _write_config_status(self, config: _Config, desired: dict[str, Any]) -> bool:
        """Patch what differs from the status last seen; on Conflict, from a fresh read."""

        def change(body: Mapping[str, Any]) -> dict[str, Any] | None:
            config.status, config.resource_version = dict(body.get("status") or {}), _version(body)
            return merge_patch(config.status, desired) or None

        seen = {"metadata": {"resourceVersion": config.resource_version}, "status": config.status}
        write = functools.partial(
            self.gate.patch_config_status, config.name, retries=_WRITE_RETRIES
        )
        try:
            body = await self.gate.update(
                seen, functools.partial(self.api.get_config, config.name), change, write
            )
        except NotFound:
            return False  # deleted meanwhile: the informer forgets it
        config.written = desired
        if body is None:
            return False  # it already says so (another replica wrote it), or it is gone
        config.status, config.resource_version = dict(body.get("status") or {}), _version(body)
        return True

    # -- reconnect on request ------------------------------------------------------------

    def _check_reconnect(self, entry: _Agent, seen: Mapping[str, Any]) -> None:
        value = entry.reconnect
        if not value:
            return
        handled = (entry.status.get("reconnect") or {}).get("requestedAt")
        if value == handled or self._reconnects.get(entry.name) == value:
            return
        snapshot = self.fleet.get(entry.agent_id)
        if snapshot is not None and snapshot.connected:
            self.fleet.request_reconnect(entry.agent_id)
            result = "reconnect_requested"
            log.info("OpAMPAgent %s: reconnect requested by annotation %r", entry.name, value)
        elif entry.status.get("phase") == AgentPhase.ONLINE.value and (
            (entry.status.get("connection") or {}).get("replica") != self.settings.replica_id
        ):
            return  # another replica holds the session: it acts
        else:
            result = "agent_not_connected"
        self._reconnects[entry.name] = value
        record = {
            "requestedAt": value,
            "handledAt": format_time(self.clock.now()),
            "result": result,
            "replica": self.settings.replica_id,
        }
        task = asyncio.get_running_loop().create_task(
            self._record_reconnect(entry.name, record, seen)
        )
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _record_reconnect(
        self, name: str, record: dict[str, Any], seen: Mapping[str, Any]
    ) -> None:
        await record_handled(
            self.gate, self.api, name, seen, annotation=RECONNECT_ANNOTATION, key="reconnect",
            record=record, acted=lambda r: r.get("result") == "reconnect_requested",
        )  # fmt: skip


def _narrow(value: Any, keys: tuple[str, ...] | None) -> Any:
    """`value` with only `keys`, when it is a map and keys are named; else as it is."""
    if keys is None or not isinstance(value, Mapping):
        return value
    return {key: value[key] for key in keys if key in value}


def _name(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def _version(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


def _key(config: _Config) -> tuple[Any, ...] | None:
    return None if config.rollout is None else config.rollout.key


def _identity(config: DesiredConfig | None) -> tuple[bytes, str] | None:
    return None if config is None else (config.hash, config.source)
