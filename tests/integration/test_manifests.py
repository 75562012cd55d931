"""The deployment manifests against the real kube-apiserver of the test bed.

They render with kustomize; the server accepts every object (server-side dry run, with the
CRDs and the namespace installed for real); the operator's pod passes the "restricted" Pod
Security Standard its namespace enforces; and its RBAC grants exactly the rules in
docs/deploy.md: a client holding only the ServiceAccount's token can do each thing the
operator does, and nothing else, and Kopf itself runs on that token without a refusal.

The monitoring objects (ServiceMonitor, PrometheusRule) belong to the Prometheus Operator's
CRDs, which the test bed does not have; stand-in CRDs would only prove that the kind is
spelled the way the stand-in is. They are checked for what matters instead: every metric an
alert uses is one the operator exports (or kube-state-metrics derives from the CR), and the
ServiceMonitor selects the operator's Service and port.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import re
import shutil
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import Message
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s

from opamp_operator.config import ApiSettings, ListenerSettings
from opamp_operator.kube.api import Credentials
from opamp_operator.kube.wiring.kopfsetup import build_registry, run_kopf
from opamp_operator.metrics import REGISTRY, FleetCollector
from opamp_operator.options import OPTIONS
from tests.support.manifests import (
    Obj,
    assert_restricted_admission,
    cluster_scoped,
    kubectl,
    leave_kopf_peering,
    one,
    pod_from,
    render,
    retarget,
    server_apply,
    token_for,
)
from tests.support.polling import eventually_sync

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
NAMESPACE = "opamp-system"
KUBECTL_TIMEOUT_SECONDS = 120
RBAC_PROPAGATION_SECONDS = 20.0
RETRY_429_SECONDS = 30.0
KOPF_TIMEOUT_SECONDS = 60.0

Rule = tuple[str, str, str]  # (apiGroup, resource, verb)

# What the operator may do: the table in docs/deploy.md, granted by manifests/rbac.yaml.
NAMESPACED_RULES: dict[tuple[str, str], tuple[str, ...]] = {
    ("opamp.dev", "opampagents"): ("get", "list", "watch", "create", "patch", "delete"),
    ("opamp.dev", "opampagents/status"): ("patch",),
    ("opamp.dev", "opampagentconfigs"): ("get", "list", "watch"),
    ("opamp.dev", "opampagentconfigs/status"): ("patch",),
    ("", "secrets"): ("get",),  # connection settings headers, by name only
    ("", "events"): ("create", "patch"),
    ("events.k8s.io", "events"): ("create", "patch"),
    ("coordination.k8s.io", "leases"): ("get", "list", "create", "update", "delete"),
}
CLUSTER_RULES: dict[tuple[str, str], tuple[str, ...]] = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): ("get", "list", "watch"),
    ("", "namespaces"): ("list", "watch"),
    ("authentication.k8s.io", "tokenreviews"): ("create",),
    ("authorization.k8s.io", "subjectaccessreviews"): ("create",),
    ("", "pods"): ("get", "list", "watch"),  # pod linking: agents run in any namespace
}


# -- rendering and kubectl ---------------------------------------------------------------


def crds_of(objects: Iterable[Obj]) -> list[Obj]:
    return [o for o in objects if o["kind"] == "CustomResourceDefinition"]


def storage_version(crd: Obj) -> str:
    return str(next(v["name"] for v in crd["spec"]["versions"] if v["storage"]))


@pytest.fixture(scope="module")
def base() -> list[Obj]:
    return render(MANIFESTS)


@pytest.fixture(scope="module")
def installed(kubeconfig: Path, base: list[Obj]) -> list[Obj]:
    """The base's Namespace and CRDs, created for real (namespaced objects need both)."""
    crds = crds_of(base)
    server_apply(kubeconfig, [one(base, "Namespace"), *crds], dry_run=False)
    names = [f"crd/{crd['metadata']['name']}" for crd in crds]
    kubectl(kubeconfig, "wait", "--for=condition=Established", "--timeout=60s", *names)
    return base


# -- the manifests on their own ----------------------------------------------------------


