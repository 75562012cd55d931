"""`opamp-operator dev`: the operator on an embedded default, nothing to install by hand.

Starts a local etcd + kube-apiserver and PostgreSQL on 127.0.0.1 (building the control-plane
binaries on first use), installs the CRDs, and runs the operator against them. It never
touches a cluster that the user did not name: the kubeconfig it uses is the one it wrote.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tempfile
from pathlib import Path

from .config import Settings
from .testbed.binaries import ensure_binaries
from .testbed.controlplane import ControlPlane
from .testbed.postgres import PostgresServer

REPO_ROOT = Path(__file__).resolve().parents[2]


def _say(message: str) -> None:
    print(f"[opamp-operator dev] {message}", file=sys.stderr, flush=True)


def install_crds(kubeconfig: Path, namespace: str) -> None:
    kubectl = ["kubectl", "--kubeconfig", str(kubeconfig)]
    subprocess.run([*kubectl, "apply", "--server-side", "-f", str(REPO_ROOT / "crds")],
                   check=True, capture_output=True)  # fmt: skip
    subprocess.run([*kubectl, "wait", "--for=condition=Established", "--timeout=60s",
                    "-f", str(REPO_ROOT / "crds")], check=True, capture_output=True)  # fmt: skip
    created = subprocess.run([*kubectl, "create", "namespace", namespace],
                             capture_output=True, text=True)  # fmt: skip
    if created.returncode != 0 and "AlreadyExists" not in created.stderr:
        raise RuntimeError(f"creating namespace {namespace} failed: {created.stderr.strip()}")


def dev_settings(base: Settings, kubeconfig: Path, dsn: str) -> Settings:
    """Loopback everywhere, and REST auth off: this is local development on 127.0.0.1."""
    listener = dataclasses.replace(base.listener, host="127.0.0.1")
    api = dataclasses.replace(base.api, host="127.0.0.1", auth_enabled=False)
    store = dataclasses.replace(base.store, dsn=dsn)
    kube = dataclasses.replace(base.kube, kubeconfig=kubeconfig)
    return dataclasses.replace(base, listener=listener, api=api, store=store, kube=kube)


def next_steps(settings: Settings, kubeconfig: Path) -> str:
    port, api = settings.listener.port, settings.api.port
    return "\n".join(
        [
            "",
            "opamp-operator is running on a local control plane. In another shell:",
            f"  export KUBECONFIG={kubeconfig}",
            f"  kubectl get opampagents -n {settings.kube.namespace}",
            f"  kubectl get opampagents -n {settings.kube.namespace} -o wide",
            "Point an agent at it (either transport, same port):",
            f"  ws://127.0.0.1:{port}/v1/opamp   or   http://127.0.0.1:{port}/v1/opamp",
            f"REST API http://127.0.0.1:{api}/api/v1/agents, metrics http://127.0.0.1:{api}/metrics",
            "Stop with Ctrl-C.",
            "",
        ]
    )


def run_dev(settings: Settings, workdir: str | None, demo_agents: int) -> int:
    base = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="opamp-operator-dev-"))
    _say("checking control-plane binaries (the first run builds them from Go modules)")
    binaries = ensure_binaries(progress=True)
    plane = ControlPlane(base / "controlplane", binaries)
    postgres = PostgresServer()
    try:
        _say("starting etcd and kube-apiserver on 127.0.0.1")
        endpoints = plane.start()
        _say("starting PostgreSQL on 127.0.0.1")
        postgres.start()
        database = postgres.create_database()
        install_crds(endpoints.kubeconfig, settings.kube.namespace)
        local = dev_settings(settings, endpoints.kubeconfig, database.dsn)
        print(next_steps(local, endpoints.kubeconfig), file=sys.stderr, flush=True)
        from .app import run_operator

        return run_operator(local, demo_agents=demo_agents)
    finally:
        _say("stopping the local servers")
        postgres.remove()
        plane.stop()
