"""The Kubernetes micro-benchmarks' test bed: etcd + kube-apiserver with the OpAMPAgent CRD.

Shared by `kube_patch_cost.py` and `watch_cost.py` (the fleet benchmark, `fleetbench/`, runs
the whole stack instead).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kubernetes import config as k8s_config

from opamp_operator.testbed.controlplane import ControlPlane
from tests.support.gitops import install_crd

CRD = Path(__file__).resolve().parents[1] / "crds" / "opampagents.opamp.dev.yaml"


@contextmanager
def control_plane() -> Iterator[Path]:
    """A control plane in a temporary directory with the CRD installed; yields its kubeconfig."""
    with tempfile.TemporaryDirectory() as workdir:
        plane = ControlPlane(Path(workdir))
        endpoints = plane.start()
        try:
            admin = k8s_config.new_client_from_config(config_file=str(endpoints.kubeconfig))
            install_crd(admin, CRD)
            yield endpoints.kubeconfig
        finally:
            plane.stop()


def online_status(i: int, hour: int = 0) -> dict[str, Any]:
    """An Online status whose `lastSeenAt` differs for each `i` below 3600 (and each hour),
    so that every patch is a change the API server writes and watchers see."""
    return {
        "phase": "Online",
        "lastSeenAt": f"2026-01-01T{hour:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z",
    }
