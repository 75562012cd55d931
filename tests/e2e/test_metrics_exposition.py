"""The operator's live /metrics, read by Prometheus' own tooling.

One operator with one opamp-go agent connected, scraped: `promtool check metrics` finds
nothing but the two documented exceptions (docs/deploy.md, "Metric names"), the four
specified names are there with their types, and every metric the fleet dashboard and the
alert rules query is one the scrape carries. A labelled metric nothing has touched yet has
no sample on the scrape, so promtool sees its name but not its labels: the declared metrics,
each given one child, are checked too.
"""

from __future__ import annotations

import re
import uuid

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.metrics import MetricWrapperBase

from opamp_operator import metrics
from opamp_operator.monitoring import dashboard
from tests.e2e.conftest import OperatorFactory
from tests.e2e.helpers import eventually
from tests.support.goagent import GoAgent
from tests.support.manifests import MANIFESTS
from tests.support.operator_process import metric_value
from tests.support.promtool import lint_metrics

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

# Specified names kept although they are gauges: promtool wants no _total on a gauge.
DOCUMENTED_DEVIATIONS = [
    'opamp_agents_offline_total non-counter metrics should not have "_total" suffix',
    'opamp_agents_online_total non-counter metrics should not have "_total" suffix',
]
SUFFIXES = {
    "counter": ("",),  # the TYPE line already names the _total sample
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
}
# The names the project was specified with, kept whatever the conventions say, and their types.
SPECIFIED = {
    "opamp_agents_online_total": "gauge",
    "opamp_agents_offline_total": "gauge",
    "opamp_agent_connection_duration_seconds": "histogram",
    "opamp_agent_heartbeat_missed_total": "counter",
}
# Derived by kube-state-metrics (kube-state-metrics-opampagents.yaml), not by the operator.
NOT_OURS = ("up", "kube_deployment_spec_replicas", "opamp_opampagent_status_phase")


def metric_types(exposition: str) -> dict[str, str]:
    """Metric name -> type, from the exposition's TYPE lines."""
    found = {}
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            found[name] = kind
    return found


def sample_names(exposition: str) -> set[str]:
    """Every sample name the exposition can carry, from its TYPE lines (a labelled metric
    that has no child yet has a TYPE line and no sample)."""
    return {
        name + suffix
        for name, kind in metric_types(exposition).items()
        for suffix in SUFFIXES.get(kind, ("",))
    }


def queried_metrics(expr: str) -> set[str]:
    return set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{", expr)) - set(NOT_OURS)


@pytest.fixture
async def scrape(operator_factory: OperatorFactory) -> str:
    operator = operator_factory()
    await operator.start()
    async with GoAgent() as agent:
        await agent.start(url=operator.ws_url, instance_uid=str(uuid.uuid4()), heartbeat=1)

        async def online() -> str | None:
            text = await operator.metrics_text()
            return text if metric_value(text, "opamp_agents_online_total") == 1 else None

        return await eventually("the agent counted Online", online, within=30)


async def test_promtool_finds_only_the_documented_deviations(scrape: str) -> None:
    assert lint_metrics(scrape) == DOCUMENTED_DEVIATIONS


def declared_exposition() -> str:
    """The operator's own metrics as declared, each labelled one with a child (its label
    names are only in the declaration: prometheus_client has no public accessor)."""
    labelled = [
        (metric, ["lint"] * len(metric._labelnames))
        for metric in vars(metrics).values()
        if isinstance(metric, MetricWrapperBase) and metric._labelnames
    ]
    for metric, values in labelled:
        metric.labels(*values)
    try:
        return generate_latest(metrics.REGISTRY).decode()
    finally:
        for metric, values in labelled:
            metric.remove(*values)


def test_declared_labels_follow_the_conventions() -> None:
    exposition = declared_exposition()
    assert 'opamp_bad_input_total{reason="lint",transport="lint"}' in exposition
    assert set(lint_metrics(exposition)) <= set(DOCUMENTED_DEVIATIONS)


async def test_the_specified_metric_names_are_kept(scrape: str) -> None:
    types = metric_types(scrape)
    assert {name: types.get(name) for name in SPECIFIED} == SPECIFIED


async def test_dashboard_and_alerts_query_only_exported_metrics(scrape: str) -> None:
    exported = sample_names(scrape)
    for name, expr in dashboard.queries().items():
        missing = queried_metrics(expr) - exported
        assert not missing, f"dashboard panel {name} queries {sorted(missing)}"
    rule = yaml.safe_load((MANIFESTS / "monitoring" / "prometheus-rule.yaml").read_text())
    for group in rule["spec"]["groups"]:
        for alert in group["rules"]:
            missing = queried_metrics(alert["expr"]) - exported
            assert not missing, f"alert {alert['alert']} queries {sorted(missing)}"