def test_crd_copies_match_the_source() -> None:
    """manifests/crds/ mirrors crds/ byte for byte, and the base lists every CRD."""
    sources = {p.name: p.read_bytes() for p in (ROOT / "crds").glob("*.yaml")}
    copies = {p.name: p.read_bytes() for p in (MANIFESTS / "crds").glob("*.yaml")}
    assert sources, "crds/ holds no CRD"
    stale = sorted(n for n in sources.keys() | copies.keys() if sources.get(n) != copies.get(n))
    assert not stale, f"manifests/crds/ out of date for {stale}: cp crds/*.yaml manifests/crds/"
    listed = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())["resources"]
    missing = sorted(f"crds/{name}" for name in sources if f"crds/{name}" not in listed)
    assert not missing, f"add {missing} to manifests/kustomization.yaml resources"


def test_base_holds_the_operator_and_no_secret(base: list[Obj]) -> None:
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in base)
    for expected in [
        ("Namespace", NAMESPACE),
        ("CustomResourceDefinition", "opampagents.opamp.dev"),
        ("ServiceAccount", "opamp-operator"),
        ("Role", "opamp-operator"),
        ("RoleBinding", "opamp-operator"),
        ("ClusterRole", "opamp-operator"),
        ("ClusterRoleBinding", "opamp-operator"),
        ("Deployment", "opamp-operator"),
        ("Service", "opamp-operator"),
        ("PodDisruptionBudget", "opamp-operator"),
        ("FlowSchema", "opamp-operator-leases"),
        ("PriorityLevelConfiguration", "opamp-operator-leases"),
    ]:
        assert expected in kinds
    assert not [o for o in base if o["kind"] == "Secret"], "a Secret in the base would be in git"
    for obj in base:
        if obj["kind"] not in {"Namespace", "CustomResourceDefinition"} and not cluster_scoped(obj):
            assert obj["metadata"].get("namespace") == NAMESPACE, obj["metadata"]["name"]
    # The FlowSchema names the ServiceAccount and namespace by hand (kustomize cannot).
    (rule,) = one(base, "FlowSchema")["spec"]["rules"]
    (subject,) = rule["subjects"]
    assert subject["serviceAccount"] == {"name": "opamp-operator", "namespace": NAMESPACE}
    assert [r["namespaces"] for r in rule["resourceRules"]] == [[NAMESPACE]]


def test_deployment_matches_the_operators_options(base: list[Obj]) -> None:
    """Env names are real options; ports and probes are where the operator listens."""
    pod = one(base, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    known = {option.env for option in OPTIONS}
    unknown = sorted(n for n in env if n.startswith("OPAMP_") and n not in known)
    assert not unknown, f"not an option of operator/opamp_operator/options.py: {unknown}"
    assert env["OPAMP_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    dsn = env["OPAMP_DATABASE_DSN"]["valueFrom"]["secretKeyRef"]
    assert (dsn["name"], dsn["key"]) == ("opamp-operator-db", "dsn")

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"opamp": ListenerSettings().port, "http-api": ApiSettings().port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-api"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-api"}
    service = one(base, "Service")
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(ports)

    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsUser"] == 65532
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == mounts["/tmp"])
    assert pod["terminationGracePeriodSeconds"] == 30
    assert pod["serviceAccountName"] == one(base, "ServiceAccount")["metadata"]["name"]


# -- the server accepts them -------------------------------------------------------------


