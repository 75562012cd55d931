"""The Grafana fleet dashboard, built from a short list of panels.

Built as code rather than written as JSON: ~20 panels share the datasource, the replica
variable, the grid layout and the job selector, which hand-written JSON repeats each time.
`python -m opamp_operator.monitoring.dashboard` writes the JSON to
manifests/monitoring/dashboards/ and the chart's files/; a test fails when they are stale,
parses every query with promtool and compares the metric names with a live /metrics scrape.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

UID = "opamp-operator-fleet"
TITLE = "OpAMP fleet"
# Every query selects the operator's job and the replicas picked in the variable.
SEL = 'job="opamp-operator", instance=~"$instance"'
RATE = "$__rate_interval"
WIDTH = 24
HEIGHT = 8


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    queries: tuple[Query, ...]
    unit: str = "short"
    width: int = 12
    stack: bool = False


def _q(expr: str, legend: str) -> Query:
    return Query(expr, legend)


def _p99(histogram: str, by: str) -> str:
    return (
        f"histogram_quantile(0.99, sum by (le, {by}) (rate({histogram}_bucket{{{SEL}}}[{RATE}])))"
    )


ROWS: tuple[tuple[str, tuple[Panel, ...]], ...] = (
    (
        "Fleet",
        (
            Panel("Agents by phase and transport", "Agents the replicas hold now.",
                  (_q(f"sum by (phase, transport) (opamp_agents{{{SEL}}})",
                      "{{phase}} {{transport}}"),), stack=True),
            Panel("Agents Online per replica", "How the Service spreads agents over replicas.",
                  (_q(f"sum by (instance) (opamp_agents_online_total{{{SEL}}})",
                      "{{instance}}"),), stack=True),
            Panel("Phase changes by reason", "Connects (Online) and disconnects (Offline, "
                  "Error) per second, by why they happened.",
                  (_q(f"sum by (phase, reason) "
                      f"(rate(opamp_agent_phase_transitions_total{{{SEL}}}[{RATE}]))",
                      "{{phase}}: {{reason}}"),), unit="ops"),
            Panel("Sessions ended by reason", "Agent sessions ending per second; "
                  "agent_disconnect is a graceful goodbye.",
                  (_q(f"sum by (reason, transport) "
                      f"(rate(opamp_agent_connection_duration_seconds_count{{{SEL}}}[{RATE}]))",
                      "{{reason}} {{transport}}"),), unit="ops"),
            Panel("Heartbeats missed", "Agents gone Offline by heartbeat timeout, per replica.",
                  (_q(f"sum by (instance) "
                      f"(increase(opamp_agent_heartbeat_missed_total{{{SEL}}}[{RATE}]))",
                      "{{instance}}"),)),
            Panel("Offline detection (p99)", "Last message to Offline by heartbeat timeout: "
                  "the timeout plus how late the deadline fired, per replica.",
                  (_q(_p99("opamp_agent_offline_detection_seconds", "instance"),
                      "{{instance}}"),), unit="s"),
            Panel("Session length (median)", "How long sessions lasted when they ended.",
                  (_q(f"histogram_quantile(0.5, sum by (le, transport) "
                      f"(rate(opamp_agent_connection_duration_seconds_bucket{{{SEL}}}[{RATE}])))",
                      "{{transport}}"),), unit="s"),
            Panel("Registrations refused", "New agents refused by the cap or the rate limit.",
                  (_q(f"sum by (reason) "
                      f"(rate(opamp_registrations_rejected_total{{{SEL}}}[{RATE}]))",
                      "{{reason}}"),), unit="ops"),
            Panel("Agents linked to Pods", "Pod checks by result (docs/kubernetes.md).",
                  (_q(f"sum by (result) (rate(opamp_kube_pod_link_checks_total{{{SEL}}}[{RATE}]))",
                      "{{result}}"),), unit="ops"),
        ),
    ),
    (
        "OpAMP traffic",
        (
            Panel("Messages handled", "AgentToServer messages per second by transport.",
                  (_q(f"sum by (transport, instance) "
                      f"(rate(opamp_messages_received_total{{{SEL}}}[{RATE}]))",
                      "{{transport}} {{instance}}"),), unit="ops"),
            Panel("Message handling latency (p99)", "Bytes in to reply handed to the transport.",
                  (_q(_p99("opamp_message_handling_seconds", "transport"), "{{transport}}"),),
                  unit="s"),
            Panel("Open connections", "WebSockets open and HTTP requests in flight.",
                  (_q(f"sum by (transport, instance) (opamp_connections_open{{{SEL}}})",
                      "{{transport}} {{instance}}"),), stack=True),
            Panel("Refused input", "Bad messages and refused bearer tokens.",
                  (_q(f"sum by (reason) (rate(opamp_bad_input_total{{{SEL}}}[{RATE}]))",
                      "{{reason}}"),
                   _q(f"sum(rate(opamp_auth_failures_total{{{SEL}}}[{RATE}]))",
                      "auth failures")), unit="ops"),
        ),
    ),
    (
        "Writes: PostgreSQL and Kubernetes",
        (
            Panel("Database rows written", "Rows per second by table.",
                  (_q(f"sum by (table) (rate(opamp_db_writes_total{{{SEL}}}[{RATE}]))",
                      "{{table}}"),), unit="ops"),
            Panel("Database errors and drops", "Failed operations; writes shed when the "
                  "queue was full.",
                  (_q(f"sum by (operation) (rate(opamp_db_errors_total{{{SEL}}}[{RATE}]))",
                      "error: {{operation}}"),
                   _q(f"sum by (kind) (rate(opamp_db_dropped_total{{{SEL}}}[{RATE}]))",
                      "dropped: {{kind}}")), unit="ops"),
            Panel("Database flush latency (p99)", "Time to write one batch.",
                  (_q(_p99("opamp_db_flush_seconds", "instance"), "{{instance}}"),), unit="s"),
            Panel("Kubernetes writes", "Creates, status patches and Events by outcome.",
                  (_q(f"sum by (kind, outcome) (rate(opamp_kube_writes_total{{{SEL}}}[{RATE}]))",
                      "{{kind}} {{outcome}}"),), unit="ops"),
            Panel("Kubernetes errors and drops", "Updates not queued (a resync follows), "
                  "broken watches.",
                  (_q(f"sum(rate(opamp_kube_updates_dropped_total{{{SEL}}}[{RATE}]))",
                      "updates dropped"),
                   _q(f"sum by (resource) "
                      f"(rate(opamp_kube_informer_errors_total{{{SEL}}}[{RATE}]))",
                      "informer errors: {{resource}}"),
                   _q(f"sum by (outcome) "
                      f"(rate(opamp_kube_pod_watch_errors_total{{{SEL}}}[{RATE}]))",
                      "pod watch errors: {{outcome}}")), unit="ops"),
            Panel("REST API requests", "Requests per second by route and status code.",
                  (_q(f"sum by (route, code) (rate(opamp_api_requests_total{{{SEL}}}[{RATE}]))",
                      "{{route}} {{code}}"),), unit="ops"),
        ),
    ),
    (
        "Queues (per replica)",
        (
            Panel("Database queue", "History events waiting to be written.",
                  (_q(f"opamp_db_queue_depth{{{SEL}}}", "{{instance}}"),)),
            Panel("Kubernetes write queue", "Agents with a CR update waiting.",
                  (_q(f"opamp_kube_write_queue_depth{{{SEL}}}", "{{instance}}"),)),
            Panel("Fleet event queues", "Events waiting per subscriber; drops beside them.",
                  (_q(f"opamp_fleet_event_queue_depth{{{SEL}}}", "{{subscriber}} {{instance}}"),
                   _q(f"sum by (subscriber) "
                      f"(increase(opamp_fleet_events_dropped_total{{{SEL}}}[{RATE}]))",
                      "dropped: {{subscriber}}")), width=24),
        ),
    ),
)  # fmt: skip


def queries() -> dict[str, str]:
    """Every PromQL expression of the dashboard, by a name made of its panel and position."""
    found = {}
    for _, panels in ROWS:
        for panel in panels:
            for index, query in enumerate(panel.queries):
                found[f"{panel.title} #{index}"] = query.expr
    return found


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    return {
        "id": panel_id,
        "type": "timeseries",
        "title": panel.title,
        "description": panel.description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"x": x, "y": y, "w": panel.width, "h": HEIGHT},
        "fieldConfig": {
            "defaults": {
                "unit": panel.unit,
                "custom": {"stacking": {"mode": "normal" if panel.stack else "none"}},
            },
            "overrides": [],
        },
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": [
            {
                "refId": chr(ord("A") + index),
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "expr": query.expr,
                "legendFormat": query.legend,
            }
            for index, query in enumerate(panel.queries)
        ],
    }


def _variables() -> list[dict[str, Any]]:
    return [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus"},
        {
            "name": "instance",
            "label": "Replica",
            "type": "query",
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "query": {"query": 'label_values(up{job="opamp-operator"}, instance)', "refId": "A"},
            "definition": 'label_values(up{job="opamp-operator"}, instance)',
            "refresh": 2,
            "includeAll": True,
            "multi": True,
            "allValue": ".*",
            "current": {"text": "All", "value": "$__all"},
        },
    ]


def build() -> dict[str, Any]:
    """The dashboard as Grafana's JSON model (schemaVersion 39: Grafana 10 and later)."""
    panels: list[dict[str, Any]] = []
    y = 0
    for title, row_panels in ROWS:
        panels.append({"id": len(panels) + 1, "type": "row", "title": title,
                       "collapsed": False, "gridPos": {"x": 0, "y": y, "w": WIDTH, "h": 1},
                       "panels": []})  # fmt: skip
        y += 1
        x = 0
        for panel in row_panels:
            if x + panel.width > WIDTH:
                x, y = 0, y + HEIGHT
            panels.append(_panel_json(panel, len(panels) + 1, x, y))
            x += panel.width
        y += HEIGHT
    return {
        "uid": UID,
        "title": TITLE,
        "description": "opamp-operator: the agent fleet, OpAMP traffic, writes and queues.",
        "tags": ["opamp", "opentelemetry"],
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "timezone": "browser",
        "templating": {"list": _variables()},
        "annotations": {"list": []},
        "panels": panels,
    }


def render() -> str:
    """The dashboard JSON exactly as committed (stable key order, trailing newline)."""
    return json.dumps(build(), indent=2) + "\n"


def main(repo: Path) -> None:
    """Write the dashboard where kustomize and the chart read it."""
    text = render()
    for path in (
        repo / "manifests" / "monitoring" / "dashboards" / "opamp-fleet.json",
        repo / "charts" / "opamp-operator" / "files" / "opamp-fleet.json",
    ):
        path.write_text(text)
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    # The package is installed editable from operator/: the repository is two levels up.
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[3])
