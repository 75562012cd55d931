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

from opamp_operator.config import FleetSettings
from tests.support.helm import CHART, NAMESPACE, RELEASE, helm, template, without_helm_labels
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
    "agentServiceAccountTokens": {"enabled": True, "audience": "opamp.example"},
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


def test_monitoring_objects_render_manifests_monitoring(home: Path) -> None:
    """The optional ServiceMonitor, PrometheusRule and dashboard ConfigMap, switched on,
    are the objects of manifests/monitoring/ (whose labels the chart's default values
    carry)."""
    kinds = ("serviceMonitor", "prometheusRule", "dashboard")
    switched_on = {"monitoring": {kind: {"enabled": True} for kind in kinds}}
    chart = {
        _key(o): without_helm_labels(o)
        for o in template(home, switched_on)
        if o["kind"] in MONITORING_KINDS or o["metadata"]["name"] == "opamp-operator-dashboard"
    }
    kustomize = {_key(o): o for o in render(MANIFESTS / "monitoring")}
    assert sorted(chart) == sorted(kustomize)
    # Helm's `|-` block drops the file's final newline; the JSON is what must be equal.
    for objects in (chart, kustomize):
        data = objects[("ConfigMap", NAMESPACE, "opamp-operator-dashboard")]["data"]
        data["opamp-fleet.json"] = json.loads(data["opamp-fleet.json"])
    differ = sorted(str(key) for key in kustomize if chart[key] != kustomize[key])
    assert not differ, f"the chart and manifests/monitoring drifted apart in {differ}"


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
    assert chart_crds == {p.name for p in (ROOT / "crds").glob("*.yaml")}


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
    assert env["OPAMP_AGENT_SERVICEACCOUNT_TOKENS"] == "true"
    assert env["OPAMP_AGENT_TOKEN_AUDIENCE"] == "opamp.example"

    # The Role follows the served namespace; the pods' RBAC is gone.
    assert one(objects, "Role")["metadata"]["namespace"] == namespace
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
        (
            {"heartbeat": {"timeout": 20}},
            "heartbeat.timeout (20) must exceed heartbeat.interval (30, the operator's default)",
        ),
        ({"heartbeat": {"timeout": 0}}, "/heartbeat/timeout"),
        ({"resources": {"limits": {"memory": "1 GB"}}}, "/resources/limits/memory"),
        ({"resources": {"request": {"cpu": 1}}}, "request"),
        ({"database": {"existingSecret": "My_Secret"}}, "/database/existingSecret"),
        ({"database": {"key": "a/b"}}, "/database/key"),
        ({"tls": {"existingSecret": "tls secret"}}, "/tls/existingSecret"),
        (
            {"tls": {"clientCAKey": "ca.crt"}},
            "tls.clientCAKey (ca.crt) is a key of tls.existingSecret",
        ),
        ({"agentTokens": {"existingSecret": "Tokens!"}}, "/agentTokens/existingSecret"),
        ({"agentTokens": {"existingSecret": "tokens", "key": ""}}, "/agentTokens/key"),
        ({"agentServiceAccountTokens": {"audience": ""}}, "/agentServiceAccountTokens/audience"),
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


def test_heartbeat_check_assumes_the_operators_defaults(home: Path) -> None:
    """One timing set alone is checked against the operator's default for the other, which
    the chart's helper must therefore know (and keep in step with FleetSettings)."""
    defaults = FleetSettings()
    interval, timeout = defaults.heartbeat_interval_seconds, defaults.heartbeat_timeout_seconds
    refused = [{"timeout": interval}, {"interval": timeout}]
    accepted = [{"timeout": interval + 0.5}, {"interval": timeout - 0.5}]
    for heartbeat in refused + accepted:
        path = home / "heartbeat-values.json"
        path.write_text(json.dumps({"heartbeat": heartbeat}))
        result = helm("template", "x", str(CHART), "--values", str(path), home=home)
        if heartbeat in refused:
            assert "the operator's default" in result.stderr, (heartbeat, result.stderr)
        else:
            assert result.returncode == 0, (heartbeat, result.stderr)


def _value_paths(values: Obj, schema: Obj, prefix: str = "") -> list[str]:
    """The chart's values down to two levels, where the schema names their keys."""
    paths = []
    for key, value in values.items():
        path = prefix + key
        paths.append(path)
        if isinstance(value, dict) and "properties" in schema["properties"][key] and not prefix:
            paths += _value_paths(value, schema["properties"][key], path + ".")
    return paths


