"""The PrometheusRule's alerts, evaluated by Prometheus' own rule engine (`promtool test rules`).

Each case feeds one minute-resolution history of the series the alerts read (the operator's
metrics per replica, kube-state-metrics' OpAMPAgent and Deployment metrics) and states which
alerts fire at its evaluation time, with their labels and summary; every other alert of the
file must stay quiet all along the history (every few minutes), not only at the end, so a
scale-down in progress pages nobody either. Descriptions are left out of the comparison:
they are prose, and promtool compares annotations as exact strings.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.manifests import MANIFESTS, one, render
from tests.support.promtool import promtool, write_rule_file

pytestmark = pytest.mark.integration

Obj = dict[str, Any]
JOB = 'job="opamp-operator"'
A, B, C = "10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"
SPEC_REPLICAS = (
    'kube_deployment_spec_replicas{namespace="opamp-system",deployment="opamp-operator"}'
)
AGENT_PHASE = 'opamp_opampagent_status_phase{namespace="opamp-system",opampagent="a1",phase="%s"}'


def _per_replica(metric: str, labels: str = "") -> list[str]:
    """The series of `metric` as replicas A and B export it."""
    extra = f",{labels}" if labels else ""
    return [f'{metric}{{{JOB},instance="{i}"{extra}}}' for i in (A, B)]


UP_A, UP_B = _per_replica("up")
ONLINE_A, ONLINE_B = _per_replica("opamp_agents_online_total")
OFFLINE_A, OFFLINE_B = _per_replica("opamp_agents_offline_total")
MISSED_A, MISSED_B = _per_replica("opamp_agent_heartbeat_missed_total")
DB_ERRORS_A, _ = _per_replica("opamp_db_errors_total", 'operation="flush"')
KUBE_ERRORS_A, _ = _per_replica("opamp_kube_writes_total", 'kind="status",outcome="error"')
KUBE_OK_A, _ = _per_replica("opamp_kube_writes_total", 'kind="status",outcome="ok"')

# Two replicas holding 50 agents each, for an hour, and nothing wrong.
HEALTHY = {
    UP_A: "1x60",
    UP_B: "1x60",
    SPEC_REPLICAS: "2x60",
    ONLINE_A: "50x60",
    ONLINE_B: "50x60",
    OFFLINE_A: "0x60",
    OFFLINE_B: "0x60",
    MISSED_A: "0x60",
    MISSED_B: "0x60",
    AGENT_PHASE % "Online": "1x60",
    AGENT_PHASE % "Offline": "0x60",
    AGENT_PHASE % "Error": "0x60",
    DB_ERRORS_A: "0x60",
    KUBE_ERRORS_A: "0x60",
    KUBE_OK_A: "0+10x60",
}


@dataclass(frozen=True)
class Case:
    name: str
    changed: dict[str, str | None]  # series -> values (None: the series does not exist)
    at: str  # when the alerts are evaluated
    firing: dict[str, list[Obj]] = field(default_factory=dict)  # alert -> expected alerts

    def series(self) -> list[Obj]:
        merged = {**HEALTHY, **self.changed}
        return [{"series": s, "values": v} for s, v in merged.items() if v is not None]


def alert(summary: str, **labels: str) -> Obj:
    return {"exp_labels": labels, "exp_annotations": {"summary": summary}}


CASES = [
    Case("healthy", {}, at="50m"),
    Case(
        "collectors scaled down: agents leave with AgentDisconnect and stay Offline",
        {
            ONLINE_A: "50-5x10 0x50",
            ONLINE_B: "50-5x10 0x50",
            OFFLINE_A: "0+5x10 50x50",
            OFFLINE_B: "0+5x10 50x50",
            AGENT_PHASE % "Online": "1x5 0x55",
            AGENT_PHASE % "Offline": "0x5 1x55",
        },
        at="50m",
    ),
    Case(
        "operator scaled down from three replicas to two",
        {f'up{{{JOB},instance="{C}"}}': "1x10", SPEC_REPLICAS: "3x10 2x50"},
        at="40m",
    ),
    Case(
        "a replica lost: its pod is gone and not replaced",
        {UP_B: "1x5", ONLINE_B: "50x5", MISSED_B: "0x5", ONLINE_A: "50x5 100x55"},
        at="30m",
        firing={
            "OpAMPOperatorReplicasMissing": [
                alert(
                    "1 opamp-operator replicas answer, fewer than the Deployment's",
                    severity="warning",
                )
            ]
        },
    ),
    Case(
        "a replica stops answering scrapes",
        {UP_B: "1x5 0x55"},
        at="30m",
        firing={
            "OpAMPOperatorDown": [
                alert(
                    f"opamp-operator replica {B} does not answer scrapes",
                    severity="critical",
                    job="opamp-operator",
                    instance=B,
                )
            ],
            "OpAMPOperatorReplicasMissing": [
                alert(
                    "1 opamp-operator replicas answer, fewer than the Deployment's",
                    severity="warning",
                )
            ],
        },
    ),
    Case(
        "no replica scraped at all",
        {k: None for k in HEALTHY if JOB in k},
        at="10m",
        firing={
            "OpAMPOperatorAbsent": [
                alert("No opamp-operator replica is scraped", severity="critical")
            ]
        },
    ),
    Case(
        "an agent in Error",
        {AGENT_PHASE % "Online": "1x5 0x55", AGENT_PHASE % "Error": "0x5 1x55"},
        at="15m",
        firing={
            "OpAMPAgentsInError": [
                alert("1 OpAMPAgent resources in phase Error", severity="warning")
            ]
        },
    ),
    Case(
        "an agent in Error for three minutes, then back",
        {AGENT_PHASE % "Error": "0x5 1x3 0x52"},
        at="15m",
    ),
    Case(
        "heartbeats missed by a fifth of the fleet every ten minutes",
        {MISSED_A: "0+1x60", MISSED_B: "0+1x60"},
        at="30m",
        firing={
            "OpAMPHeartbeatsMissed": [
                alert("Many OpAMP agents are missing heartbeats", severity="warning")
            ]
        },
    ),
    Case("one heartbeat missed", {MISSED_A: "0x20 1x40"}, at="30m"),
    Case(
        "database down: every flush fails",
        {DB_ERRORS_A: "0x5 0+6x55"},
        at="20m",
        firing={
            "OpAMPDatabaseErrors": [
                alert(
                    "opamp-operator cannot write to PostgreSQL (flush)",
                    severity="warning",
                    operation="flush",
                )
            ]
        },
    ),
    Case("one failed flush, then the database is back", {DB_ERRORS_A: "0x5 1x55"}, at="30m"),
    Case(
        "status patches to Kubernetes failing",
        {KUBE_ERRORS_A: "0x5 0+3x55"},
        at="30m",
        firing={
            "OpAMPKubeWriteErrors": [
                alert(
                    "opamp-operator's writes to Kubernetes fail (status)",
                    severity="warning",
                    kind="status",
                )
            ]
        },
    ),
]


HISTORY_MINUTES = 60
QUIET_EVERY_MINUTES = 2


def _groups() -> list[Obj]:
    groups: list[Obj] = one(render(MANIFESTS / "monitoring"), "PrometheusRule")["spec"]["groups"]
    return groups


def _alert_names(groups: list[Obj]) -> list[str]:
    return [rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule]


@pytest.fixture(scope="module")
def rules_for_tests(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The rule groups as a rule file, descriptions dropped (see the module docstring)."""
    groups = copy.deepcopy(_groups())
    for group in groups:
        for rule in group["rules"]:
            rule.get("annotations", {}).pop("description", None)
    return write_rule_file(groups, tmp_path_factory.mktemp("rules") / "rules.yaml")