def test_server_accepts_every_object_without_warnings(
    kubeconfig: Path, installed: list[Obj], tmp_path: Path
) -> None:
    """Dry run of the base, the demo extras and the agent-tokens patch: no error, no warning.

    The namespace warns on "restricted" Pod Security violations, so a pod template that
    breaks the standard shows up here as a warning.
    """
    overlay = tmp_path / "agent-tokens-overlay"
    overlay.mkdir()
    shutil.copy(MANIFESTS / "examples" / "agent-tokens-patch.yaml", overlay)
    kustomization = {
        "resources": [os.path.relpath(MANIFESTS, overlay)],
        "patches": [{"path": "agent-tokens-patch.yaml"}],
    }
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    with_tokens = render(overlay)
    tokens_env = one(with_tokens, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert "OPAMP_AGENT_TOKENS_FILE" in {e["name"] for e in tokens_env["env"]}

    examples = render(MANIFESTS / "examples")
    tokens_secret = yaml.safe_load((MANIFESTS / "examples" / "agent-tokens.yaml").read_text())
    for objects in (installed, examples, [*with_tokens, tokens_secret]):
        warnings = server_apply(kubeconfig, objects, dry_run=True)
        assert "Warning" not in warnings, warnings


def test_pods_pass_the_restricted_pod_security_standard(
    kube_api: k8s.ApiClient, installed: list[Obj]
) -> None:
    """The namespace enforces "restricted": the pods are admitted, a weakened one is not."""
    core = k8s.CoreV1Api(kube_api)
    everything = [*installed, *render(MANIFESTS / "examples")]
    deployments = [o for o in everything if o["kind"] == "Deployment"]
    assert len(deployments) == 3  # the operator, the demo database and the demo collector
    for deployment in deployments:
        assert_restricted_admission(core, pod_from(deployment, NAMESPACE))


# -- monitoring --------------------------------------------------------------------------


def _exported_metric_names() -> set[str]:
    """Sample names the operator's /metrics can carry (counters end in _total, etc.)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
    }
    families = [*REGISTRY.collect(), *FleetCollector(lambda: {}).collect()]
    return {f.name + suffix for f in families for suffix in suffixes.get(f.type, ("",))}


def _ksm_metric_names(config: Obj) -> set[str]:
    names = set()
    for resource in config["spec"]["resources"]:
        prefix = resource["metricNamePrefix"]
        names |= {f"{prefix}_{metric['name']}" for metric in resource["metrics"]}
    return names


def _ksm_config() -> Obj:
    path = MANIFESTS / "monitoring" / "kube-state-metrics-opampagents.yaml"
    loaded: Obj = yaml.safe_load(path.read_text())
    return loaded


def test_alerts_use_metrics_that_exist(base: list[Obj]) -> None:
    monitoring = render(MANIFESTS / "monitoring")
    rule = one(monitoring, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    known = _exported_metric_names() | _ksm_metric_names(_ksm_config())
    alerts = [r for group in rule["spec"]["groups"] for r in group["rules"]]
    # No alert on Offline agents: a graceful scale-down leaves them Offline (see the file).
    expected_alerts = {
        "OpAMPAgentsInError",
        "OpAMPHeartbeatsMissed",
        "OpAMPOperatorDown",
        "OpAMPOperatorAbsent",
        "OpAMPOperatorReplicasMissing",
        "OpAMPDatabaseErrors",
        "OpAMPKubeWriteErrors",
    }
    assert {a["alert"] for a in alerts} == expected_alerts
    for alert in alerts:
        used = set(re.findall(r"\b(opamp_[a-z0-9_]+)", alert["expr"]))
        assert used <= known, f"{alert['alert']} uses unknown metrics {sorted(used - known)}"
        assert re.fullmatch(r"\d+[smh]", alert["for"]), alert["alert"]
        assert alert["labels"]["severity"] in {"warning", "critical"}
        assert alert["annotations"]["summary"]

    # The ServiceMonitor scrapes the operator's Service, on its API port, at /metrics.
    monitor = one(monitoring, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    service = one(base, "Service")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert service["metadata"]["namespace"] in monitor["spec"]["namespaceSelector"]["matchNames"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    # Alerts select job="opamp-operator": the ServiceMonitor takes the job from this label.
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "opamp-operator"


def test_kube_state_metrics_config_matches_the_crd(base: list[Obj]) -> None:
    config = _ksm_config()
    assert config["kind"] == "CustomResourceStateMetrics"
    (resource,) = config["spec"]["resources"]
    crd = one(base, "CustomResourceDefinition", "opampagents.opamp.dev")
    gvk = resource["groupVersionKind"]
    assert gvk == {
        "group": crd["spec"]["group"],
        "version": storage_version(crd),
        "kind": crd["spec"]["names"]["kind"],
    }
    version = next(v for v in crd["spec"]["versions"] if v["name"] == gvk["version"])
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    metrics = {m["name"]: m for m in resource["metrics"] if m["each"]["type"] == "StateSet"}
    phase = metrics["status_phase"]["each"]["stateSet"]
    assert phase["path"] == ["status", "phase"]
    assert phase["list"] == status["phase"]["enum"]

    condition_item = status["conditions"]["items"]["properties"]
    assert {"type", "status"} <= condition_item.keys()
    conditions = {}
    for metric in resource["metrics"]:
        if metric["name"] == "status_condition":
            path = metric["each"]["gauge"]["path"]
            assert path[:2] == ["status", "conditions"] and path[3] == "status"
            conditions[metric["commonLabels"]["condition"]] = path[2]
    assert conditions == {name: f"[type={name}]" for name in ("Ready", "Connected", "Healthy")}


# -- RBAC --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenClient:
    """Plain HTTPS calls to the API server, authenticated by nothing but a bearer token."""

    server: str
    context: ssl.SSLContext
    token: str

    def call(self, method: str, path: str, body: Obj | None = None) -> tuple[int, Obj]:
        """One request; 429 (a new CRD's storage still initializing) is retried, as
        client-go does, for at most RETRY_429_SECONDS."""
        deadline = time.monotonic() + RETRY_429_SECONDS
        while True:
            status, answer = self._once(method, path, body)
            if status != 429 or time.monotonic() > deadline:
                return status, answer
            time.sleep(float(answer.get("details", {}).get("retryAfterSeconds", 1)))

    def priority_level(self, path: str) -> str:
        """The UID of the API Priority and Fairness level the server ran a GET of `path` at
        (it says so in a header, whatever the answer)."""
        _, _, headers = self._send("GET", path, None)
        return str(headers.get("X-Kubernetes-PF-PriorityLevel-UID", ""))

    def _send(self, method: str, path: str, body: Obj | None) -> tuple[int, bytes, Message]:
        content_type = "application/merge-patch+json" if method == "PATCH" else "application/json"
        request = urllib.request.Request(
            self.server + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": content_type},
        )
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=30) as response:
                return int(response.status), response.read(), response.headers
        except urllib.error.HTTPError as error:
            return error.code, error.read(), error.headers

    def _once(self, method: str, path: str, body: Obj | None) -> tuple[int, Obj]:
        status, raw, _ = self._send(method, path, body)
        text = raw.decode()
        # A watch answers with a stream of events, one JSON object per line.
        first = text.splitlines()[0] if text.strip() else "{}"
        return status, json.loads(first)

    def expect(self, status: int, method: str, path: str, body: Obj | None = None) -> Obj:
        got, answer = self.call(method, path, body)
        assert got == status, f"{method} {path}: expected {status}, got {got}: {answer}"
        return answer


def _client(kube_api: k8s.ApiClient, token: str) -> TokenClient:
    context = ssl.create_default_context(cafile=kube_api.configuration.ssl_ca_cert)
    return TokenClient(kube_api.configuration.host, context, token)


def _granted(client: TokenClient, namespace: str) -> tuple[set[Rule], set[tuple[str, str]]]:
    """What the token's holder may do in `namespace`, by SelfSubjectRulesReview."""
    review = client.expect(
        201,
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
        {"spec": {"namespace": namespace}},
    )
    assert not review["status"].get("incomplete"), review["status"]
    rules: set[Rule] = set()
    for rule in review["status"]["resourceRules"]:
        assert not rule.get("resourceNames"), rule
        for group in rule.get("apiGroups", []):
            for resource in rule["resources"]:
                rules |= {(group, resource, verb) for verb in rule["verbs"]}
    non_resource = {
        (url, verb)
        for rule in review["status"]["nonResourceRules"]
        for url in rule["nonResourceURLs"]
        for verb in rule["verbs"]
    }
    return rules, non_resource


def _expand(table: dict[tuple[str, str], tuple[str, ...]]) -> set[Rule]:
    return {(group, resource, verb) for (group, resource), verbs in table.items() for verb in verbs}


def _create_namespace(kube_api: k8s.ApiClient, name: str) -> str:
    namespace = k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name))
    k8s.CoreV1Api(kube_api).create_namespace(namespace)
    return name


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Tokens:
    """Clients of the manifests' ServiceAccount (moved to `namespace`) and of a bystander
    ServiceAccount with no bindings at all."""

    operator: TokenClient
    bystander: TokenClient
    namespace: str
    version: str  # the OpAMPAgent CRD's storage version

    @property
    def agents(self) -> str:
        return f"/apis/opamp.dev/{self.version}/namespaces/{self.namespace}/opampagents"

    def config(self, name: str) -> Obj:
        return {
            "apiVersion": f"opamp.dev/{self.version}",
            "kind": "OpAMPAgentConfig",
            "metadata": {"name": name},
            "spec": {"selector": {}, "remoteConfig": {"a": {"body": "x"}}},
        }

    def agent(self, name: str) -> Obj:
        return {
            "apiVersion": f"opamp.dev/{self.version}",
            "kind": "OpAMPAgent",
            "metadata": {"name": name},
            "spec": {},
        }


