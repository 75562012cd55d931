"""Progressive rollout of one fleet config: spec, persisted state, cohorts, step decision (pure).

No I/O and no clock: the caller passes `now` and what the agents' CRs say. docs/gitops.md
("Progressive rollout") is the user's view; the rules in short:

- Canary order: agents are ordered by `agent_rank` (the first 8 bytes of sha256 of the agent
  id, as a big-endian integer; ties by id), so a re-run picks the same canaries and the order
  does not depend on which replica computes it.
- A step's cohort is persisted as a rank threshold (`cohortUpTo`): an agent gets the new
  config when its rank is at most the threshold. Every replica can so decide for the agents
  it holds without a list of names, and an agent that joins during the rollout gets what its
  rank says (new if it falls into the steps done so far, else the previous config). The
  threshold only grows.
- Failures: an updated agent that reports FAILED (or NotSupported) for the new hash, that
  rolled itself back (`detect_self_rollback`), or that applied it and is unhealthy, Offline
  after a heartbeat timeout, or in Error while the rollout runs. More than `maxFailures` new
  failures (beyond those accepted by a resume) pause the rollout or roll it back.
- A step is done when its gate passed: `pauseSeconds` after it started, or every Online agent
  of the cohort applied the config (or failed, within the failure limit) and stayed healthy
  for `healthyForSeconds` (default 0).
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any, Final, TypeVar

MAX_STEPS: Final = 20
_E = TypeVar("_E", bound=StrEnum)
MAX_RANK: Final = (1 << 64) - 1
MAX_LISTED: Final = 10  # failed agents named in status.rollout.failures


class RolloutSpecError(ValueError):
    """A `spec.rollout` that cannot be used."""


class Strategy(StrEnum):
    ALL_AT_ONCE = "AllAtOnce"
    PROGRESSIVE = "Progressive"


class OnFailure(StrEnum):
    PAUSE = "Pause"
    ROLLBACK = "Rollback"


class Phase(StrEnum):
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    ROLLED_BACK = "RolledBack"
    COMPLETE = "Complete"


class Version(StrEnum):
    """Which config an agent is offered."""

    NEW = "new"
    PREVIOUS = "previous"


# Reasons on status.rollout (and the Events).
PAUSED_BY_SPEC: Final = "PausedBySpec"
TOO_MANY_FAILURES: Final = "TooManyFailures"


@dataclass(frozen=True, slots=True)
class Amount:
    """A number of agents, absolute or a percentage of a total."""

    value: int
    percent: bool

    def of(self, total: int) -> int:
        """For steps: percentages round up, so `1%` of a small fleet is one agent."""
        if self.percent:
            return min(total, math.ceil(total * self.value / 100))
        return min(total, self.value)

    def limit(self, total: int) -> int:
        """For maxFailures: percentages round down (10 % of 5 updated agents tolerates 0)."""
        return total * self.value // 100 if self.percent else self.value

    def __str__(self) -> str:
        return f"{self.value}%" if self.percent else str(self.value)


ALL: Final = Amount(100, percent=True)


@dataclass(frozen=True, slots=True)
class RolloutSpec:
    strategy: Strategy = Strategy.ALL_AT_ONCE
    steps: tuple[Amount, ...] = (ALL,)
    pause_seconds: float | None = None
    healthy_seconds: float = 0.0  # used when pause_seconds is None
    max_failures: Amount = Amount(0, percent=False)
    on_failure: OnFailure = OnFailure.PAUSE
    paused: bool = False


def parse_amount(raw: Any, what: str, *, zero: bool = False) -> Amount:
    """`3` or `"25%"`; raises RolloutSpecError."""
    if isinstance(raw, bool):
        raise RolloutSpecError(f"{what} must be a count or a percentage like '10%'")
    if isinstance(raw, int):
        amount = Amount(raw, percent=False)
    elif isinstance(raw, str) and raw.strip().endswith("%"):
        number = raw.strip()[:-1].strip()
        if not number.isdigit():
            raise RolloutSpecError(f"{what}: {raw!r} is not a percentage like '10%'")
        amount = Amount(int(number), percent=True)
        if amount.value > 100:
            raise RolloutSpecError(f"{what}: {raw!r} is more than 100%")
    elif isinstance(raw, str) and raw.strip().isdigit():
        amount = Amount(int(raw.strip()), percent=False)
    else:
        raise RolloutSpecError(f"{what} must be a count or a percentage like '10%'")
    if amount.value < (0 if zero else 1):
        raise RolloutSpecError(f"{what} must be at least {0 if zero else 1}")
    return amount


def _seconds(raw: Any, what: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or raw < 0:
        raise RolloutSpecError(f"{what} must be a number of seconds >= 0")
    return float(raw)


def _enum(kind: type[_E], raw: Any, what: str) -> _E:
    try:
        return kind(raw)
    except ValueError:
        allowed = " | ".join(member.value for member in kind)
        raise RolloutSpecError(f"{what} must be one of {allowed}, not {raw!r}") from None


def parse_rollout(raw: Any) -> RolloutSpec:
    """`spec.rollout` of an OpAMPAgentConfig (None: AllAtOnce); raises RolloutSpecError."""
    if raw is None:
        return RolloutSpec()
    if not isinstance(raw, Mapping):
        raise RolloutSpecError("rollout must be an object")
    strategy = _enum(Strategy, raw.get("strategy", Strategy.ALL_AT_ONCE.value), "strategy")
    steps_raw = raw.get("steps")
    if steps_raw is None:
        steps_raw = ["100%"] if strategy is Strategy.ALL_AT_ONCE else [1, "10%", "50%", "100%"]
    if not isinstance(steps_raw, list) or not steps_raw:
        raise RolloutSpecError("steps must be a non-empty list of counts or percentages")
    steps = tuple(parse_amount(s, f"steps[{i}]") for i, s in enumerate(steps_raw))
    if steps[-1] != ALL:
        steps = (*steps, ALL)  # a rollout ends with every agent
    if len(steps) > MAX_STEPS:
        raise RolloutSpecError(f"at most {MAX_STEPS} steps")
    if "pauseSeconds" in raw and "healthyForSeconds" in raw:
        raise RolloutSpecError("pauseSeconds and healthyForSeconds exclude each other")
    pause = raw.get("pauseSeconds")
    paused = raw.get("paused", False)
    if not isinstance(paused, bool):
        raise RolloutSpecError("paused must be true or false")
    return RolloutSpec(
        strategy=strategy,
        steps=steps,
        pause_seconds=None if pause is None else _seconds(pause, "pauseSeconds"),
        healthy_seconds=_seconds(raw.get("healthyForSeconds", 0), "healthyForSeconds"),
        max_failures=parse_amount(raw.get("maxFailures", 0), "maxFailures", zero=True),
        on_failure=_enum(OnFailure, raw.get("onFailure", OnFailure.PAUSE.value), "onFailure"),
        paused=paused,
    )


# -- canary order ------------------------------------------------------------------------


@functools.lru_cache(maxsize=1 << 16)  # evaluated per agent at every decision
def agent_rank(agent_id: str) -> int:
    """Where the agent stands in the canary order: lower ranks get a new config first."""
    return int.from_bytes(hashlib.sha256(agent_id.encode()).digest()[:8], "big")


def cohort_threshold(ranks: Sequence[int], count: int, current: int) -> int:
    """The rank threshold that includes the `count` lowest ranks (never below `current`)."""
    if count <= 0:
        return current
    if count >= len(ranks):
        return MAX_RANK
    return max(current, sorted(ranks)[count - 1])


# -- what the agents' CRs say ------------------------------------------------------------


class Outcome(StrEnum):
    PENDING = "pending"
    APPLIED = "applied"
    FAILED = "failed"


_FAILED_REASONS = frozenset({"Failed", "NotSupported", "RolledBack"})
_LOST_REASONS = frozenset({"heartbeat_timeout", "offline_too_long"})


@dataclass(frozen=True, slots=True)
class AgentObservation:
    """One agent selected by the config, as its OpAMPAgent CR shows it."""

    agent_id: str
    name: str
    desired_hash: str | None  # status.desiredConfig.hash: what its replica offers it
    applied_reason: str | None  # reason of its RemoteConfigApplied condition
    applied_message: str = ""
    phase: str = "Online"
    phase_reason: str | None = None  # status.disconnectReason while Offline
    healthy: bool | None = None

    @property
    def online(self) -> bool:
        return self.phase == "Online"

    def outcome(self, new_hash: str) -> tuple[Outcome, str]:
        """How far the agent got with `new_hash`, and why it counts as failed if it does."""
        if self.desired_hash != new_hash or self.applied_reason is None:
            return Outcome.PENDING, ""
        if self.applied_reason in _FAILED_REASONS:
            return Outcome.FAILED, f"{self.applied_reason}: {self.applied_message}"
        if self.applied_reason != "Applied":
            return Outcome.PENDING, ""
        if self.phase == "Error" or (not self.online and self.phase_reason in _LOST_REASONS):
            return Outcome.FAILED, f"{self.phase} ({self.phase_reason}) after applying"
        if self.online and self.healthy is False:
            return Outcome.FAILED, "unhealthy after applying"
        return Outcome.APPLIED, ""


# -- persisted state ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Counts:
    total: int = 0  # agents the config is selected for
    updated: int = 0  # offered the new config
    applied: int = 0
    failed: int = 0
    pending: int = 0


@dataclass(frozen=True, slots=True)
class RolloutState:
    """`status.rollout` of an OpAMPAgentConfig: what the decider persisted."""

    config_hash: str
    previous_hash: str | None
    phase: Phase
    step: int  # index into the spec's steps
    steps: int
    cohort_up_to: int  # rank threshold: agents at or below it get the new config
    started_at: datetime
    step_started_at: datetime
    healthy_since: datetime | None = None
    finished_at: datetime | None = None
    reason: str = ""
    message: str = ""
    accepted_failures: int = 0
    resumed: str | None = None  # the resume annotation's value acted upon
    counts: Counts = Counts()
    failures: tuple[tuple[str, str], ...] = ()  # (agent name, why), at most MAX_LISTED

    @property
    def done(self) -> bool:
        return self.phase in (Phase.COMPLETE, Phase.ROLLED_BACK)


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def state_to_status(state: RolloutState) -> dict[str, Any]:
    """The `status.rollout` object; `step` there is 1-based, as people count."""
    counts = state.counts
    return {
        "configHash": state.config_hash,
        "previousHash": state.previous_hash,
        "phase": state.phase.value,
        "step": state.step + 1,
        "steps": state.steps,
        "cohortUpTo": f"{state.cohort_up_to:016x}",
        "startedAt": _time(state.started_at),
        "stepStartedAt": _time(state.step_started_at),
        "healthySince": _time(state.healthy_since),
        "finishedAt": _time(state.finished_at),
        "reason": state.reason,
        "message": state.message,
        "acceptedFailures": state.accepted_failures,
        "resumed": state.resumed,
        "totalAgents": counts.total,
        "updatedAgents": counts.updated,
        "appliedAgents": counts.applied,
        "failedAgents": counts.failed,
        "pendingAgents": counts.pending,
        "failures": [{"agent": name, "message": why} for name, why in state.failures],
    }


def state_from_status(raw: Any) -> RolloutState | None:
    """`status.rollout` back into a state; None when absent or not ours (then start anew)."""
    if not isinstance(raw, Mapping) or not isinstance(raw.get("configHash"), str):
        return None
    started = _parse_time(raw.get("startedAt"))
    step_started = _parse_time(raw.get("stepStartedAt"))
    try:
        phase = Phase(str(raw.get("phase")))
        cohort = int(str(raw.get("cohortUpTo")), 16)
        step, steps = int(raw["step"]) - 1, int(raw["steps"])
    except (KeyError, TypeError, ValueError):
        return None
    if started is None or step_started is None:
        return None
    failures = tuple(
        (str(f.get("agent", "")), str(f.get("message", "")))
        for f in raw.get("failures") or []
        if isinstance(f, Mapping)
    )
    return RolloutState(
        config_hash=raw["configHash"],
        previous_hash=raw.get("previousHash"),
        phase=phase,
        step=step,
        steps=steps,
        cohort_up_to=cohort,
        started_at=started,
        step_started_at=step_started,
        healthy_since=_parse_time(raw.get("healthySince")),
        finished_at=_parse_time(raw.get("finishedAt")),
        reason=str(raw.get("reason") or ""),
        message=str(raw.get("message") or ""),
        accepted_failures=int(raw.get("acceptedFailures") or 0),
        resumed=raw.get("resumed"),
        counts=Counts(
            total=int(raw.get("totalAgents") or 0),
            updated=int(raw.get("updatedAgents") or 0),
            applied=int(raw.get("appliedAgents") or 0),
            failed=int(raw.get("failedAgents") or 0),
            pending=int(raw.get("pendingAgents") or 0),
        ),
        failures=failures,
    )


# -- which config each agent is offered ----------------------------------------------------


def assignment(
    spec: RolloutSpec,
    state: RolloutState | None,
    *,
    new_hash: str,
    stable_hash: str | None,
    agent_id: str,
) -> Version:
    """The version one agent selected by the config is offered, by the persisted state.

    Before the decider has started a rollout for `new_hash` (its state names another hash)
    everyone keeps the previous config: no replica runs ahead of the decision.
    """
    if spec.strategy is Strategy.ALL_AT_ONCE or stable_hash == new_hash:
        return Version.NEW
    if state is None or state.config_hash != new_hash:
        return Version.PREVIOUS
    if state.phase is Phase.COMPLETE:
        return Version.NEW
    if state.phase is Phase.ROLLED_BACK:
        return Version.PREVIOUS
    return Version.NEW if agent_rank(agent_id) <= state.cohort_up_to else Version.PREVIOUS


# -- the step decision -----------------------------------------------------------------------


class EventKind(StrEnum):
    STARTED = "RolloutStarted"
    STEP = "RolloutStep"
    PAUSED = "RolloutPaused"
    RESUMED = "RolloutResumed"
    ROLLED_BACK = "RolloutRolledBack"
    COMPLETE = "RolloutComplete"


@dataclass(frozen=True, slots=True)
class RolloutEvent:
    kind: EventKind
    message: str

    @property
    def warning(self) -> bool:
        return self.kind in (EventKind.PAUSED, EventKind.ROLLED_BACK)


@dataclass(frozen=True, slots=True)
class Decision:
    state: RolloutState | None
    events: tuple[RolloutEvent, ...] = ()


@dataclass(frozen=True, slots=True)
class _Tally:
    counts: Counts
    failures: tuple[tuple[str, str], ...]  # all of them, in canary order


def _tally(
    state_up_to: int, everyone: bool, agents: Sequence[AgentObservation], new: str
) -> _Tally:
    counts = {outcome: 0 for outcome in Outcome}
    failures: list[tuple[str, str]] = []
    updated = 0
    for agent in sorted(agents, key=lambda a: (agent_rank(a.agent_id), a.agent_id)):
        if not everyone and agent_rank(agent.agent_id) > state_up_to:
            continue
        updated += 1
        outcome, why = agent.outcome(new)
        counts[outcome] += 1
        if outcome is Outcome.FAILED:
            failures.append((agent.name, why))
    return _Tally(
        Counts(
            total=len(agents),
            updated=updated,
            applied=counts[Outcome.APPLIED],
            failed=counts[Outcome.FAILED],
            pending=counts[Outcome.PENDING],
        ),
        tuple(failures),
    )


def _counted(state: RolloutState, agents: Sequence[AgentObservation]) -> RolloutState:
    """`state` with the counts and failures the agents show now."""
    if state.phase is Phase.ROLLED_BACK:
        tally = _tally(-1, False, agents, state.config_hash)
        return replace(state, counts=replace(tally.counts, total=len(agents)))
    everyone = state.phase is Phase.COMPLETE
    tally = _tally(state.cohort_up_to, everyone, agents, state.config_hash)
    return replace(state, counts=tally.counts, failures=tally.failures[:MAX_LISTED])


def _start(
    spec: RolloutSpec,
    new_hash: str,
    stable_hash: str | None,
    agents: Sequence[AgentObservation],
    now: datetime,
) -> Decision:
    ranks = [agent_rank(a.agent_id) for a in agents]
    cohort = cohort_threshold(ranks, spec.steps[0].of(len(ranks)), -1)
    state = RolloutState(
        config_hash=new_hash,
        previous_hash=stable_hash,
        phase=Phase.PROGRESSING,
        step=0,
        steps=len(spec.steps),
        cohort_up_to=cohort,
        started_at=now,
        step_started_at=now,
        reason="StepStarted",
        message=f"step 1/{len(spec.steps)}: {spec.steps[0]} of the agents",
    )
    state = _counted(state, agents)
    event = RolloutEvent(
        EventKind.STARTED,
        f"config {new_hash[:12]}: step 1/{state.steps} ({spec.steps[0]}), "
        f"{state.counts.updated} of {state.counts.total} agents",
    )
    return Decision(state, (event,))


def _complete_at_once(new_hash: str, stable_hash: str | None, now: datetime) -> RolloutState:
    return RolloutState(
        config_hash=new_hash,
        previous_hash=stable_hash,
        phase=Phase.COMPLETE,
        step=0,
        steps=1,
        cohort_up_to=MAX_RANK,
        started_at=now,
        step_started_at=now,
        finished_at=now,
        reason="Complete",
        message="every selected agent is offered this config",
    )


def _gate_passed(spec: RolloutSpec, state: RolloutState, agents: Sequence[AgentObservation],
                 now: datetime) -> tuple[bool, datetime | None]:  # fmt: skip
    """Whether the current step may end, and the healthySince to keep."""
    if spec.pause_seconds is not None:
        return (now - state.step_started_at).total_seconds() >= spec.pause_seconds, None
    # Failed agents do not hold the gate: the failure limit judges them (tolerated, or
    # accepted by a resume), else a rollout resumed over a failure could never go on.
    settled = all(
        agent.outcome(state.config_hash)[0] is not Outcome.PENDING
        for agent in agents
        if agent.online and agent_rank(agent.agent_id) <= state.cohort_up_to
    )
    if not settled:
        return False, None
    since = state.healthy_since or now
    return (now - since).total_seconds() >= spec.healthy_seconds, since


def _on_failures(spec: RolloutSpec, state: RolloutState, now: datetime) -> Decision:
    new = state.counts.failed - state.accepted_failures
    names = ", ".join(f"{name} ({why})" for name, why in state.failures[:3])
    detail = f"{new} new failures (max {spec.max_failures}) at step {state.step + 1}: {names}"
    if spec.on_failure is OnFailure.ROLLBACK:
        rolled = replace(
            state, phase=Phase.ROLLED_BACK, finished_at=now, reason="RolledBack",
            message=f"rolled back to {state.previous_hash or 'no config'}: {detail}",
        )  # fmt: skip
        return Decision(rolled, (RolloutEvent(EventKind.ROLLED_BACK, rolled.message),))
    paused = replace(state, phase=Phase.PAUSED, reason=TOO_MANY_FAILURES, message=detail,
                     healthy_since=None)  # fmt: skip
    return Decision(paused, (RolloutEvent(EventKind.PAUSED, detail),))


def _advance(spec: RolloutSpec, state: RolloutState, agents: Sequence[AgentObservation],
             now: datetime) -> Decision:  # fmt: skip
    passed, since = _gate_passed(spec, state, agents, now)
    if not passed:
        return Decision(replace(state, healthy_since=since))
    if state.step + 1 >= len(spec.steps):
        done = replace(state, phase=Phase.COMPLETE, cohort_up_to=MAX_RANK, finished_at=now,
                       healthy_since=None, reason="Complete",
                       message=f"all {len(agents)} agents are offered this config")  # fmt: skip
        done = _counted(done, agents)
        return Decision(done, (RolloutEvent(EventKind.COMPLETE, done.message),))
    step = state.step + 1
    ranks = [agent_rank(a.agent_id) for a in agents]
    cohort = cohort_threshold(ranks, spec.steps[step].of(len(ranks)), state.cohort_up_to)
    moved = replace(
        state, step=step, steps=len(spec.steps), cohort_up_to=cohort, step_started_at=now,
        healthy_since=None, reason="StepStarted",
        message=f"step {step + 1}/{len(spec.steps)}: {spec.steps[step]} of the agents",
    )  # fmt: skip
    moved = _counted(moved, agents)
    text = (
        f"step {step + 1}/{moved.steps} ({spec.steps[step]}): "
        f"{moved.counts.updated} of {len(agents)} agents"
    )
    return Decision(moved, (RolloutEvent(EventKind.STEP, text),))


def decide(
    spec: RolloutSpec,
    state: RolloutState | None,
    *,
    new_hash: str,
    stable_hash: str | None,
    agents: Sequence[AgentObservation],
    resume: str | None,
    now: datetime,
) -> Decision:
    """The next state of the rollout of `new_hash` (at most one step further), and its Events.

    `state`: what is persisted; `stable_hash`: the last config that was fully rolled out;
    `agents`: every agent the config is selected for; `resume`: the resume annotation's value.
    """
    if spec.strategy is Strategy.ALL_AT_ONCE or stable_hash == new_hash:
        if state is not None and state.config_hash == new_hash and state.phase is Phase.COMPLETE:
            return Decision(_counted(state, agents))
        return Decision(_counted(_complete_at_once(new_hash, stable_hash, now), agents))
    if state is None or state.config_hash != new_hash:
        return _start(spec, new_hash, stable_hash, agents, now)
    state = _counted(state, agents)
    if state.done:
        return Decision(state)
    events: list[RolloutEvent] = []
    if state.phase is Phase.PAUSED:
        resumed = _resume(spec, state, resume, now)
        if resumed is None:
            return Decision(state)
        state, event = resumed
        events.append(event)
    elif spec.paused:
        paused = replace(state, phase=Phase.PAUSED, reason=PAUSED_BY_SPEC, healthy_since=None,
                         message="spec.rollout.paused is true")  # fmt: skip
        return Decision(paused, (RolloutEvent(EventKind.PAUSED, paused.message),))
    limit = spec.max_failures.limit(state.counts.updated)
    if state.counts.failed - state.accepted_failures > limit:
        decision = _on_failures(spec, state, now)
        if decision.state is not None and decision.state.phase is Phase.ROLLED_BACK:
            decision = Decision(_counted(decision.state, agents), decision.events)
    else:
        decision = _advance(spec, state, agents, now)
    return Decision(decision.state, (*events, *decision.events))


def _resume(
    spec: RolloutSpec, state: RolloutState, resume: str | None, now: datetime
) -> tuple[RolloutState, RolloutEvent] | None:
    """A paused rollout continues: by spec, or (paused on failures) by a new resume value."""
    if state.reason == PAUSED_BY_SPEC:
        if spec.paused:
            return None
        why = "spec.rollout.paused is false"
    elif resume and resume != state.resumed:
        why = f"resume requested ({resume}); {state.counts.failed} failures accepted"
    else:
        return None
    if spec.paused:
        return None
    resumed = replace(
        state, phase=Phase.PROGRESSING, reason="Resumed", message=why, step_started_at=now,
        healthy_since=None, accepted_failures=state.counts.failed,
        resumed=resume if resume else state.resumed,
    )  # fmt: skip
    return resumed, RolloutEvent(EventKind.RESUMED, f"step {state.step + 1}/{state.steps}: {why}")


# -- self-rollback ---------------------------------------------------------------------------


def detect_self_rollback(
    before: Mapping[str, Any] | None, after: Mapping[str, Any] | None, offered_hash: str
) -> str | None:
    """The agent's error message when its reports show it rolled itself back, else None.

    The Collector's Supervisor reports APPLIED(A) -> APPLYING(B) -> FAILED(B) -> APPLIED(A)
    when B does not work: the last report alone looks like a healthy agent running A, and a
    server would offer B again (opamp-spec issue 397). Seen here as FAILED for the offered
    hash followed by APPLIED for another one. `before`/`after`: consecutive
    RemoteConfigStatus reports as `reports.remote_config_status_to_dict` makes them.
    """
    if not before or not after:
        return None
    if before.get("lastRemoteConfigHash") != offered_hash or before.get("status") != "FAILED":
        return None
    if after.get("status") != "APPLIED" or after.get("lastRemoteConfigHash") in (
        None,
        "",
        offered_hash,
    ):
        return None
    return str(before.get("errorMessage") or "the agent reported FAILED")
