"""The rollout planner (fleet/rollout.py): spec, canary order, assignment, step decision."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from opamp_operator.fleet.rollout import (
    ALL,
    MAX_RANK,
    PAUSED_BY_SPEC,
    TOO_MANY_FAILURES,
    AgentObservation,
    Amount,
    Decision,
    EventKind,
    OnFailure,
    Outcome,
    Phase,
    RolloutSpec,
    RolloutSpecError,
    RolloutState,
    Strategy,
    Version,
    agent_rank,
    assignment,
    decide,
    detect_self_rollback,
    parse_rollout,
    state_from_status,
    state_to_status,
)

NEW = "b" * 64
OLD = "a" * 64
T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
IDS = [f"0190a1b2-c3d4-7e5f-8a9b-{n:012x}" for n in range(20)]


def progressive(**extra: Any) -> RolloutSpec:
    return parse_rollout({"strategy": "Progressive", "steps": [1, "25%", "100%"], **extra})


def agents(reason: str | None = None, desired: str | None = NEW, **fields: Any) -> list[Any]:
    return [AgentObservation(i, f"agent-{i}", desired, reason, **fields) for i in IDS]


def by_rank() -> list[str]:
    return sorted(IDS, key=lambda i: (agent_rank(i), i))


def offered(spec: RolloutSpec, state: RolloutState | None) -> set[str]:
    return {
        i
        for i in IDS
        if assignment(spec, state, new_hash=NEW, stable_hash=OLD, agent_id=i) is Version.NEW
    }


def run(
    spec: RolloutSpec,
    state: RolloutState | None,
    observed: Sequence[AgentObservation],
    now: datetime,
    resume: str | None = None,
) -> Decision:
    return decide(
        spec, state, new_hash=NEW, stable_hash=OLD, agents=observed, resume=resume, now=now
    )


def applied_for(
    state: RolloutState, failing: frozenset[str] = frozenset()
) -> list[AgentObservation]:
    """The agents as their CRs show them: the offered ones applied (or failed) the new hash."""
    result = []
    for i in IDS:
        mine = agent_rank(i) <= state.cohort_up_to
        reason = ("Failed" if i in failing else "Applied") if mine else "Applied"
        result.append(AgentObservation(i, f"agent-{i}", NEW if mine else OLD, reason, "config bad"))
    return result


# -- spec ------------------------------------------------------------------------------------


def test_no_rollout_is_all_at_once() -> None:
    assert parse_rollout(None) == RolloutSpec()
    assert parse_rollout({}).strategy is Strategy.ALL_AT_ONCE


def test_progressive_spec_parses_counts_percentages_and_gates() -> None:
    spec = parse_rollout(
        {
            "strategy": "Progressive",
            "steps": [1, "10%", "50 %"],
            "pauseSeconds": 30,
            "maxFailures": "20%",
            "onFailure": "Rollback",
            "paused": True,
        }
    )
    assert spec.steps == (Amount(1, False), Amount(10, True), Amount(50, True), ALL)
    assert spec.pause_seconds == 30.0
    assert spec.max_failures == Amount(20, True)
    assert spec.on_failure is OnFailure.ROLLBACK
    assert spec.paused is True
    assert parse_rollout({"strategy": "Progressive"}).steps[0] == Amount(1, False)


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ({"strategy": "Canary"}, "strategy must be one of AllAtOnce | Progressive"),
        ({"steps": []}, "non-empty list"),
        ({"steps": [0]}, "steps[0] must be at least 1"),
        ({"steps": ["150%"]}, "more than 100%"),
        ({"steps": ["ten%"]}, "not a percentage"),
        ({"steps": [True]}, "count or a percentage"),
        ({"pauseSeconds": 5, "healthyForSeconds": 5}, "exclude each other"),
        ({"pauseSeconds": -1}, "pauseSeconds must be"),
        ({"maxFailures": "x"}, "maxFailures must be"),
        ({"onFailure": "Ignore"}, "onFailure must be one of Pause | Rollback"),
        ({"paused": "yes"}, "paused must be true or false"),
        ({"steps": list(range(1, 30))}, "at most 20 steps"),
        ("Progressive", "must be an object"),
    ],
)
def test_bad_specs_say_what_is_wrong(raw: Any, words: str) -> None:
    with pytest.raises(RolloutSpecError, match=re.escape(words)):
        parse_rollout(raw)


def test_amounts() -> None:
    assert Amount(10, True).of(5) == 1  # steps round up
    assert Amount(10, True).limit(5) == 0  # failure limits round down
    assert Amount(3, False).of(2) == 2
    assert str(Amount(25, True)) == "25%"


# -- canary order and assignment ---------------------------------------------------------------


def test_rank_is_stable_and_documented() -> None:
    # The first 8 bytes of sha256(agent id), big-endian: a re-run picks the same canaries.
    assert agent_rank("x") == int.from_bytes(
        bytes.fromhex("2d711642b726b044"), "big"
    )  # sha256("x") = 2d711642b726b044...


def test_first_step_offers_the_new_config_to_the_lowest_ranked_agents_only() -> None:
    spec = progressive()
    state = run(spec, None, agents(desired=OLD, reason="Applied"), T0).state
    assert state is not None and state.phase is Phase.PROGRESSING
    assert offered(spec, state) == {by_rank()[0]}
    assert state.counts.updated == 1 and state.counts.total == 20


def test_before_the_decider_started_nobody_runs_ahead() -> None:
    spec = progressive()
    assert offered(spec, None) == set()
    stale = run(spec, None, agents(), T0).state
    assert stale is not None
    other = RolloutState(**{**_fields(stale), "config_hash": "c" * 64})
    assert offered(spec, other) == set()


def _fields(state: RolloutState) -> dict[str, Any]:
    return {name: getattr(state, name) for name in state.__slots__}


def test_all_at_once_and_an_unchanged_hash_offer_it_to_everyone() -> None:
    assert offered(RolloutSpec(), None) == set(IDS)
    spec = progressive()
    assert all(
        assignment(spec, None, new_hash=NEW, stable_hash=NEW, agent_id=i) is Version.NEW
        for i in IDS
    )
    decision = decide(
        spec, None, new_hash=NEW, stable_hash=NEW, agents=agents(), resume=None, now=T0
    )
    assert decision.state is not None and decision.state.phase is Phase.COMPLETE


def test_a_joiner_gets_what_its_rank_dictates() -> None:
    spec = progressive()
    state = run(spec, None, agents(desired=OLD, reason="Applied")[:10], T0).state
    assert state is not None
    joiners = IDS[10:]
    for joiner in joiners:
        version = assignment(spec, state, new_hash=NEW, stable_hash=OLD, agent_id=joiner)
        expected = Version.NEW if agent_rank(joiner) <= state.cohort_up_to else Version.PREVIOUS
        assert version is expected


# -- steps ---------------------------------------------------------------------------------------


def test_steps_advance_one_at_a_time_when_the_cohort_applied() -> None:
    spec = progressive()
    state = run(spec, None, agents(desired=OLD, reason="Applied"), T0).state
    assert state is not None
    # The canary has not applied yet: the healthy gate holds.
    pending = [
        AgentObservation(i, f"agent-{i}", NEW, "Applying") if i == by_rank()[0] else a
        for i, a in zip(IDS, agents(desired=OLD, reason="Applied"), strict=True)
    ]
    held = run(spec, state, pending, T0 + timedelta(seconds=5))
    assert held.state is not None and held.state.step == 0 and not held.events
    second = run(spec, state, applied_for(state), T0 + timedelta(seconds=6))
    assert second.state is not None and second.state.step == 1
    assert [e.kind for e in second.events] == [EventKind.STEP]
    assert offered(spec, second.state) == set(by_rank()[:5])  # 25 % of 20
    third = run(spec, second.state, applied_for(second.state), T0 + timedelta(seconds=7))
    assert third.state is not None and third.state.step == 2
    assert offered(spec, third.state) == set(IDS)
    done = run(spec, third.state, applied_for(third.state), T0 + timedelta(seconds=8))
    assert done.state is not None and done.state.phase is Phase.COMPLETE
    assert done.state.finished_at == T0 + timedelta(seconds=8)
    assert [e.kind for e in done.events] == [EventKind.COMPLETE]


def test_healthy_gate_waits_n_seconds_and_offline_agents_do_not_hold_it() -> None:
    spec = progressive(healthyForSeconds=10)
    state = run(spec, None, agents(desired=OLD, reason="Applied"), T0).state
    assert state is not None
    seen = applied_for(state)
    first = run(spec, state, seen, T0 + timedelta(seconds=1)).state
    assert first is not None and first.step == 0 and first.healthy_since is not None
    still = run(spec, first, seen, T0 + timedelta(seconds=10)).state
    assert still is not None and still.step == 0
    moved = run(spec, still, seen, T0 + timedelta(seconds=11)).state
    assert moved is not None and moved.step == 1


def test_pause_seconds_gate_is_time_only() -> None:
    spec = progressive(pauseSeconds=30)
    state = run(spec, None, agents(desired=OLD, reason="Applied"), T0).state
    assert state is not None
    early = run(spec, state, agents(desired=OLD, reason="Applied"), T0 + timedelta(seconds=29))
    assert early.state is not None and early.state.step == 0
    late = run(spec, state, agents(desired=OLD, reason="Applied"), T0 + timedelta(seconds=30))
    assert late.state is not None and late.state.step == 1


# -- failures ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"applied_reason": "Failed", "applied_message": "bad"}, "Failed: bad"),
        ({"applied_reason": "RolledBack", "applied_message": "bad"}, "RolledBack: bad"),
        ({"applied_reason": "Applied", "healthy": False}, "unhealthy after applying"),
        (
            {"applied_reason": "Applied", "phase": "Offline", "phase_reason": "heartbeat_timeout"},
            "Offline (heartbeat_timeout) after applying",
        ),
    ],
)
def test_what_counts_as_a_failure(fields: dict[str, Any], why: str) -> None:
    agent = AgentObservation("id", "agent-id", NEW, **fields)
    assert agent.outcome(NEW) == (Outcome.FAILED, why)


def test_what_does_not_count_as_a_failure() -> None:
    restart = AgentObservation(
        "id", "a", NEW, "Applied", phase="Offline", phase_reason="operator_restart"
    )
    assert restart.outcome(NEW)[0] is Outcome.APPLIED  # a reconnect storm is no failure
    assert AgentObservation("id", "a", OLD, "Failed").outcome(NEW)[0] is Outcome.PENDING


def test_a_failing_canary_pauses_the_first_step() -> None:
    spec = progressive()
    state = run(spec, None, agents(desired=OLD, reason="Applied"), T0).state
    assert state is not None
    canary = by_rank()[0]
    paused = run(spec, state, applied_for(state, frozenset({canary})), T0 + timedelta(seconds=1))
    assert paused.state is not None and paused.state.phase is Phase.PAUSED
    assert paused.state.reason == TOO_MANY_FAILURES and paused.state.step == 0
    assert [e.kind for e in paused.events] == [EventKind.PAUSED]
    assert paused.events[0].warning
    assert paused.state.failures == ((f"agent-{canary}", "Failed: config bad"),)
    assert offered(spec, paused.state) == {canary}  # only the canary affected
    # It stays paused, whatever the agents do, until resumed.
    later = run(spec, paused.state, applied_for(state), T0 + timedelta(seconds=60))
    assert later.state is not None and later.state.phase is Phase.PAUSED and not later.events


def test_max_failures_tolerates_that_many() -> None:
    spec = progressive(maxFailures=1)
    state = run(spec, None, agents(desired=OLD, reason="Applied"), T0).state
    assert state is not None
    moved = run(
        spec, state, applied_for(state, frozenset({by_rank()[0]})), T0 + timedelta(seconds=1)
    )
    assert moved.state is not None and moved.state.phase is Phase.PROGRESSING


def test_resume_by_annotation_accepts_the_failures_and_goes_on() -> None:
    spec = progressive()
    state = run(spec, None, agents(desired=OLD, reason="Applied"), T0).state
    assert state is not None
    failing = frozenset({by_rank()[0]})
    paused = run(spec, state, applied_for(state, failing), T0).state
    assert paused is not None
    same = run(spec, paused, applied_for(state, failing), T0, resume=None).state
    assert same is not None and same.phase is Phase.PAUSED
    resumed = run(spec, paused, applied_for(state, failing), T0, resume="r1")
    assert resumed.state is not None and resumed.state.resumed == "r1"
    assert resumed.state.accepted_failures == 1
    assert resumed.events[0].kind is EventKind.RESUMED
    assert resumed.state.phase is Phase.PROGRESSING
    # The accepted failure does not hold the gate: the next step goes ahead.
    assert resumed.state.step == 1
    assert offered(spec, resumed.state) == set(by_rank()[:5])
    # The same value again is no new resume; a new failure pauses again.
    more = failing | {by_rank()[1]}
    again = run(spec, resumed.state, applied_for(resumed.state, more), T0, resume="r1")
    assert again.state is not None and again.state.phase is Phase.PAUSED
    assert again.state.step == 1


def test_spec_paused_pauses_and_unpausing_resumes() -> None:
    spec = progressive(paused=True)
    state = run(progressive(), None, agents(desired=OLD, reason="Applied"), T0).state
    assert state is not None
    paused = run(spec, state, applied_for(state), T0)
    assert paused.state is not None and paused.state.reason == PAUSED_BY_SPEC
    assert paused.state.phase is Phase.PAUSED and paused.state.step == 0
    resumed = run(progressive(), paused.state, applied_for(state), T0)
    assert resumed.state is not None
    assert [e.kind for e in resumed.events] == [EventKind.RESUMED, EventKind.STEP]


def test_rollback_offers_the_previous_config_to_everyone() -> None:
    spec = progressive(onFailure="Rollback")
    state = run(spec, None, agents(desired=OLD, reason="Applied"), T0).state
    assert state is not None
    rolled = run(
        spec, state, applied_for(state, frozenset({by_rank()[0]})), T0 + timedelta(seconds=2)
    )
    assert rolled.state is not None and rolled.state.phase is Phase.ROLLED_BACK
    assert [e.kind for e in rolled.events] == [EventKind.ROLLED_BACK]
    assert rolled.state.finished_at == T0 + timedelta(seconds=2)
    assert offered(spec, rolled.state) == set()
    assert rolled.state.counts.updated == 0
    final = run(spec, rolled.state, applied_for(state), T0 + timedelta(seconds=60))
    assert final.state is not None and final.state.phase is Phase.ROLLED_BACK


def test_a_new_hash_during_a_rollout_starts_over_from_the_stable_config() -> None:
    spec = progressive()
    state = run(spec, None, agents(desired=OLD, reason="Applied"), T0).state
    assert state is not None
    other = decide(
        spec, state, new_hash="c" * 64, stable_hash=OLD, agents=agents(), resume=None, now=T0
    )
    assert other.state is not None and other.state.config_hash == "c" * 64
    assert other.state.step == 0 and other.state.previous_hash == OLD
    assert [e.kind for e in other.events] == [EventKind.STARTED]


def test_no_agents_completes() -> None:
    spec = progressive()
    state = run(spec, None, [], T0).state
    for second in range(1, 5):
        assert state is not None
        state = run(spec, state, [], T0 + timedelta(seconds=second)).state
    assert state is not None and state.phase is Phase.COMPLETE


# -- persistence --------------------------------------------------------------------------------


def test_state_round_trips_through_the_status() -> None:
    spec = progressive()
    state = run(spec, None, agents(desired=OLD, reason="Applied"), T0).state
    assert state is not None
    paused = run(spec, state, applied_for(state, frozenset({by_rank()[0]})), T0).state
    assert paused is not None
    status = state_to_status(paused)
    assert status["step"] == 1 and status["phase"] == "Paused"
    assert state_from_status(status) == paused
    assert state_from_status(None) is None
    assert state_from_status({"configHash": NEW, "phase": "Bogus"}) is None


def test_max_rank_is_everyone() -> None:
    assert all(agent_rank(i) <= MAX_RANK for i in IDS)


# -- self-rollback ------------------------------------------------------------------------------


def test_self_rollback_is_failed_then_applied_for_another_hash() -> None:
    failed = {"lastRemoteConfigHash": NEW, "status": "FAILED", "errorMessage": "port in use"}
    back = {"lastRemoteConfigHash": OLD, "status": "APPLIED"}
    assert detect_self_rollback(failed, back, NEW) == "port in use"
    # Not a rollback: applying then applied, or failed then still failed, or another offer.
    assert (
        detect_self_rollback({"lastRemoteConfigHash": NEW, "status": "APPLYING"}, back, NEW) is None
    )
    assert detect_self_rollback(failed, failed, NEW) is None
    assert detect_self_rollback(failed, back, OLD) is None
    assert detect_self_rollback(None, back, NEW) is None
    assert (
        detect_self_rollback(failed, {"lastRemoteConfigHash": NEW, "status": "APPLIED"}, NEW)
        is None
    )