@pytest.fixture
def tokens(
    kube_api: k8s.ApiClient, kubeconfig: Path, installed: list[Obj], namespace: str
) -> Iterator[Tokens]:
    objects = retarget(installed, namespace)
    bystander = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": "bystander", "namespace": namespace},
    }
    server_apply(kubeconfig, [*objects, bystander], dry_run=False)
    account = one(objects, "ServiceAccount")["metadata"]["name"]
    crd = one(installed, "CustomResourceDefinition", "opampagents.opamp.dev")
    try:
        granted = Tokens(
            operator=_client(kube_api, token_for(kube_api, namespace, account)),
            bystander=_client(kube_api, token_for(kube_api, namespace, "bystander")),
            namespace=namespace,
            version=storage_version(crd),
        )
        _wait_for_bindings(granted.operator, granted.agents)
        yield granted
    finally:
        for obj in objects:
            if cluster_scoped(obj):
                kubectl(kubeconfig, "delete", obj["kind"], obj["metadata"]["name"], check=False)


def _wait_for_bindings(client: TokenClient, path: str) -> None:
    # The authorizer learns of new bindings through its informers: a moment, not instantly.
    answers: list[tuple[int, Obj]] = []

    def allowed() -> bool:
        answers.append(client.call("GET", path))
        return answers[-1][0] != 403

    eventually_sync(f"GET {path} allowed", allowed, within=RBAC_PROPAGATION_SECONDS, every=0.2)
    assert answers[-1][0] == 200, f"GET {path}: {answers[-1]}"