def test_every_value_is_documented() -> None:
    """docs/deploy.md's values table names each value down to two levels (`a.b`, or `.b`
    in a row of `a.`)."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    doc = (ROOT / "docs" / "deploy.md").read_text()
    table = doc[doc.index("### Values") : doc.index("### Upgrades and CRDs")]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    undocumented = []
    for path in _value_paths(values, schema):
        parent, _, leaf = path.rpartition(".")
        if parent:
            names = (f"`{path}`", f"`{path}.", f"`.{leaf}`")
            found = any(f"`{parent}." in r and any(n in r for n in names) for r in rows)
        else:
            found = any(f"`{path}`" in r or f"`{path}." in r for r in rows)
        if not found:
            undocumented.append(path)
    assert not undocumented, f"docs/deploy.md's values table lacks {undocumented}"


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


def test_notes_follow_the_values(home: Path) -> None:
    """NOTES.txt (as `helm install` prints it; a client-side dry run renders it) names the
    DSN Secret, the OpAMP URL with its TLS and token requirements, and where to look."""
    path = home / "notes-values.json"
    path.write_text(json.dumps({**CUSTOM, "watchNamespace": "agents"}))
    result = helm("install", RELEASE, str(CHART), "-n", NAMESPACE, "--dry-run=client",
                  "--values", str(path), home=home)  # fmt: skip
    assert result.returncode == 0, result.stderr
    notes = result.stdout[result.stdout.index("NOTES:") :]
    for expected in [
        f"kubectl -n {NAMESPACE} create secret generic pg \\\n       --from-literal=url=",
        f"wss://opamp-operator.{NAMESPACE}.svc:4320/v1/opamp",
        "Authorization: Bearer <token>`, a token listed in the Secret tokens (key list)",
        "client certificate signed by the CA in opamp-tls (key ca.crt)",
        "kubectl get opampagents -n agents",
        "kubectl apply --server-side -f <new chart>/crds/",
    ]:
        assert expected in notes, f"{expected!r} not in\n{notes}"


def test_kube_version_requirement(home: Path) -> None:
    old = helm("template", "x", str(CHART), "--kube-version", "1.29.9", home=home)
    assert old.returncode != 0 and "requires kubeVersion: >=1.30.0-0" in old.stderr, old.stderr
    new = helm("template", "x", str(CHART), "--kube-version", "1.30.0", home=home)
    assert new.returncode == 0, new.stderr


def test_helm_install_onto_the_test_bed(
    home: Path, kubeconfig: Path, kube_api: k8s.ApiClient, installed: None
) -> None:
    """A real `helm install` (default values) into the restricted namespace: the release is
    deployed, its objects exist, NOTES.txt tells what to do next; a bad value is refused
    before anything reaches the cluster. The CRDs are already there (the `installed`
    fixture): Helm leaves existing CRDs alone, as it does on every later upgrade."""
    chart = str(CHART)  # kubeVersion included: the test bed reports its real version
    kube = f"--kubeconfig={kubeconfig}"
    bad = home / "bad-install-values.json"
    bad.write_text(json.dumps({"replicaCount": -1}))
    refused = helm("install", "bad", chart, "-n", NAMESPACE, kube, "--values", str(bad),
                   home=home)  # fmt: skip
    assert refused.returncode != 0 and "/replicaCount" in refused.stderr, refused.stderr
    result = helm("install", RELEASE, chart, "-n", NAMESPACE, kube, home=home)
    try:
        assert result.returncode == 0, result.stderr
        # The API server's warnings (Pod Security "would violate ...", deprecations) reach
        # helm's stderr through client-go's warnings.go; other client-go lines are noise.
        assert "warnings.go" not in result.stderr, result.stderr
        assert "STATUS: deployed" in result.stdout
        assert f"kubectl get opampagents -n {NAMESPACE}" in result.stdout
        assert "create secret generic opamp-operator-db" in result.stdout
        apps = k8s.AppsV1Api(kube_api)
        deployment = apps.read_namespaced_deployment("opamp-operator", NAMESPACE)
        assert deployment.metadata.labels["app.kubernetes.io/managed-by"] == "Helm"
        assert deployment.spec.replicas == 2
        policy = k8s.PolicyV1Api(kube_api)
        assert policy.read_namespaced_pod_disruption_budget("opamp-operator", NAMESPACE)
        pod = pod_from(kube_api.sanitize_for_serialization(deployment), NAMESPACE)
        assert_restricted_admission(k8s.CoreV1Api(kube_api), pod)
    finally:
        helm("uninstall", RELEASE, "-n", NAMESPACE, kube, home=home)
