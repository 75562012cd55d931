"""The Helm chart in charts/opamp-operator, with a real `helm` and the test bed's API server.

One source of truth: with default values the chart renders the kustomize base's objects
(less Helm's bookkeeping labels and the Namespace, which `helm install --create-namespace`
or the user makes), its CRDs are those of crds/, and its rule and dashboard files are those
of manifests/monitoring/. Beyond that: `helm lint`, non-default values where they land, bad
values refused with a message naming the value, and the rendered objects accepted by the
API server (server-side dry run) in a namespace enforcing the restricted Pod Security
Standard.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from tests.support.helm import CHART, NAMESPACE, helm, template, without_helm_labels
from tests.support.manifests import (
    MANIFESTS,
    ROOT,
    Obj,
    assert_restricted_admission,
    kubectl,
    one,
    pod_from,
    render,
    server_apply,
)

pytestmark = pytest.mark.integration

MONITORING_KINDS = {"ServiceMonitor", "PrometheusRule"}

# Everything a user is likely to change, set away from its default.
CUSTOM: dict[str, Any] = {
    "replicaCount": 3,
    "image": {"repository": "registry.example/opamp-operator", "tag": "9.9.9"},
    "resources": {"requests": {"cpu": "1", "memory": "512Mi"}},
    "database": {"existingSecret": "pg", "key": "url"},
    "tls": {"existingSecret": "opamp-tls", "clientCAKey": "ca.crt"},
    "agentTokens": {"existingSecret": "tokens", "key": "list"},
    "heartbeat": {"interval": 10, "timeout": 25, "errorAfterOffline": 120.5},
    "linkPods": False,
    "extraEnv": [{"name": "OPAMP_MAX_AGENTS", "value": "1000"}],
    "podDisruptionBudget": {"enabled": False},
    "monitoring": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "kps"}},
        "prometheusRule": {"enabled": True, "labels": {"release": "kps"}},
        "dashboard": {"enabled": True, "namespace": "monitoring"},
    },
}


def _key(obj: Obj) -> tuple[str, str, str]:
    return (obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])


def _env(objects: list[Obj]) -> dict[str, Any]:
    (container,) = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("helm")


@pytest.fixture(scope="module")
def base() -> list[Obj]:
    return render(MANIFESTS)


def test_helm_lint_is_clean(home: Path) -> None:
    for values in ({}, CUSTOM):
        path = home / "lint-values.json"
        path.write_text(json.dumps(values))
        result = helm("lint", "--strict", str(CHART), "--values", str(path), home=home)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "0 chart(s) failed" in result.stdout


def _comparable(obj: Obj) -> Obj:
    # Helm copies crds/ verbatim (no templating), so the chart's CRDs lack the labels the
    # kustomize base adds to every object; everything else must be equal.
    if obj["kind"] == "CustomResourceDefinition":
        obj["metadata"].pop("labels", None)
    return obj


def test_default_values_render_the_kustomize_base(home: Path, base: list[Obj]) -> None:
    chart = {_key(o): _comparable(without_helm_labels(o)) for o in template(home)}
    kustomize = {_key(o): _comparable(o) for o in base if o["kind"] != "Namespace"}
    assert sorted(chart) == sorted(kustomize)
    differ = sorted(str(key) for key in kustomize if chart[key] != kustomize[key])
    assert not differ, f"the chart and manifests/ drifted apart in {differ}"


def test_copies_match_their_source() -> None:
    """The chart's CRDs, rules and dashboard are byte-for-byte copies (Helm cannot read
    files outside the chart)."""
    pairs = [(ROOT / "crds" / p.name, p) for p in (ROOT / "crds").glob("*.yaml")]
    pairs += [
        (MANIFESTS / "monitoring" / "prometheus-rule.yaml", CHART / "files/prometheus-rule.yaml"),
        (
            MANIFESTS / "monitoring" / "dashboards/opamp-fleet.json",
            CHART / "files/opamp-fleet.json",
        ),
    ]
    stale = [f"cp {src.relative_to(ROOT)} {dst.relative_to(ROOT)}" for src, dst in pairs
             if not dst.exists() or src.read_bytes() != dst.read_bytes()]  # fmt: skip
    assert not stale, "copies out of date; run:\n" + "\n".join(stale)
    chart_crds = {p.name for p in (CHART / "crds").glob("*.yaml")}
    assert chart_crds == {p.name for p in (ROOT / "crds").glob("*.yaml")} | {
        "kopfpeerings.kopf.dev.yaml"
    }


def test_custom_values_land_where_they_should(home: Path, namespace: str) -> None:
    objects = template(home, {**CUSTOM, "watchNamespace": namespace})
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "registry.example/opamp-operator:9.9.9"
    assert container["resources"]["requests"] == CUSTOM["resources"]["requests"]
    env = _env(objects)
    assert env["OPAMP_DATABASE_DSN"] == {"secretKeyRef": {"name": "pg", "key": "url"}}
    assert env["OPAMP_NAMESPACE"] == namespace
    assert (env["OPAMP_HEARTBEAT_INTERVAL"], env["OPAMP_HEARTBEAT_TIMEOUT"]) == ("10", "25")
    assert env["OPAMP_ERROR_AFTER_OFFLINE"] == "120.5"
    assert env["OPAMP_LINK_PODS"] == "false"
    assert env["OPAMP_MAX_AGENTS"] == "1000"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secrets == {"tls": "opamp-tls", "agent-tokens": "tokens"}
    assert env["OPAMP_TLS_CERT_FILE"] == f"{mounts['tls']}/tls.crt"
    assert env["OPAMP_TLS_KEY_FILE"] == f"{mounts['tls']}/tls.key"
    assert env["OPAMP_TLS_CLIENT_CA_FILE"] == f"{mounts['tls']}/ca.crt"
    assert env["OPAMP_AGENT_TOKENS_FILE"] == f"{mounts['agent-tokens']}/list"

    # The Role and the peering object follow the served namespace; the pods' RBAC is gone.
    assert one(objects, "Role")["metadata"]["namespace"] == namespace
    assert one(objects, "KopfPeering")["metadata"]["namespace"] == namespace
    names = {_key(o)[::2] for o in objects}
    assert ("ClusterRole", "opamp-operator-pods") not in names
    assert ("PodDisruptionBudget", "opamp-operator") not in names

    rule = one(objects, "PrometheusRule")
    source = yaml.safe_load((MANIFESTS / "monitoring" / "prometheus-rule.yaml").read_text())
    assert rule["spec"]["groups"] == source["spec"]["groups"]
    assert rule["metadata"]["labels"]["release"] == "kps"
    assert one(objects, "ServiceMonitor")["metadata"]["labels"]["release"] == "kps"
    dashboard = one(objects, "ConfigMap", "opamp-operator-dashboard")
    assert dashboard["metadata"]["namespace"] == "monitoring"
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads((MANIFESTS / "monitoring" / "dashboards/opamp-fleet.json").read_text())
    assert json.loads(dashboard["data"]["opamp-fleet.json"]) == shipped


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCount": "two"}, "/replicaCount"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"database": {"existingSecret": ""}}, "/database/existingSecret"),
        ({"heartbeat": {"interval": "30s"}}, "/heartbeat/interval"),
        ({"heartbeat": {"interval": 30, "timeout": 20}}, "heartbeat.timeout (20) must exceed"),
        ({"watchNamespace": "Not_A_Namespace"}, "/watchNamespace"),
        ({"extraEnv": [{"name": "lower-case"}]}, "/extraEnv/0/name"),
        ({"replicas": 3}, "replicas"),  # a typo of replicaCount: unknown keys are refused
        ({"monitoring": {"serviceMonitor": {"interval": "often"}}}, "/interval"),
    ],
)
def test_bad_values_are_refused_with_a_clear_message(home: Path, values: Obj, message: str) -> None:
    path = home / "bad-values.json"
    path.write_text(json.dumps(values))
    result = helm("template", "x", str(CHART), "--values", str(path), home=home)
    assert result.returncode != 0, f"{values} was accepted"
    assert message in result.stderr, result.stderr
    assert "goroutine" not in result.stderr  # a message, not a crash


@pytest.fixture(scope="module")
def installed(kubeconfig: Path, base: list[Obj]) -> None:
    """The base's Namespace (restricted Pod Security) and CRDs, created for real."""
    crds = [o for o in base if o["kind"] == "CustomResourceDefinition"]
    server_apply(kubeconfig, [one(base, "Namespace"), *crds], dry_run=False)
    names = [f"crd/{crd['metadata']['name']}" for crd in crds]
    kubectl(kubeconfig, "wait", "--for=condition=Established", "--timeout=60s", *names)


@pytest.mark.parametrize("values", [None, CUSTOM], ids=["default", "custom"])
def test_server_accepts_the_rendered_chart(
    home: Path,
    kubeconfig: Path,
    kube_api: k8s.ApiClient,
    installed: None,
    values: Obj | None,
) -> None:
    """Dry run of every object but the Prometheus Operator's (the test bed lacks its CRDs):
    no error, no warning (the namespace warns on "restricted" violations); the pod passes
    the restricted Pod Security Standard and a weakened one does not."""
    objects = [o for o in template(home, values) if o["kind"] not in MONITORING_KINDS]
    # The dashboard ConfigMap goes to a namespace of Grafana's; here, to the operator's.
    for obj in objects:
        if obj["kind"] == "ConfigMap":
            obj["metadata"]["namespace"] = NAMESPACE
    warnings = server_apply(kubeconfig, objects, dry_run=True)
    assert "Warning" not in warnings, warnings
    pod = pod_from(one(objects, "Deployment"), NAMESPACE)
    assert_restricted_admission(k8s.CoreV1Api(kube_api), pod)