def test_rbac_grants_exactly_the_documented_rules(tokens: Tokens, kube_api: k8s.ApiClient) -> None:
    """Everything granted beyond what any ServiceAccount gets is the table, in the operator's
    namespace; elsewhere only its cluster-wide rules."""
    other = _create_namespace(kube_api, f"{tokens.namespace}-other")
    for ns, expected in [
        (tokens.namespace, _expand(NAMESPACED_RULES) | _expand(CLUSTER_RULES)),
        (other, _expand(CLUSTER_RULES)),
    ]:
        rules, non_resource = _granted(tokens.operator, ns)
        baseline, baseline_non_resource = _granted(tokens.bystander, ns)
        assert rules - baseline == expected, f"in {ns}"
        assert non_resource == baseline_non_resource


def test_operator_token_does_what_the_operator_does(
    tokens: Tokens, kube_api: k8s.ApiClient
) -> None:
    operator, bystander, namespace = tokens.operator, tokens.bystander, tokens.namespace
    agents, version = tokens.agents, tokens.version

    # The CR mirror: create, read, watch, patch, write status, delete.
    operator.expect(201, "POST", agents, tokens.agent("agent-rbac"))
    operator.expect(200, "GET", f"{agents}/agent-rbac")
    operator.expect(200, "GET", f"{agents}?watch=1&timeoutSeconds=1")
    operator.expect(200, "PATCH", f"{agents}/agent-rbac", {"metadata": {"labels": {"a": "b"}}})
    condition = {
        "type": "Connected",
        "status": "True",
        "reason": "Connected",
        "message": "test",
        "lastTransitionTime": _now()[:19] + "Z",
    }
    status = {"status": {"phase": "Online", "conditions": [condition]}}
    patched = operator.expect(200, "PATCH", f"{agents}/agent-rbac/status", status)
    assert patched["status"]["phase"] == "Online"
    operator.expect(200, "DELETE", f"{agents}/agent-rbac")

    # Fleet remote config: written by people (here the admin); read, watched and given a
    # status by the operator.
    configs = agents.replace("/opampagents", "/opampagentconfigs")
    k8s.CustomObjectsApi(kube_api).create_namespaced_custom_object(
        "opamp.dev", version, namespace, "opampagentconfigs", tokens.config("config-rbac")
    )
    operator.expect(200, "GET", configs)
    operator.expect(200, "GET", f"{configs}?watch=1&timeoutSeconds=1")
    counted = {"status": {"matchedAgents": 0}}
    operator.expect(200, "PATCH", f"{configs}/config-rbac/status", counted)

    # Events, in both APIs, and aggregating a repeat with a patch.
    regarding = {
        "apiVersion": f"opamp.dev/{version}",
        "kind": "OpAMPAgent",
        "name": "agent-rbac",
        "namespace": namespace,
    }
    core_events = f"/api/v1/namespaces/{namespace}/events"
    operator.expect(
        201,
        "POST",
        core_events,
        {
            "metadata": {"name": "agent-rbac.1"},
            "involvedObject": regarding,
            "reason": "Connected",
            "message": "test",
            "type": "Normal",
            "count": 1,
        },
    )
    operator.expect(200, "PATCH", f"{core_events}/agent-rbac.1", {"count": 2})
    new_events = f"/apis/events.k8s.io/v1/namespaces/{namespace}/events"
    operator.expect(
        201,
        "POST",
        new_events,
        {
            "metadata": {"name": "agent-rbac.2"},
            "regarding": regarding,
            "eventTime": _now(),
            "reportingController": "opamp.dev/opamp-operator",
            "reportingInstance": "test",
            "action": "Connect",
            "reason": "Connected",
            "note": "test",
            "type": "Normal",
        },
    )
    series = {"series": {"count": 2, "lastObservedTime": _now()}}
    operator.expect(200, "PATCH", f"{new_events}/agent-rbac.2", series)

    # REST API auth: who holds a token, and may they do something.
    reviewed = operator.expect(
        201,
        "POST",
        "/apis/authentication.k8s.io/v1/tokenreviews",
        {"spec": {"token": bystander.token}},
    )
    assert reviewed["status"]["user"]["username"].endswith(f":{namespace}:bystander")
    attributes = {
        "namespace": namespace,
        "verb": "get",
        "group": "opamp.dev",
        "resource": "opampagents",
    }
    access = operator.expect(
        201,
        "POST",
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        {
            "spec": {
                "user": reviewed["status"]["user"]["username"],
                "resourceAttributes": attributes,
            }
        },
    )
    assert access["status"]["allowed"] is False

    # Kopf: CRD discovery; replica Leases.
    crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    operator.expect(200, "GET", crds)
    operator.expect(200, "GET", f"{crds}/opampagents.opamp.dev")
    operator.expect(200, "GET", f"{crds}?watch=1&timeoutSeconds=1")
    leases = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
    lease = operator.expect(
        201,
        "POST",
        leases,
        {"metadata": {"name": "opamp-operator"}, "spec": {"holderIdentity": "replica-a"}},
    )
    lease["spec"]["holderIdentity"] = "replica-b"
    lease = operator.expect(200, "PUT", f"{leases}/opamp-operator", lease)
    operator.expect(200, "GET", f"{leases}/opamp-operator")
    operator.expect(200, "GET", leases)
    operator.expect(200, "DELETE", f"{leases}/opamp-operator")

    # Pod linking: read Pods where agents run (any namespace): get, list, watch.
    elsewhere = _create_namespace(kube_api, f"{namespace}-pods")
    pods = f"/api/v1/namespaces/{elsewhere}/pods"
    operator.expect(200, "GET", pods)
    operator.expect(200, "GET", f"{pods}?watch=1&timeoutSeconds=1")
    operator.expect(404, "GET", f"{pods}/collector-0")  # allowed; there is no such Pod


