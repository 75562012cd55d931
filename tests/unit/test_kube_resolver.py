"""Label selectors, config parsing and the precedence of remote config sources (pure)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from opamp_operator.fleet.model import AgentPhase, AgentSnapshot
from opamp_operator.fleet.remoteconfig import ConfigFile, ConfigState, DesiredConfig
from opamp_operator.kube.gitops.resolver import (
    ConfigSpecError,
    FleetConfig,
    fleet_config,
    own_config,
    parse_files,
    resolve,
)
from opamp_operator.kube.gitops.selectors import SelectorError, parse_selector
from opamp_operator.kube.shapes.agentstatus import condition
from opamp_operator.kube.shapes.configstatus import (
    AgentView,
    config_status,
    desired_config_status,
    remote_config_conditions,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LABELS = {"opamp.dev/service-name": "checkout", "tier": "web", "zone": "a"}


def files(body: str = "x: 1\n") -> dict[str, Any]:
    return {"collector.yaml": {"body": body, "contentType": "text/yaml"}}


def config(
    name: str, selector: dict[str, Any], priority: int = 0, body: str | None = None
) -> FleetConfig:
    spec = {"selector": selector, "priority": priority, "remoteConfig": files(body or name)}
    return fleet_config(name, spec)


# -- selectors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "matches"),
    [
        ({}, True),
        ({"matchLabels": {"tier": "web"}}, True),
        ({"matchLabels": {"tier": "db"}}, False),
        ({"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}]}, True),
        ({"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]}, False),
        ({"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["x"]}]}, True),
        ({"matchExpressions": [{"key": "team", "operator": "Exists"}]}, False),
        ({"matchExpressions": [{"key": "team", "operator": "DoesNotExist"}]}, True),
        (
            {
                "matchLabels": {"tier": "web"},
                "matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}],
            },
            False,
        ),
    ],
)
def test_selector_matching(selector: dict[str, Any], matches: bool) -> None:
    assert parse_selector(selector).matches(LABELS) is matches


@pytest.mark.parametrize(
    "selector",
    [
        "tier=web",
        {"matchLabels": ["tier"]},
        {"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["x"]}]},
        {"matchExpressions": [{"key": "a", "operator": "In", "values": []}]},
        {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]},
        {"matchExpressions": [{"operator": "Exists"}]},
    ],
)
def test_invalid_selectors_are_refused(selector: Any) -> None:
    with pytest.raises(SelectorError):
        parse_selector(selector)


def test_specificity_counts_distinct_requirements() -> None:
    assert parse_selector({}).specificity == 0
    same = {"matchLabels": {"tier": "web"}, "matchExpressions": [
        {"key": "tier", "operator": "In", "values": ["web"]},
    ]}  # fmt: skip
    assert parse_selector(same).specificity == 1
    two = {"matchLabels": {"tier": "web", "zone": "a"}}
    assert parse_selector(two).specificity == 2


# -- parsing --------------------------------------------------------------------------------


def test_files_are_parsed_with_default_content_type() -> None:
    parsed = parse_files({"a": {"body": "x"}, "b": {"body": "y", "contentType": "text/yaml"}})
    assert parsed == {"a": ConfigFile(b"x", ""), "b": ConfigFile(b"y", "text/yaml")}
    assert own_config("agent-x", {}) is None
    assert own_config("agent-x", {"remoteConfig": {}}) is None
    own = own_config("agent-x", {"remoteConfig": files()})
    assert own is not None and own.source == "OpAMPAgent/agent-x"


@pytest.mark.parametrize(
    "spec",
    [
        {"selector": {}, "remoteConfig": {}},
        {"selector": {}, "remoteConfig": {"a": {"contentType": "x"}}},
        {"selector": {"matchLabels": "x"}, "remoteConfig": files()},
        {"selector": {}, "priority": "high", "remoteConfig": files()},
    ],
)
def test_unusable_fleet_configs_are_refused(spec: dict[str, Any]) -> None:
    with pytest.raises(ConfigSpecError):
        fleet_config("bad", spec)


# -- precedence -----------------------------------------------------------------------------


def test_own_spec_wins_over_every_fleet_config() -> None:
    own = own_config("agent-x", {"remoteConfig": files("mine")})
    configs = [config("all", {}, priority=100), config("web", {"matchLabels": {"tier": "web"}})]
    result = resolve(LABELS, own, configs)
    assert result.desired is own
    assert result.matched == ("all", "web")
    assert result.problem is None


def test_most_specific_matching_selector_wins() -> None:
    configs = [
        config("all", {}),
        config("web", {"matchLabels": {"tier": "web"}}),
        config("web-a", {"matchLabels": {"tier": "web", "zone": "a"}}),
        config("db-a", {"matchLabels": {"tier": "db", "zone": "a"}}),
    ]
    result = resolve(LABELS, None, configs)
    assert result.desired is configs[2].desired
    assert result.desired is not None and result.desired.source == "OpAMPAgentConfig/web-a"
    assert result.matched == ("all", "web", "web-a")


def test_priority_comes_before_specificity() -> None:
    configs = [
        config("web-a", {"matchLabels": {"tier": "web", "zone": "a"}}),
        config("everyone", {}, priority=10),
    ]
    assert resolve(LABELS, None, configs).desired is configs[1].desired


def test_ties_are_a_conflict_and_give_no_config() -> None:
    configs = [
        config("by-tier", {"matchLabels": {"tier": "web"}}),
        config("by-zone", {"matchLabels": {"zone": "a"}}),
        config("all", {}),
    ]
    result = resolve(LABELS, None, configs)
    assert result.desired is None
    assert result.conflict == ("by-tier", "by-zone")
    assert result.problem is not None and "by-tier, by-zone" in result.problem
    # A higher priority on one of them settles it.
    configs[1] = config("by-zone", {"matchLabels": {"zone": "a"}}, priority=1)
    assert resolve(LABELS, None, configs).desired is configs[1].desired


def test_no_match_and_a_broken_own_spec() -> None:
    assert resolve(LABELS, None, [config("db", {"matchLabels": {"tier": "db"}})]).desired is None
    broken = resolve(LABELS, None, [config("all", {})], own_error="file 'a' needs a string body")
    assert broken.desired is None
    assert broken.problem == "spec.remoteConfig: file 'a' needs a string body"


# -- status ---------------------------------------------------------------------------------


def snapshot(
    state: ConfigState, message: str = "", desired: DesiredConfig | None = None
) -> AgentSnapshot:
    return AgentSnapshot(
        agent_id="0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
        phase=AgentPhase.ONLINE, phase_reason="connected", phase_since=NOW,
        first_seen_at=NOW, last_seen_at=NOW, last_connected_at=NOW,
        last_disconnected_at=None, disconnect_reason=None, session=None,
        desired_config_hash=desired.hash_hex if desired else None,
        desired_config_source=desired.source if desired else None,
        remote_config_state=state, remote_config_message=message,
    )  # fmt: skip


def kinds(conditions: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in conditions}


@pytest.mark.parametrize(
    ("state", "applied", "reconciling", "stalled"),
    [
        (ConfigState.APPLIED, "True", "False", "False"),
        (ConfigState.APPLYING, "Unknown", "True", "False"),
        (ConfigState.PENDING, "Unknown", "True", "False"),
        (ConfigState.FAILED, "False", "False", "True"),
        (ConfigState.UNSUPPORTED, "False", "False", "True"),
    ],
)
def test_agent_conditions_follow_kstatus(
    state: ConfigState, applied: str, reconciling: str, stalled: str
) -> None:
    result = kinds(
        remote_config_conditions(snapshot(state, "why"), None, None, generation=3, now=NOW)
    )
    assert result["RemoteConfigApplied"] == (applied, state.value)
    assert result["Reconciling"][0] == reconciling
    assert result["Stalled"][0] == stalled


def test_no_config_only_kstatus_conditions_and_a_conflict_is_stalled() -> None:
    unmanaged = remote_config_conditions(
        snapshot(ConfigState.NONE), None, None, generation=1, now=NOW
    )
    assert kinds(unmanaged) == {
        "Reconciling": ("False", "NotReconciling"), "Stalled": ("False", "NotStalled"),
    }  # fmt: skip
    conflict = remote_config_conditions(
        snapshot(ConfigState.NONE), "OpAMPAgentConfigs a, b match", None, generation=1, now=NOW
    )
    assert kinds(conflict)["RemoteConfigApplied"] == ("False", "Conflict")
    assert kinds(conflict)["Stalled"] == ("True", "Conflict")
    assert (
        conflict[0]["message"] == "OpAMPAgentConfigs a, b match"
        and conflict[0]["observedGeneration"] == 1
    )


def test_desired_config_status_names_hash_and_source() -> None:
    desired = DesiredConfig.of({"a": ConfigFile(b"x")}, "OpAMPAgentConfig/web")
    assert desired_config_status(snapshot(ConfigState.APPLIED, desired=desired)) == {
        "hash": desired.hash_hex,
        "source": "OpAMPAgentConfig/web",
    }
    assert desired_config_status(snapshot(ConfigState.NONE)) is None


def agent_status(config_hash: str, reason: str, phase: str = "Online") -> dict[str, Any]:
    state = {"Applied": "True", "Applying": "Unknown", "Pending": "Unknown"}.get(reason, "False")
    return {
        "phase": phase,
        "desiredConfig": {"hash": config_hash, "source": "OpAMPAgentConfig/web"},
        "conditions": [{"type": "RemoteConfigApplied", "status": state, "reason": reason,
                        "message": f"{reason} message"}],
    }  # fmt: skip


def test_config_status_counts_and_conditions() -> None:
    h = "ab" * 32
    applied = AgentView("agent-1", agent_status(h, "Applied"))
    failed = AgentView("agent-2", agent_status(h, "Failed"))
    offline = AgentView("agent-3", agent_status(h, "Pending", phase="Offline"))
    stale = AgentView("agent-4", agent_status("cd" * 32, "Applied"))  # an older config
    overridden = AgentView("agent-5", {})
    status = config_status(
        config_hash=h, error=None,
        matched=[applied, failed, offline, stale, overridden],
        selected=[applied, failed, offline, stale], conflicted=[],
        previous=None, generation=4, now=NOW,
    )  # fmt: skip
    assert {k: v for k, v in status.items() if k.endswith("Agents")} == {
        "matchedAgents": 5, "selectedAgents": 4, "appliedAgents": 1, "pendingAgents": 2,
        "failedAgents": 1, "conflictingAgents": 0,
    }  # fmt: skip
    assert status["observedGeneration"] == 4 and status["configHash"] == h
    assert status["problems"] == [
        {"agent": "agent-2", "reason": "failed", "message": "Failed message"}
    ]
    result = kinds(status["conditions"])
    assert result["Stalled"] == ("True", "AgentsFailed")
    assert result["Reconciling"] == ("True", "Applying")  # agent-4 is online, not applied yet
    assert result["Ready"][0] == "False"


def test_config_status_all_applied_is_ready_and_offline_agents_do_not_hold_it_back() -> None:
    h = "ab" * 32
    views = [
        AgentView("agent-1", agent_status(h, "Applied")),
        AgentView("agent-2", agent_status(h, "Pending", phase="Offline")),
    ]
    status = config_status(
        config_hash=h, error=None, matched=views, selected=views, conflicted=[],
        previous=None, generation=1, now=NOW,
    )  # fmt: skip
    result = kinds(status["conditions"])
    assert result["Reconciling"][0] == "False" and result["Stalled"][0] == "False"
    assert result["Ready"] == ("True", "AppliedToOnlineAgents")  # kstatus: Current
    status = config_status(
        config_hash=h, error=None, matched=views[:1], selected=views[:1], conflicted=[],
        previous=status, generation=1, now=NOW,
    )  # fmt: skip
    assert kinds(status["conditions"])["Ready"] == ("True", "AllApplied")


def test_config_status_conflicts_and_invalid_spec() -> None:
    view = AgentView("agent-9", {"phase": "Online"})
    status = config_status(
        config_hash="ab", error=None, matched=[view], selected=[], conflicted=[view],
        previous=None, generation=2, now=NOW,
    )  # fmt: skip
    assert status["conflictingAgents"] == 1
    assert status["problems"][0]["reason"] == "conflict"
    assert kinds(status["conditions"])["Stalled"] == ("True", "AgentsFailed")
    invalid = config_status(
        config_hash=None, error="selector: bad", matched=[], selected=[], conflicted=[],
        previous=None, generation=2, now=NOW,
    )  # fmt: skip
    assert kinds(invalid["conditions"])["Stalled"] == ("True", "InvalidSpec")
    assert condition(invalid, "Ready") is not None