def test_rule_file_passes_promtool_check(tmp_path: Path) -> None:
    path = write_rule_file(_groups(), tmp_path / "rules.yaml")
    out = promtool("check", "rules", "--lint=all", "--lint-fatal", str(path))
    assert f"SUCCESS: {len(_alert_names(_groups()))} rules found" in out


def test_every_alert_fires_in_some_case_and_is_quiet_in_another() -> None:
    names = set(_alert_names(_groups()))
    fired = {name for case in CASES for name in case.firing}
    quiet = {name for case in CASES for name in names - case.firing.keys()}
    assert fired == names, f"no case makes {sorted(names - fired)} fire"
    assert quiet == names


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_alerts(case: Case, rules_for_tests: Path, tmp_path: Path) -> None:
    names = _alert_names(_groups())
    assert case.firing.keys() <= set(names), "a case names an alert the file does not have"
    firing = [
        {"eval_time": case.at, "alertname": name, "exp_alerts": expected}
        for name, expected in case.firing.items()
    ]
    quiet = [
        {"eval_time": f"{minute}m", "alertname": name, "exp_alerts": []}
        for name in names
        if name not in case.firing
        for minute in range(0, HISTORY_MINUTES + 1, QUIET_EVERY_MINUTES)
    ]
    test = {"interval": "1m", "input_series": case.series(), "alert_rule_test": firing + quiet}
    spec = {"rule_files": [str(rules_for_tests)], "evaluation_interval": "1m", "tests": [test]}
    test_file = tmp_path / "test.yaml"
    test_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    promtool("test", "rules", str(test_file))