def test_lease_requests_run_at_a_priority_level_of_their_own(
    tokens: Tokens, kube_api: k8s.ApiClient
) -> None:
    """manifests/flowcontrol.yaml: the operator's Lease requests, and nothing else of it or
    of anyone else, at their own APF level (so its CR writes cannot queue them)."""
    name = f"opamp-operator-leases-{tokens.namespace}"
    level = k8s.FlowcontrolApiserverV1Api(kube_api).read_priority_level_configuration(name)
    leases = f"/apis/coordination.k8s.io/v1/namespaces/{tokens.namespace}/leases"

    def level_of(client: TokenClient, path: str) -> str:
        found = client.priority_level(path)
        assert found, f"no priority level header for GET {path}"
        return found

    # The server reads new FlowSchemas through its informers: a moment, not instantly.
    eventually_sync(
        "Lease requests classified at the operator's level",
        lambda: level_of(tokens.operator, leases) == level.metadata.uid,
        within=RBAC_PROPAGATION_SECONDS, every=0.2,
    )  # fmt: skip
    assert level_of(tokens.operator, f"{leases}/some-replica") == level.metadata.uid
    assert level_of(tokens.operator, tokens.agents) != level.metadata.uid  # CR traffic
    assert level_of(tokens.bystander, leases) != level.metadata.uid  # someone else's


