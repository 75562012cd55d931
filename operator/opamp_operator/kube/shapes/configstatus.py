"""Status about remote config, for OpAMPAgents and OpAMPAgentConfigs (pure: no I/O, no clock).

Conditions follow the kstatus conventions that Argo CD and Flux read: `Reconciling` True while
a config is on its way, `Stalled` True when it cannot get there without a change; with
`observedGeneration` equal to `metadata.generation` and neither set, an object is Current.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from opamp_operator.fleet.model import AgentPhase, AgentSnapshot
from opamp_operator.fleet.remoteconfig import ConfigState
from opamp_operator.kube.shapes.agentstatus import (
    READY,
    RECONCILING,
    STALLED,
    Progress,
    Status,
    condition,
    kstatus_conditions,
    make_condition,
)

REMOTE_CONFIG_APPLIED: Final = "RemoteConfigApplied"

MAX_PROBLEMS: Final = 10  # agents listed by name in an OpAMPAgentConfig's status

_IN_PROGRESS = {ConfigState.PENDING, ConfigState.APPLYING}
# RemoteConfigApplied per state: True when applied, Unknown on the way, False otherwise.
_APPLIED_STATE = {
    ConfigState.APPLIED: "True",
    ConfigState.PENDING: "Unknown",
    ConfigState.APPLYING: "Unknown",
}


def desired_config_status(snapshot: AgentSnapshot) -> dict[str, Any] | None:
    """`status.desiredConfig` of an OpAMPAgent: what the operator sends it, and from where."""
    if snapshot.desired_config_hash is None:
        return None
    return {"hash": snapshot.desired_config_hash, "source": snapshot.desired_config_source}


def remote_config_conditions(
    snapshot: AgentSnapshot,
    problem: str | None,
    previous: Mapping[str, Any] | None,
    *,
    generation: int | None,
    now: datetime,
) -> list[dict[str, Any]]:
    """RemoteConfigApplied (only while managed), Reconciling and Stalled for one agent.

    `problem`: why no config could be chosen (a conflict between OpAMPAgentConfigs, an
    unusable spec), as the resolver says. Reconciling and Stalled also say what the phase
    means to kstatus (see `status.kstatus_conditions`), so every agent has them.
    """
    state, message = snapshot.remote_config_state, snapshot.remote_config_message
    progress: Progress | None = None
    if problem is not None:
        reason = "InvalidSpec" if problem.startswith("spec.") else "Conflict"
        applied, progress = "False", Progress("stalled", reason, problem)
    elif state is not ConfigState.NONE:
        reason = state.value
        applied = _APPLIED_STATE.get(state, "False")
        if applied == "False":
            progress = Progress("stalled", reason, message)
        else:
            progress = Progress("reconciling" if state in _IN_PROGRESS else "done", reason, message)
    phase = kstatus_conditions(
        snapshot.phase, snapshot.phase_reason, progress, previous, generation=generation, now=now
    )
    if progress is None:
        return phase
    found = make_condition(
        previous, REMOTE_CONFIG_APPLIED, applied, reason, progress.message,
        generation=generation, since=now,
    )  # fmt: skip
    return [found, *phase]


# -- OpAMPAgentConfig ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgentView:
    """One agent as an OpAMPAgentConfig's status counts it: from its CR."""

    name: str
    status: Mapping[str, Any]

    def outcome(self, config_hash: str) -> tuple[str, str]:
        """(applied | pending | failed, message) for the config with `config_hash`."""
        desired = self.status.get("desiredConfig") or {}
        found = condition(self.status, REMOTE_CONFIG_APPLIED)
        if desired.get("hash") != config_hash or found is None:
            return "pending", "not taken over by the agent's operator replica yet"
        reason, message = str(found.get("reason")), str(found.get("message", ""))
        if reason == ConfigState.APPLIED.value:
            return "applied", message
        if reason in (ConfigState.FAILED.value, ConfigState.UNSUPPORTED.value,
                      ConfigState.ROLLED_BACK.value):  # fmt: skip
            return "failed", message
        return "pending", message

    @property
    def online(self) -> bool:
        return self.status.get("phase") == AgentPhase.ONLINE.value


def config_status(
    *,
    config_hash: str | None,
    error: str | None,
    matched: Iterable[AgentView],
    selected: Iterable[AgentView],
    conflicted: Iterable[AgentView],
    previous: Mapping[str, Any] | None,
    generation: int | None,
    now: datetime,
) -> Status:
    """The whole status of one OpAMPAgentConfig.

    `matched`: agents its selector matches; `selected`: those it is the config of;
    `conflicted`: those where it ties with another config (they get neither).
    """
    counts = {"applied": 0, "pending": 0, "failed": 0}
    problems: list[dict[str, str]] = []
    reconciling = 0
    selected_list = list(selected)
    conflicted_list = sorted(conflicted, key=lambda agent: agent.name)
    for agent in sorted(selected_list, key=lambda agent: agent.name):
        outcome, message = agent.outcome(config_hash or "")
        counts[outcome] += 1
        if outcome == "pending" and agent.online:
            reconciling += 1
        if outcome == "failed" and len(problems) < MAX_PROBLEMS:
            problems.append({"agent": agent.name, "reason": outcome, "message": message[:512]})
    for agent in conflicted_list[: max(0, MAX_PROBLEMS - len(problems))]:
        problems.append({"agent": agent.name, "reason": "conflict", "message": "equal rank"})
    status: Status = {
        "observedGeneration": generation,
        "configHash": config_hash,
        "matchedAgents": len(list(matched)),
        "selectedAgents": len(selected_list),
        "appliedAgents": counts["applied"],
        "pendingAgents": counts["pending"],
        "failedAgents": counts["failed"],
        "conflictingAgents": len(conflicted_list),
        "problems": problems,
    }
    bad = counts["failed"] + len(conflicted_list)
    if error is not None:
        ready = ("False", "InvalidSpec", error)
        stalled = ("True", "InvalidSpec", error)
        busy = ("False", "InvalidSpec", error)
    else:
        summary = (
            f"{counts['applied']}/{len(selected_list)} selected agents applied; "
            f"{counts['pending']} pending ({reconciling} online), {counts['failed']} failed, "
            f"{len(conflicted_list)} in conflict"
        )
        stalled = ("True", "AgentsFailed", summary) if bad else ("False", "NoFailures", summary)
        busy = ("True", "Applying", summary) if reconciling else ("False", "NoneApplying", summary)
        # Ready as kstatus reads it (False is InProgress): True once nothing is under way and
        # nothing failed; Offline agents still pending do not hold the config back.
        if bad or reconciling:
            ready = ("False", "NotAllApplied", summary)
        elif counts["applied"] == len(selected_list):
            ready = ("True", "AllApplied", summary)
        else:
            ready = ("True", "AppliedToOnlineAgents", summary)

    def entry(kind: str, values: tuple[str, str, str]) -> dict[str, Any]:
        return make_condition(previous, kind, *values, generation=generation, since=now)

    status["conditions"] = [entry(READY, ready), entry(RECONCILING, busy), entry(STALLED, stalled)]
    return status
