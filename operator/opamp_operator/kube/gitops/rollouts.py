"""Progressive rollout of OpAMPAgentConfigs: between the GitOps controller and the planner.

The planner (`fleet/rollout.py`) is pure; this module reads what it needs from the objects,
tells the controller which version each agent is offered, and writes the decisions.

Where the state lives: in the OpAMPAgentConfig's own status, nowhere else.
- `status.rollout`: the rollout of `configHash` (phase, step, the cohort's rank threshold,
  times, counts, failures); `state_from_status` reads it back after a restart, so a rollout
  continues at the step it was at, and a reconnect storm (agents Offline because of the
  restart, then back) neither restarts it nor counts as failures.
- `status.stableConfig`: one copy of the last config that was fully rolled out (its files and
  hash): what agents not updated yet, and all of them after a rollback, are offered. Only one
  previous version is kept, so an OpAMPAgentConfig's object holds its config at most twice.

Who decides, with several replicas: each replica runs the controller and offers configs to
the agents it holds, by the persisted state only (`offered_config`): no replica runs ahead of
a decision. Each replica also evaluates the decision, from the same inputs (every OpAMPAgent's
status, which every replica watches), but writes it as a compare-and-swap: a merge patch of
`status.rollout` with the `resourceVersion` it decided on. Only one replica's write of a
transition succeeds (the others get 409 Conflict and decide again on the new state, where
the step just started), so every step, pause, resume and rollback happens once and its Event
is posted once, by the replica whose write succeeded. No leader is needed; a replica that
dies mid-decision leaves either the old state or the new one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from opamp_operator.fleet.remoteconfig import ROLLED_BACK_PREFIX, ConfigState, DesiredConfig
from opamp_operator.fleet.rollout import (
    PAUSED_BY_SPEC,
    AgentObservation,
    Decision,
    Phase,
    RolloutEvent,
    RolloutState,
    Strategy,
    Version,
    assignment,
    decide,
    state_from_status,
    state_to_status,
)
from opamp_operator.kube.api import Conflict, KubeApiError, NotFound
from opamp_operator.kube.api.resources import ObjectRef
from opamp_operator.kube.gitops.resolver import ConfigSpecError, FleetConfig, parse_files
from opamp_operator.kube.shapes.agentstatus import (
    READY,
    RECONCILING,
    STALLED,
    condition,
    make_condition,
)
from opamp_operator.kube.shapes.configstatus import REMOTE_CONFIG_APPLIED
from opamp_operator.kube.shapes.naming import CONFIG_KIND
from opamp_operator.kube.writes.gate import WriteGate

log = logging.getLogger(__name__)

RESUME_ANNOTATION: Final = "opamp.dev/resume-rollout"


@dataclass(frozen=True, slots=True)
class ConfigRollout:
    """What the controller keeps of one OpAMPAgentConfig for its rollout."""

    state: RolloutState | None  # status.rollout
    stable: DesiredConfig | None  # status.stableConfig
    resume: str | None  # the resume annotation's value
    uid: str
    resource_version: str  # the precondition of the decision write
    files: Mapping[str, Any] | None  # spec.remoteConfig as written

    @property
    def key(self) -> tuple[Any, ...]:
        """What `offered_config` depends on: agents are resolved again when it changes."""
        state = self.state
        decided = None if state is None else (state.config_hash, state.phase, state.cohort_up_to)
        return (decided, None if self.stable is None else self.stable.hash)


def read_rollout(name: str, obj: Mapping[str, Any], old: ConfigRollout | None) -> ConfigRollout:
    metadata = obj.get("metadata") or {}
    status = obj.get("status") or {}
    return ConfigRollout(
        state=state_from_status(status.get("rollout")),
        stable=_stable(name, status.get("stableConfig"), old),
        resume=(metadata.get("annotations") or {}).get(RESUME_ANNOTATION),
        uid=str(metadata.get("uid", "")),
        resource_version=str(metadata.get("resourceVersion") or ""),
        files=(obj.get("spec") or {}).get("remoteConfig"),
    )


def _stable(name: str, raw: Any, old: ConfigRollout | None) -> DesiredConfig | None:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("hash"), str):
        return None
    if old is not None and old.stable is not None and old.stable.hash_hex == raw["hash"]:
        return old.stable  # one copy of the files, shared by every agent offered it
    try:
        stable = DesiredConfig.of(parse_files(raw.get("remoteConfig")), f"{CONFIG_KIND}/{name}")
    except ConfigSpecError as error:
        log.warning("OpAMPAgentConfig %s: status.stableConfig unusable (%s); ignored", name, error)
        return None
    if stable.hash_hex != raw["hash"] or not stable.files:
        log.warning("OpAMPAgentConfig %s: status.stableConfig does not match its hash", name)
        return None
    return stable


def offered_config(
    config: FleetConfig, rollout: ConfigRollout | None, agent_id: str
) -> DesiredConfig | None:
    """The version of `config` the agent is offered: the new one or the stable one (or none)."""
    if rollout is None:
        return config.desired
    stable = rollout.stable
    version = assignment(
        config.rollout,
        rollout.state,
        new_hash=config.desired.hash_hex,
        stable_hash=None if stable is None else stable.hash_hex,
        agent_id=agent_id,
    )
    return config.desired if version is Version.NEW else stable


def observe(
    name: str, agent_id: str, status: Mapping[str, Any], *, offline_counts: bool = True
) -> AgentObservation:
    """One agent as the planner sees it, from the fields the controller keeps of its CR.

    Without `offline_counts` an Offline agent's reason is left out, so that it cannot count
    as lost (see `GitOpsController._offline_counts`).
    """
    applied = condition(status, REMOTE_CONFIG_APPLIED)
    healthy = status.get("healthy")
    reason = status.get("disconnectReason") if offline_counts else None
    return AgentObservation(
        agent_id=agent_id,
        name=name,
        desired_hash=(status.get("desiredConfig") or {}).get("hash"),
        applied_reason=None if applied is None else str(applied.get("reason")),
        applied_message="" if applied is None else str(applied.get("message", "")),
        phase=str(status.get("phase", "")),
        phase_reason=reason,
        healthy=healthy if isinstance(healthy, bool) else None,
    )


def rolled_back_error(status: Mapping[str, Any]) -> tuple[bytes, str] | None:
    """(hash, the agent's error) when its CR says it rolled itself back from its config."""
    applied = condition(status, REMOTE_CONFIG_APPLIED)
    if applied is None or applied.get("reason") != ConfigState.ROLLED_BACK.value:
        return None
    config_hash = (status.get("desiredConfig") or {}).get("hash")
    try:
        raw = bytes.fromhex(str(config_hash))
    except ValueError:
        return None
    return raw, str(applied.get("message", "")).removeprefix(ROLLED_BACK_PREFIX)


# -- conditions --------------------------------------------------------------------------------


def rollout_conditions(
    config: FleetConfig,
    rollout: ConfigRollout | None,
    previous: Mapping[str, Any] | None,
    *,
    generation: int | None,
    now: datetime,
) -> list[dict[str, Any]] | None:
    """Ready/Reconciling/Stalled while a progressive rollout is not complete (else None).

    Progressing, or paused by spec: Reconciling (InProgress). Paused on failures, or rolled
    back: Stalled (Failed), until a resume or a new config. Complete: the usual conditions.
    """
    if config.rollout.strategy is Strategy.ALL_AT_ONCE:
        return None
    state = None if rollout is None else rollout.state
    new_hash = config.desired.hash_hex
    if state is None or state.config_hash != new_hash:
        stable = None if rollout is None else rollout.stable
        if stable is not None and stable.hash_hex == new_hash:
            return None
        values = (("False", "RolloutPending"), ("True", "RolloutPending"), ("False", "NoFailures"))
        message = f"the rollout of config {new_hash[:12]} is about to start"
    elif state.phase is Phase.COMPLETE:
        return None
    else:
        message = f"step {state.step + 1}/{state.steps}: {_summary(state)}; {state.message}"
        if state.phase is Phase.PROGRESSING or state.reason == PAUSED_BY_SPEC:
            reason = "RolloutProgressing" if state.phase is Phase.PROGRESSING else "RolloutPaused"
            values = (("False", reason), ("True", reason), ("False", "NoFailures"))
        else:
            reason = "RolloutPaused" if state.phase is Phase.PAUSED else "RolledBack"
            values = (("False", reason), ("False", reason), ("True", reason))
    kinds = (READY, RECONCILING, STALLED)
    return [
        make_condition(previous, kind, state_, reason_, message, generation=generation, since=now)
        for kind, (state_, reason_) in zip(kinds, values, strict=True)
    ]


def _summary(state: RolloutState) -> str:
    counts = state.counts
    return (
        f"{counts.updated}/{counts.total} agents updated, {counts.applied} applied, "
        f"{counts.failed} failed, {counts.pending} pending"
    )


# -- decisions -----------------------------------------------------------------------------------


def decision_patch(
    config: FleetConfig,
    rollout: ConfigRollout,
    decision: Decision,
    *,
    status: Mapping[str, Any],
    generation: int | None,
) -> dict[str, Any] | None:
    """The status patch that records `decision`, or None when the status says it already."""
    state = decision.state
    if state is None:
        return None
    patch: dict[str, Any] = {}
    written = state_to_status(state)
    if written != status.get("rollout"):
        patch["rollout"] = written
    stable = rollout.stable
    new_hash = config.desired.hash_hex
    if state.phase is Phase.COMPLETE and (stable is None or stable.hash_hex != new_hash):
        patch["stableConfig"] = {
            "hash": new_hash,
            "generation": generation,
            "remoteConfig": dict(rollout.files or {}),
        }
    return patch or None


class RolloutDecider:
    """Evaluates and writes the rollout decision of each OpAMPAgentConfig (see module doc)."""

    def __init__(self, gate: WriteGate, replica: str) -> None:
        self.gate = gate
        self.replica = replica

    async def run(
        self,
        name: str,
        config: FleetConfig,
        rollout: ConfigRollout,
        agents: list[AgentObservation],
        *,
        status: Mapping[str, Any],
        generation: int | None,
        now: datetime,
    ) -> dict[str, Any] | None:
        """Decide once for this config; the object's new body when a decision was written."""
        stable = rollout.stable
        decision = decide(
            config.rollout,
            rollout.state,
            new_hash=config.desired.hash_hex,
            stable_hash=None if stable is None else stable.hash_hex,
            agents=agents,
            resume=rollout.resume,
            now=now,
        )
        patch = decision_patch(config, rollout, decision, status=status, generation=generation)
        if patch is None:
            return None
        try:
            body = await self.gate.patch_config_status(
                name, patch, rollout.resource_version, kind="rollout"
            )
        except (Conflict, NotFound):
            return None  # someone decided first, or it was deleted: decide again on the news
        for event in decision.events:
            log.info("OpAMPAgentConfig %s: %s: %s", name, event.kind.value, event.message)
            await self._post(name, rollout.uid, event, now)
        return body

    async def _post(self, name: str, uid: str, event: RolloutEvent, now: datetime) -> None:
        reason = event.kind.value
        try:
            await self.gate.post_event(
                ObjectRef(name, uid, self.gate.namespace, kind=CONFIG_KIND),
                event_type="Warning" if event.warning else "Normal",
                reason=reason,
                message=event.message,
                at=now,
                reporter=self.replica,
            )
        except KubeApiError as error:
            log.warning("OpAMPAgentConfig %s: Event %s not posted: %s", name, reason, error)