def test_operator_token_is_refused_everything_else(tokens: Tokens, kube_api: k8s.ApiClient) -> None:
    operator, namespace, version = tokens.operator, tokens.namespace, tokens.version
    agents, agent = tokens.agents, tokens.agent("agent-rbac")
    crd = one(render(MANIFESTS), "CustomResourceDefinition", "opampagents.opamp.dev")
    other = _create_namespace(kube_api, f"{namespace}-other")
    pod = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}
    binding = {
        "metadata": {"name": "b"},
        "subjects": [],
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "cluster-admin",
        },
    }
    # Mutations carry dryRun=All: authorization comes first, so a 403 proves the point, and
    # should the RBAC ever be too wide, nothing is actually changed.
    for method, path, body in [
        ("GET", f"/api/v1/namespaces/{namespace}/secrets", None),
        ("POST", f"/api/v1/namespaces/{namespace}/pods?dryRun=All", pod),
        ("DELETE", f"/api/v1/namespaces/{other}/pods/p?dryRun=All", None),
        ("DELETE", f"/api/v1/namespaces/{other}?dryRun=All", None),
        ("GET", f"/apis/opamp.dev/{version}/namespaces/{other}/opampagents", None),
        ("POST", f"/apis/opamp.dev/{version}/namespaces/{other}/opampagents?dryRun=All", agent),
        ("PUT", f"{agents}/agent-rbac?dryRun=All", agent),
        (
            "POST",
            agents.replace("/opampagents", "/opampagentconfigs") + "?dryRun=All",
            tokens.config("config-rbac"),
        ),
        # Leases: only in the operator's namespace, and never watched.
        (
            "DELETE",
            f"/apis/coordination.k8s.io/v1/namespaces/{other}/leases/x?dryRun=All",
            None,
        ),
        ("GET", f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases?watch=1", None),
        # Kopf runs standalone: no peering.
        ("GET", f"/apis/kopf.dev/v1/namespaces/{namespace}/kopfpeerings", None),
        ("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions?dryRun=All", crd),
        (
            "POST",
            f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/rolebindings?dryRun=All",
            binding,
        ),
    ]:
        operator.expect(403, method, path, body)


def test_kopf_runs_as_the_operator_runs_it_with_nothing_but_the_operator_token(
    tokens: Tokens, kube_api: k8s.ApiClient, kubeconfig: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Kopf as the operator runs it (kube/wiring/kopfsetup.py) under the RBAC: it starts,
    watches CRDs and namespaces, is refused nothing, and leaves alone the KopfPeering CRD
    and object an older release left (left to detect peering, Kopf would join them)."""
    namespace = tokens.namespace
    leave_kopf_peering(kubeconfig, namespace)
    configuration = k8s.Configuration()
    configuration.host = tokens.operator.server
    configuration.ssl_ca_cert = kube_api.configuration.ssl_ca_cert
    configuration.api_key = {"authorization": f"Bearer {tokens.operator.token}"}
    registry = build_registry(Credentials.from_configuration(configuration))
    ready, stop = threading.Event(), threading.Event()
    run = run_kopf(registry, namespace, stop_flag=stop, ready_flag=ready)
    # In a thread with a loop of its own: Kopf installs signal handlers on a main-thread loop.
    thread = threading.Thread(target=asyncio.run, args=(run,), daemon=True)

    def watching(resource: str) -> bool:
        started = f"Starting the watch-stream for {resource}"
        return any(started in record.getMessage() for record in caplog.records)

    with caplog.at_level(logging.DEBUG, logger="kopf"):
        thread.start()
        try:
            assert ready.wait(KOPF_TIMEOUT_SECONDS), "Kopf never became ready"
            for resource in ("customresourcedefinitions", "namespaces"):
                eventually_sync(
                    f"Kopf watches {resource}",
                    functools.partial(watching, resource),
                    within=KOPF_TIMEOUT_SECONDS,
                    every=0.2,
                )
        finally:
            stop.set()
            thread.join(KOPF_TIMEOUT_SECONDS)
    assert not thread.is_alive(), "Kopf did not stop"

    messages = [record.getMessage() for record in caplog.records]
    refused = [
        message
        for record, message in zip(caplog.records, messages, strict=True)
        if record.levelno >= logging.ERROR or re.search(r"\b403\b|[Ff]orbidden", message)
    ]
    assert not refused, refused
    peering = [message for message in messages if re.search(r"[Pp]eering|kopfpeerings", message)]
    assert not peering, peering
