"""kube/gitops/rollouts.py: reading the rollout state, versions offered, patches, conditions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from opamp_operator.fleet.remoteconfig import ROLLED_BACK_PREFIX
from opamp_operator.fleet.rollout import (
    MAX_RANK,
    Decision,
    Outcome,
    Phase,
    RolloutState,
    agent_rank,
)
from opamp_operator.kube.gitops.resolver import fleet_config
from opamp_operator.kube.gitops.rollouts import (
    ConfigRollout,
    decision_patch,
    observe,
    offered_config,
    read_rollout,
    rolled_back_error,
    rollout_conditions,
)

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)
OLD_FILES = {"c.yaml": {"body": "old: 1\n"}}
NEW_FILES = {"c.yaml": {"body": "new: 1\n"}}
IDS = [f"0190a1b2-c3d4-7e5f-8a9b-{n:012x}" for n in range(6)]


def config(rollout: dict[str, Any] | None = None, files: dict[str, Any] = NEW_FILES) -> Any:
    spec: dict[str, Any] = {"selector": {}, "remoteConfig": files}
    if rollout is not None:
        spec["rollout"] = rollout
    return fleet_config("fleet", spec)


def stored(status: dict[str, Any], files: dict[str, Any] = NEW_FILES) -> ConfigRollout:
    obj = {
        "metadata": {"name": "fleet", "uid": "u1", "resourceVersion": "7",
                     "annotations": {"opamp.dev/resume-rollout": "r1"}},
        "spec": {"remoteConfig": files},
        "status": status,
    }  # fmt: skip
    return read_rollout("fleet", obj, None)


def stable_status() -> dict[str, Any]:
    return {"stableConfig": {"hash": config(files=OLD_FILES).desired.hash_hex,
                             "remoteConfig": OLD_FILES}}  # fmt: skip


def state(phase: Phase, cohort: int, new_hash: str, reason: str = "") -> RolloutState:
    return RolloutState(new_hash, None, phase, 0, 2, cohort, NOW, NOW, reason=reason)


def test_read_rollout_keeps_the_stable_config_checked_against_its_hash() -> None:
    rollout = stored(stable_status())
    assert rollout.stable is not None
    assert rollout.stable.hash_hex == config(files=OLD_FILES).desired.hash_hex
    assert rollout.stable.source == "OpAMPAgentConfig/fleet"
    assert (rollout.resume, rollout.uid, rollout.resource_version) == ("r1", "u1", "7")
    tampered = {"stableConfig": {"hash": "00" * 32, "remoteConfig": OLD_FILES}}
    assert stored(tampered).stable is None
    again = read_rollout("fleet", {"status": stable_status()}, rollout)
    assert again.stable is rollout.stable  # one copy of the files


def test_offered_versions_follow_the_persisted_threshold() -> None:
    new = config({"strategy": "Progressive", "steps": [1]})
    rollout = stored(stable_status())
    assert {offered_config(new, rollout, i) for i in IDS} == {rollout.stable}  # not started
    canary = min(IDS, key=agent_rank)
    moved = ConfigRollout(
        state(Phase.PROGRESSING, agent_rank(canary), new.desired.hash_hex),
        rollout.stable, None, "u1", "7", NEW_FILES,
    )  # fmt: skip
    offered = {i: offered_config(new, moved, i) for i in IDS}
    assert offered[canary] is new.desired
    assert all(offered[i] is rollout.stable for i in IDS if i != canary)
    assert offered_config(config(), moved, canary) is not None  # AllAtOnce: always new


def test_observe_reads_what_the_controller_keeps() -> None:
    status = {
        "phase": "Offline", "disconnectReason": "heartbeat_timeout", "healthy": True,
        "desiredConfig": {"hash": "h"},
        "conditions": [{"type": "RemoteConfigApplied", "reason": "Applied", "message": "ok"}],
    }  # fmt: skip
    seen = observe("agent-x", "x", status)
    assert seen.outcome("h")[0] is Outcome.FAILED  # lost after applying
    grace = observe("agent-x", "x", status, offline_counts=False)
    assert grace.outcome("h")[0] is Outcome.APPLIED  # reconnecting after a restart


def test_rolled_back_error_comes_from_the_cr() -> None:
    status = {
        "desiredConfig": {"hash": "ab" * 32},
        "conditions": [{"type": "RemoteConfigApplied", "reason": "RolledBack",
                        "message": ROLLED_BACK_PREFIX + "port in use"}],
    }  # fmt: skip
    assert rolled_back_error(status) == (bytes.fromhex("ab" * 32), "port in use")
    assert rolled_back_error({"conditions": []}) is None


def test_a_complete_rollout_records_the_new_stable_config() -> None:
    new = config({"strategy": "Progressive"})
    rollout = stored(stable_status())
    done = state(Phase.COMPLETE, MAX_RANK, new.desired.hash_hex)
    patch = decision_patch(new, rollout, Decision(done), status={}, generation=3)
    assert patch is not None
    assert patch["stableConfig"] == {
        "hash": new.desired.hash_hex,
        "generation": 3,
        "remoteConfig": NEW_FILES,
    }
    assert patch["rollout"]["phase"] == "Complete"
    rolling = state(Phase.PROGRESSING, 0, new.desired.hash_hex)
    patch = decision_patch(new, rollout, Decision(rolling), status={}, generation=3)
    assert patch is not None and "stableConfig" not in patch
    same = {"rollout": patch["rollout"]}
    assert decision_patch(new, rollout, Decision(rolling), status=same, generation=3) is None


def conditions(rollout: ConfigRollout | None, spec: dict[str, Any] | None) -> dict[str, Any]:
    found = rollout_conditions(config(spec), rollout, None, generation=1, now=NOW)
    return {} if found is None else {c["type"]: (c["status"], c["reason"]) for c in found}


def test_conditions_while_rolling() -> None:
    spec = {"strategy": "Progressive"}
    new = config(spec).desired.hash_hex
    base = stored(stable_status())

    def at(phase: Phase, reason: str = "") -> ConfigRollout:
        return ConfigRollout(state(phase, 0, new, reason), base.stable, None, "u", "1", None)

    assert conditions(None, None) == {}  # AllAtOnce: the usual conditions
    assert conditions(base, spec)["Reconciling"] == ("True", "RolloutPending")
    assert conditions(at(Phase.PROGRESSING), spec)["Reconciling"] == (
        "True", "RolloutProgressing",
    )  # fmt: skip
    paused = conditions(at(Phase.PAUSED, "TooManyFailures"), spec)
    assert paused["Stalled"] == ("True", "RolloutPaused")
    held = conditions(at(Phase.PAUSED, "PausedBySpec"), spec)
    assert held["Stalled"][0] == "False" and held["Reconciling"] == ("True", "RolloutPaused")
    assert conditions(at(Phase.ROLLED_BACK), spec)["Stalled"] == ("True", "RolledBack")
    assert conditions(at(Phase.COMPLETE), spec) == {}
