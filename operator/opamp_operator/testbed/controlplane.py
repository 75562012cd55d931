"""etcd + kube-apiserver on loopback, the way controller-runtime's envtest runs them."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .binaries import ControlPlaneBinaries, ensure_binaries
from .certs import ControlPlaneCerts, make_certs
from .processes import ManagedProcess, free_port, wait_until

STARTUP_TIMEOUT_SECONDS = 90.0


@dataclass(frozen=True)
class ControlPlaneEndpoints:
    server_url: str
    kubeconfig: Path
    certs: ControlPlaneCerts


class ControlPlane:
    """A real etcd and kube-apiserver with RBAC on, in `workdir`, until `stop()`."""

    def __init__(self, workdir: Path, binaries: ControlPlaneBinaries | None = None) -> None:
        self.workdir = workdir
        self._binaries = binaries
        self._etcd: ManagedProcess | None = None
        self._apiserver: ManagedProcess | None = None
        self._apiserver_argv: list[str] = []
        self.endpoints: ControlPlaneEndpoints | None = None
        self.etcd_url: str | None = None  # its /metrics: the benchmark reads the store's size

    def start(self) -> ControlPlaneEndpoints:
        binaries = self._binaries or ensure_binaries()
        self.workdir.mkdir(parents=True, exist_ok=True)
        certs = make_certs(self.workdir / "pki")
        self.etcd_url = etcd_url = self._start_etcd(binaries.etcd)
        port = free_port()
        server_url = f"https://127.0.0.1:{port}"
        self._apiserver_argv = self._apiserver_args(binaries.kube_apiserver, certs, etcd_url, port)
        kubeconfig = self.workdir / "kubeconfig"
        kubeconfig.write_text(render_kubeconfig(server_url, certs))
        self.endpoints = ControlPlaneEndpoints(server_url, kubeconfig, certs)
        self.start_apiserver()
        return self.endpoints

    def start_apiserver(self) -> None:
        """(Re)start kube-apiserver with the same flags, port and etcd; wait for /readyz."""
        assert self.endpoints is not None, "start() first"
        self._apiserver = ManagedProcess(
            "kube-apiserver", self._apiserver_argv, self.workdir / "kube-apiserver.log"
        )
        endpoints = self.endpoints
        wait_until(
            "/readyz",
            lambda: _readyz(endpoints),
            STARTUP_TIMEOUT_SECONDS,
            self._apiserver,
        )

    def pids(self) -> dict[str, int]:
        """The running servers' process ids by name (the benchmark samples their CPU)."""
        running = [p for p in (self._etcd, self._apiserver) if p is not None and p.running()]
        return {p.name: p.pid for p in running}

    def stop_apiserver(self) -> None:
        if self._apiserver is not None:
            self._apiserver.stop()

    def stop(self) -> None:
        self.stop_apiserver()
        if self._etcd is not None:
            self._etcd.stop()

    def _start_etcd(self, etcd: Path) -> str:
        client_port, peer_port = free_port(), free_port()
        client_url = f"http://127.0.0.1:{client_port}"
        argv = [
            str(etcd),
            "--name=testbed",
            f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={client_url}",
            f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-cluster=testbed=http://127.0.0.1:{peer_port}",
            "--unsafe-no-fsync=true",  # a throwaway store: durability buys nothing here
            "--log-level=warn",
        ]
        self._etcd = ManagedProcess("etcd", argv, self.workdir / "etcd.log")
        wait_until("etcd /health", lambda: _http_ok(f"{client_url}/health"), 30, self._etcd)
        return client_url

    def _apiserver_args(
        self, apiserver: Path, certs: ControlPlaneCerts, etcd_url: str, port: int
    ) -> list[str]:
        return [
            str(apiserver),
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={port}",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            f"--tls-cert-file={certs.serving_cert}",
            f"--tls-private-key-file={certs.serving_key}",
            f"--client-ca-file={certs.ca_cert}",
            "--authorization-mode=RBAC",
            f"--service-account-key-file={certs.service_account_pub}",
            f"--service-account-signing-key-file={certs.service_account_key}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--api-audiences=https://kubernetes.default.svc.cluster.local",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--allow-privileged=true",
            # No controller-manager runs here, so nothing would create the `default`
            # ServiceAccount that this admission plugin insists on for every Pod.
            "--disable-admission-plugins=ServiceAccount",
            "--endpoint-reconciler-type=none",
            "--v=1",
        ]


def render_kubeconfig(server_url: str, certs: ControlPlaneCerts) -> str:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "testbed",
                "cluster": {"server": server_url, "certificate-authority": str(certs.ca_cert)},
            }
        ],
        "users": [
            {
                "name": "testbed-admin",
                "user": {
                    "client-certificate": str(certs.admin_cert),
                    "client-key": str(certs.admin_key),
                },
            }
        ],
        "contexts": [
            {"name": "testbed", "context": {"cluster": "testbed", "user": "testbed-admin"}}
        ],
        "current-context": "testbed",
    }
    return json.dumps(config, indent=2)  # JSON is valid YAML; kubectl reads it as is


def _readyz(endpoints: ControlPlaneEndpoints) -> bool:
    context = ssl.create_default_context(cafile=str(endpoints.certs.ca_cert))
    context.load_cert_chain(str(endpoints.certs.admin_cert), str(endpoints.certs.admin_key))
    return _http_ok(f"{endpoints.server_url}/readyz", context)


def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False
