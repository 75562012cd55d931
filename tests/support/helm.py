"""`helm` (built from its Go module by the test bed) on the chart in charts/opamp-operator."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from opamp_operator.testbed.binaries import ensure_helm

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "opamp-operator"
RELEASE = "opamp-operator"
NAMESPACE = "opamp-system"
HELM_TIMEOUT_SECONDS = 120
# Labels Helm charts carry for Helm's bookkeeping, which the kustomize base has no use for.
HELM_ONLY_LABELS = (
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
)

Obj = dict[str, Any]


def helm(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    """Run helm with its config, cache and data under `home` (never the user's)."""
    env = {
        # client-go keeps its discovery cache under $HOME/.kube (without HOME: ./.kube).
        "HOME": str(home),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_DATA_HOME": str(home / "data"),
        "PATH": "/usr/bin:/bin",
    }
    return subprocess.run(
        [str(ensure_helm()), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=HELM_TIMEOUT_SECONDS,
    )


def template(home: Path, values: Obj | None = None) -> list[Obj]:
    """`helm template` of the chart (CRDs included) as release opamp-operator in opamp-system."""
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--include-crds"]
    if values is not None:
        path = home / "values.json"
        path.write_text(json.dumps(values))
        args += ["--values", str(path)]
    result = helm(*args, home=home)
    assert result.returncode == 0, f"helm template failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def without_helm_labels(obj: Obj) -> Obj:
    """`obj` with Helm's bookkeeping labels removed (the base does not carry them)."""
    labels = obj["metadata"].get("labels", {})
    for name in HELM_ONLY_LABELS:
        labels.pop(name, None)
    return obj
