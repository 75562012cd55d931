"""Build the test bed's Go binaries from their Go modules and cache them.

Release downloads are not always reachable, but the Go module proxy is: we
compile kube-apiserver from `k8s.io/kubernetes` (its staging modules replaced by
their published `v0.x` twins), etcd from `go.etcd.io/etcd/server/v3`, and the
chart and rule checkers `helm` (helm.sh/helm/v4) and `promtool` (Prometheus
3.x, published as the module github.com/prometheus/prometheus v0.3XX.Y).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

KUBERNETES_VERSION = "v1.36.3"
ETCD_VERSION = "v3.6.16"
HELM_VERSION = "v4.3.2"
# Prometheus 3.16.0: its Go module is tagged v0.<major><minor>.<patch>.
PROMETHEUS_MODULE_VERSION = "v0.316.0"

# Every k8s.io module that k8s.io/kubernetes replaces with ./staging/src/...;
# each is published on its own as v0.<minor>.<patch>.
STAGING_MODULES = (
    "api",
    "apiextensions-apiserver",
    "apimachinery",
    "apiserver",
    "cli-runtime",
    "client-go",
    "cloud-provider",
    "cluster-bootstrap",
    "code-generator",
    "component-base",
    "component-helpers",
    "controller-manager",
    "cri-api",
    "cri-client",
    "cri-streaming",
    "csi-translation-lib",
    "dynamic-resource-allocation",
    "endpointslice",
    "externaljwt",
    "kms",
    "kube-aggregator",
    "kube-controller-manager",
    "kube-proxy",
    "kube-scheduler",
    "kubectl",
    "kubelet",
    "metrics",
    "mount-utils",
    "pod-security-admission",
    "sample-apiserver",
    "sample-controller",
    "streaming",
)


class BinaryBuildError(RuntimeError):
    """A control-plane binary could not be built; the message says what is missing."""


@dataclass(frozen=True)
class ControlPlaneBinaries:
    etcd: Path
    kube_apiserver: Path


def cache_dir() -> Path:
    """Where built binaries live: outside the repo, shared by every checkout."""
    root = os.environ.get("OPAMP_OPERATOR_CACHE") or os.environ.get("XDG_CACHE_HOME")
    base = Path(root) if root else Path.home() / ".cache"
    if not os.environ.get("OPAMP_OPERATOR_CACHE"):
        base = base / "opamp-operator"
    return base


def staging_version(kubernetes_version: str) -> str:
    """k8s.io/kubernetes v1.M.P publishes its staging modules as v0.M.P."""
    major_minor_patch = kubernetes_version.removeprefix("v").split(".")
    return "v0." + ".".join(major_minor_patch[1:])


def kube_apiserver_go_mod(kubernetes_version: str) -> str:
    twin = staging_version(kubernetes_version)
    replaces = "\n".join(f"\tk8s.io/{m} => k8s.io/{m} {twin}" for m in STAGING_MODULES)
    return (
        "module opamp-operator.local/kube-apiserver-build\n\n"
        "go 1.26\n\n"
        f"require k8s.io/kubernetes {kubernetes_version}\n\n"
        f"replace (\n{replaces}\n)\n"
    )


def single_module_go_mod(name: str, module: str, version: str) -> str:
    """A go.mod that requires one module as published (no replaces needed)."""
    return f"module opamp-operator.local/{name}-build\n\ngo 1.26\n\nrequire {module} {version}\n"


def version_ldflags(kubernetes_version: str) -> str:
    """Linker flags that stamp the version `go build` alone leaves as v0.0.0-master: what
    Kubernetes' own build (hack/lib/version.sh) sets, so /version answers like a release
    and version checks against the test bed (Helm's kubeVersion) see a real version."""
    major, minor = kubernetes_version.removeprefix("v").split(".")[:2]
    stamped = {"gitVersion": kubernetes_version, "gitMajor": major, "gitMinor": minor,
               "gitTreeState": "clean"}  # fmt: skip
    flags = [
        f"-X {package}.{key}={value}"
        for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
        for key, value in stamped.items()
    ]
    return " ".join(["-s", "-w", *flags])


def etcd_go_mod(etcd_version: str) -> str:
    return single_module_go_mod("etcd", "go.etcd.io/etcd/server/v3", etcd_version)


_TOOLS_GO = """//go:build tools

package tools

import _ "{package}"
"""


def ensure_binaries(progress: bool = True) -> ControlPlaneBinaries:
    """Return cached binaries, building any that are missing (minutes on first run)."""
    out = cache_dir() / "bin"
    etcd = out / f"etcd-{ETCD_VERSION}"
    # "-stamped": binaries cached before the version stamp answer v0.0.0-master; a new name
    # makes every machine rebuild once instead of keeping an unstamped one.
    apiserver = out / f"kube-apiserver-{KUBERNETES_VERSION}-stamped"
    if not etcd.exists():
        _build(
            name="etcd",
            version=ETCD_VERSION,
            go_mod=etcd_go_mod(ETCD_VERSION),
            package="go.etcd.io/etcd/server/v3",
            target=etcd,
            progress=progress,
        )
    if not apiserver.exists():
        _build(
            name="kube-apiserver",
            version=KUBERNETES_VERSION,
            go_mod=kube_apiserver_go_mod(KUBERNETES_VERSION),
            package="k8s.io/kubernetes/cmd/kube-apiserver",
            target=apiserver,
            progress=progress,
            ldflags=version_ldflags(KUBERNETES_VERSION),
        )
    return ControlPlaneBinaries(etcd=etcd, kube_apiserver=apiserver)


def ensure_helm(progress: bool = True) -> Path:
    """Return the cached `helm`, building it on first use (minutes on first run)."""
    return _ensure_single_module(
        "helm", "helm.sh/helm/v4", HELM_VERSION, "helm.sh/helm/v4/cmd/helm", progress
    )


def ensure_promtool(progress: bool = True) -> Path:
    """Return the cached `promtool`, building it on first use (minutes on first run)."""
    return _ensure_single_module(
        "promtool",
        "github.com/prometheus/prometheus",
        PROMETHEUS_MODULE_VERSION,
        "github.com/prometheus/prometheus/cmd/promtool",
        progress,
    )


def _ensure_single_module(
    name: str, module: str, version: str, package: str, progress: bool
) -> Path:
    target = cache_dir() / "bin" / f"{name}-{version}"
    if not target.exists():
        _build(
            name=name,
            version=version,
            go_mod=single_module_go_mod(name, module, version),
            package=package,
            target=target,
            progress=progress,
        )
    return target


def _say(progress: bool, message: str) -> None:
    if progress:
        print(f"[opamp-operator testbed] {message}", file=sys.stderr, flush=True)


def _build(
    *,
    name: str,
    version: str,
    go_mod: str,
    package: str,
    target: Path,
    progress: bool,
    ldflags: str = "-s -w",
) -> None:
    go = shutil.which("go")
    if go is None:
        raise BinaryBuildError(
            f"{name} {version} is not cached at {target} and `go` is not on PATH; "
            "install Go >= 1.26 (it builds the binary from the Go module proxy)."
        )
    workdir = cache_dir() / "build" / target.name
    workdir.mkdir(parents=True, exist_ok=True)
    with _build_lock(workdir, name, progress):
        if target.exists():  # another process built it while we waited
            return
        (workdir / "go.mod").write_text(go_mod)
        (workdir / "tools.go").write_text(_TOOLS_GO.format(package=package))
        target.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod"}
        started = time.monotonic()
        _say(
            progress,
            f"building {name} {version} from its Go module (first run only; several minutes)",
        )
        _say(progress, f"  resolving modules in {workdir}")
        _run([go, "mod", "tidy"], workdir, env, name)
        _say(progress, f"  compiling {package}")
        partial = target.with_suffix(".partial")
        _run(
            [go, "build", "-trimpath", f"-ldflags={ldflags}", "-o", str(partial), package],
            workdir,
            env,
            name,
        )
        partial.replace(target)
        _say(progress, f"  {name} ready at {target} ({time.monotonic() - started:.0f}s)")


@contextlib.contextmanager
def _build_lock(workdir: Path, name: str, progress: bool) -> Iterator[None]:
    """Hold `workdir`'s lock: two first runs at once (two test sessions, a benchmark and a
    test) would otherwise write the same go.mod and `.partial` binary."""
    with (workdir / ".lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(progress, f"waiting for another process that is building {name}")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _run(cmd: list[str], cwd: Path, env: dict[str, str], name: str) -> None:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise BinaryBuildError(
            f"building {name} failed: `{' '.join(cmd)}` in {cwd} exited "
            f"{result.returncode}:\n{result.stderr[-4000:]}"
        )


if __name__ == "__main__":
    found = ensure_binaries()
    print(found.etcd)
    print(found.kube_apiserver)
    print(ensure_helm())
    print(ensure_promtool())
