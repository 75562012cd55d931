"""The fleet dashboard: committed as its builder writes it, shipped as a Grafana sidecar
ConfigMap, and every query valid PromQL (promtool). tests/e2e/test_metrics_exposition.py
checks the metric names against a live scrape of the operator."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from opamp_operator.monitoring import dashboard
from tests.support.helm import CHART
from tests.support.manifests import MANIFESTS, one, render
from tests.support.promtool import check_queries

pytestmark = pytest.mark.integration

SHIPPED = MANIFESTS / "monitoring" / "dashboards" / "opamp-fleet.json"


def promql(expr: str) -> str:
    """A dashboard query as Prometheus sees it once Grafana filled in its variables."""
    return expr.replace('"$instance"', '".*"').replace("$__rate_interval", "5m")


def test_committed_json_is_what_the_builder_writes() -> None:
    for path in (SHIPPED, CHART / "files" / "opamp-fleet.json"):
        assert path.read_text() == dashboard.render(), (
            f"{path} is stale: python -m opamp_operator.monitoring.dashboard"
        )


def test_every_query_parses(tmp_path: Path) -> None:
    exprs = {name: promql(expr) for name, expr in dashboard.queries().items()}
    assert all("$" not in expr for expr in exprs.values()), "a Grafana variable left over"
    check_queries(exprs, tmp_path)


def test_a_query_that_does_not_parse_is_caught(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="parse error"):
        check_queries({"broken": "sum by (phase (opamp_agents)"}, tmp_path)


def test_panels_cover_the_fleet_and_its_machinery() -> None:
    used = " ".join(dashboard.queries().values())
    for metric in [
        "opamp_agents{",  # fleet by phase and transport
        "opamp_agents_online_total",  # per replica
        "opamp_agent_phase_transitions_total",  # connects/disconnects and reasons
        "opamp_agent_connection_duration_seconds_count",
        "opamp_agent_heartbeat_missed_total",
        "opamp_message_handling_seconds_bucket",
        "opamp_db_writes_total",
        "opamp_db_errors_total",
        "opamp_kube_writes_total",
        "opamp_db_queue_depth",
        "opamp_kube_write_queue_depth",
        "opamp_fleet_event_queue_depth",
    ]:
        assert metric in used, metric
    # Every query follows the replica picker and only this job.
    for name, expr in dashboard.queries().items():
        selectors = re.findall(r"\{([^}]*)\}", expr)
        assert selectors and all(dashboard.SEL in s for s in selectors), name


def test_dashboard_json_is_well_formed() -> None:
    model = json.loads(SHIPPED.read_text())
    panels = model["panels"]
    assert [p["id"] for p in panels] == list(range(1, len(panels) + 1))
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
    cells = [(p["gridPos"]["x"], p["gridPos"]["y"]) for p in panels]
    assert len(cells) == len(set(cells)), "two panels in one place"
    assert {v["name"] for v in model["templating"]["list"]} == {"datasource", "instance"}


def test_shipped_as_a_configmap_for_the_grafana_sidecar() -> None:
    configmap = one(render(MANIFESTS / "monitoring"), "ConfigMap", "opamp-operator-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"]["opamp-fleet.json"]) == dashboard.build()
