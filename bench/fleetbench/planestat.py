"""The control plane under the fleet: kube-apiserver's and etcd's CPU and RSS, etcd's size.

They share the machine's two cores with the operator and the simulators, so their load is
part of every measurement (issue 19, item 5). etcd's size comes from its own /metrics: the
backend database file (`etcd_mvcc_db_total_size_in_bytes`, never shrinks without a
defragmentation) and the keys it holds (every CR, Lease and Event).
"""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp

from opamp_operator.testbed.controlplane import ControlPlane

from .procstat import ProcSample, cpu_percent, sample
from .stack import Metrics


@dataclass(frozen=True)
class PlaneSample:
    processes: dict[str, ProcSample]  # by name: "kube-apiserver", "etcd"
    etcd_db_bytes: float
    etcd_keys: float


@dataclass(frozen=True)
class PlaneWindow:
    """Between two samples: CPU in % of one core, RSS and etcd's size at the end."""

    apiserver_cpu_pct: float
    apiserver_rss: int
    etcd_cpu_pct: float
    etcd_rss: int
    etcd_db_bytes: float
    etcd_keys: float

    def describe(self) -> str:
        mib = 1024 * 1024
        return (
            f"API server {self.apiserver_cpu_pct:.1f} % / {self.apiserver_rss / mib:.0f} MiB; "
            f"etcd {self.etcd_cpu_pct:.1f} % / {self.etcd_rss / mib:.0f} MiB, "
            f"db {self.etcd_db_bytes / mib:.0f} MiB, {self.etcd_keys:,.0f} keys"
        )


async def plane_sample(plane: ControlPlane) -> PlaneSample:
    etcd = Metrics("")
    if plane.etcd_url is not None:
        timeout = aiohttp.ClientTimeout(total=10)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(f"{plane.etcd_url}/metrics") as response,
        ):
            response.raise_for_status()
            etcd = Metrics(await response.text())
    return PlaneSample(
        {name: sample(pid) for name, pid in plane.pids().items()},
        etcd.value("etcd_mvcc_db_total_size_in_bytes"),
        etcd.value("etcd_debugging_mvcc_keys_total"),
    )


def between(before: PlaneSample, after: PlaneSample) -> PlaneWindow | None:
    """None when a server is missing from either sample (it was restarted or stopped)."""
    names = ("kube-apiserver", "etcd")
    if any(n not in before.processes or n not in after.processes for n in names):
        return None
    api0, api1 = before.processes["kube-apiserver"], after.processes["kube-apiserver"]
    etcd0, etcd1 = before.processes["etcd"], after.processes["etcd"]
    return PlaneWindow(
        apiserver_cpu_pct=cpu_percent(api0, api1),
        apiserver_rss=api1.rss_bytes,
        etcd_cpu_pct=cpu_percent(etcd0, etcd1),
        etcd_rss=etcd1.rss_bytes,
        etcd_db_bytes=after.etcd_db_bytes,
        etcd_keys=after.etcd_keys,
    )
