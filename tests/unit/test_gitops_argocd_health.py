"""The Argo CD health checks in docs/gitops.md, run in Lua 5.1 (as Argo CD's gopher-lua).

The objects are built with the same pure functions the operator writes statuses with.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from opamp_operator.fleet import rollout as planner
from opamp_operator.fleet.model import AgentPhase, AgentSnapshot
from opamp_operator.fleet.remoteconfig import ConfigState
from opamp_operator.kube.gitops import resolver, rollouts
from opamp_operator.kube.shapes.configstatus import (
    AgentView,
    config_status,
    remote_config_conditions,
)

lua51 = pytest.importorskip("lupa.lua51")

DOC = Path(__file__).resolve().parents[2] / "docs" / "gitops.md"
NOW = datetime(2026, 3, 1, tzinfo=UTC)


def health_checks() -> dict[str, str]:
    """kind -> Lua, from the argocd-cm block of docs/gitops.md."""
    for block in re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.DOTALL):
        for document in yaml.safe_load_all(block):
            if isinstance(document, dict) and document["metadata"]["name"] == "argocd-cm":
                prefix = "resource.customizations.health.opamp.dev_"
                return {k.removeprefix(prefix): v for k, v in document["data"].items()}
    raise AssertionError("docs/gitops.md has no argocd-cm block")


def health(kind: str, obj: dict[str, Any]) -> tuple[str, str]:
    runtime = lua51.LuaRuntime(unpack_returned_tuples=True)
    runtime.globals().obj = runtime.table_from(obj, recursive=True)
    result = runtime.execute(health_checks()[kind])
    return str(result["status"]), str(result["message"] or "")


def agent(state: ConfigState | None, *, generation: int = 2, observed: int = 2,
          problem: str | None = None, message: str = "m") -> dict[str, Any]:  # fmt: skip
    snapshot = AgentSnapshot(
        agent_id="0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
        phase=AgentPhase.ONLINE, phase_reason="connected", phase_since=NOW,
        first_seen_at=NOW, last_seen_at=NOW, last_connected_at=NOW,
        last_disconnected_at=None, disconnect_reason=None, session=None,
        remote_config_state=state or ConfigState.NONE, remote_config_message=message,
    )  # fmt: skip
    conditions = [{"type": "Ready", "status": "True", "reason": "online", "message": "ok"}]
    conditions += remote_config_conditions(snapshot, problem, None, generation=observed, now=NOW)
    return {
        "metadata": {"name": "agent-x", "generation": generation},
        "status": {"phase": "Online", "observedGeneration": observed, "conditions": conditions},
    }


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (None, "Healthy"),
        (ConfigState.APPLIED, "Healthy"),
        (ConfigState.PENDING, "Progressing"),
        (ConfigState.APPLYING, "Progressing"),
        (ConfigState.FAILED, "Degraded"),
        (ConfigState.UNSUPPORTED, "Degraded"),
    ],
)
def test_agent_health(state: ConfigState | None, expected: str) -> None:
    status, message = health("OpAMPAgent", agent(state, message="agent says so"))
    assert status == expected
    if state not in (None, ConfigState.NONE):
        assert message == "agent says so"


def test_agent_health_waits_for_the_latest_generation_and_shows_conflicts() -> None:
    assert health("OpAMPAgent", agent(ConfigState.APPLIED, generation=3, observed=2))[0] == (
        "Progressing"
    )
    assert health("OpAMPAgent", {"metadata": {"generation": 1}})[0] == "Progressing"
    status, message = health("OpAMPAgent", agent(None, problem="OpAMPAgentConfigs a, b match"))
    assert (status, message) == ("Degraded", "OpAMPAgentConfigs a, b match")


def view(name: str, reason: str, phase: str = "Online") -> AgentView:
    state = {"Applied": "True", "Pending": "Unknown"}.get(reason, "False")
    return AgentView(name, {
        "phase": phase, "desiredConfig": {"hash": "h"},
        "conditions": [{"type": "RemoteConfigApplied", "status": state, "reason": reason,
                        "message": reason}],
    })  # fmt: skip


def fleet_config(selected: list[AgentView], *, generation: int = 1, observed: int = 1,
                 error: str | None = None) -> dict[str, Any]:  # fmt: skip
    status = config_status(
        config_hash="h", error=error, matched=selected, selected=selected, conflicted=[],
        previous=None, generation=observed, now=NOW,
    )  # fmt: skip
    return {"metadata": {"name": "c", "generation": generation}, "status": status}


@pytest.mark.parametrize(
    ("agents", "expected"),
    [
        ([], "Healthy"),
        (["Applied", "Applied"], "Healthy"),
        (["Applied", "Pending"], "Progressing"),
        (["Applied", "Failed"], "Degraded"),
        (["Pending", "NotSupported"], "Degraded"),
    ],
)
def test_fleet_config_health(agents: list[str], expected: str) -> None:
    views = [view(f"agent-{n}", reason) for n, reason in enumerate(agents)]
    assert health("OpAMPAgentConfig", fleet_config(views))[0] == expected


def test_fleet_config_health_offline_pending_agents_and_generations() -> None:
    views = [view("agent-1", "Applied"), view("agent-2", "Pending", phase="Offline")]
    status, message = health("OpAMPAgentConfig", fleet_config(views))
    assert status == "Healthy" and "1/2 selected agents applied" in message
    stale = fleet_config([view("agent-1", "Applied")], generation=2, observed=1)
    assert health("OpAMPAgentConfig", stale)[0] == "Progressing"
    assert health("OpAMPAgentConfig", {"metadata": {"generation": 1}})[0] == "Progressing"
    invalid = fleet_config([], error="selector: bad")
    assert health("OpAMPAgentConfig", invalid) == ("Degraded", "selector: bad")


# -- progressive rollout (issue 18) ----------------------------------------------------------

ROLLOUT_IDS = [f"0190a1b2-c3d4-7e5f-8a9b-{n:012x}" for n in range(4)]


def rolling_config(rollout: dict[str, Any], failing: int = 0, resume: str | None = None,
                   rounds: int = 1) -> dict[str, Any]:  # fmt: skip
    """An OpAMPAgentConfig as the operator writes it during a rollout, from the planner."""
    spec = {"selector": {}, "remoteConfig": {"a.yaml": {"body": "x: 1\n"}}, "rollout": rollout}
    parsed = resolver.fleet_config("c", spec)
    new = parsed.desired.hash_hex
    ranked = sorted(ROLLOUT_IDS, key=lambda i: (planner.agent_rank(i), i))
    state = None
    for _ in range(rounds):
        up_to = -1 if state is None else state.cohort_up_to
        observed = [
            planner.AgentObservation(
                i, f"agent-{i}", new if planner.agent_rank(i) <= up_to else "old",
                "Failed" if ranked.index(i) < failing else "Applied",
            )
            for i in ROLLOUT_IDS
        ]  # fmt: skip
        state = planner.decide(
            parsed.rollout, state, new_hash=new, stable_hash="old", agents=observed,
            resume=resume, now=NOW,
        ).state  # fmt: skip
    assert state is not None
    kept = rollouts.ConfigRollout(state, None, None, "uid", "1", None)
    status = config_status(
        config_hash=new, error=None, matched=[], selected=[], conflicted=[], previous=None,
        generation=1, now=NOW,
    )  # fmt: skip
    conditions = rollouts.rollout_conditions(parsed, kept, None, generation=1, now=NOW)
    if conditions is not None:
        status["conditions"] = conditions
    status["rollout"] = planner.state_to_status(state)
    return {"metadata": {"name": "c", "generation": 1}, "status": status}


@pytest.mark.parametrize(
    ("rollout", "failing", "rounds", "expected", "words"),
    [
        ({"strategy": "Progressive"}, 0, 1, "Progressing", "step 1/4"),
        ({"strategy": "Progressive", "paused": True}, 0, 2, "Suspended", "paused at step 1/4"),
        ({"strategy": "Progressive"}, 1, 3, "Degraded", "new failures"),
        ({"strategy": "Progressive", "onFailure": "Rollback"}, 1, 3, "Degraded", "rolled back"),
        ({"strategy": "Progressive", "steps": [4]}, 0, 3, "Healthy", ""),
        ({}, 0, 1, "Healthy", ""),
    ],
)
def test_fleet_config_health_during_a_rollout(
    rollout: dict[str, Any], failing: int, rounds: int, expected: str, words: str
) -> None:
    status, message = health("OpAMPAgentConfig", rolling_config(rollout, failing, rounds=rounds))
    assert status == expected
    assert words in message


def test_agent_that_rolled_itself_back_is_degraded() -> None:
    status, message = health("OpAMPAgent", agent(ConfigState.ROLLED_BACK, message="went back"))
    assert (status, message) == ("Degraded", "went back")
