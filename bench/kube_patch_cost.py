"""What one OpAMPAgent status patch costs the operator's process: CPU seconds per request.

Starts the test bed's etcd + kube-apiserver, creates one OpAMPAgent, then patches its status
`--count` times through the mirror's client, `--concurrency` at a time, and prints the
process CPU time (all threads: the event loop and any client threads) divided by the count.

    .venv/bin/python bench/kube_patch_cost.py --count 1000
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from kubebed import control_plane, online_status

from opamp_operator.config import KubeSettings
from opamp_operator.kube.api.resources import KubeApi


async def measure(kubeconfig: Path, count: int, concurrency: int) -> tuple[float, float]:
    api = await KubeApi.connect(KubeSettings(namespace="default", kubeconfig=kubeconfig))
    try:
        await api.create_agent("bench-agent", {})
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with sem:
                await api.patch_agent_status("bench-agent", online_status(i), None)

        await asyncio.gather(*(one(i) for i in range(50)))  # warm up connections
        cpu, wall = time.process_time(), time.monotonic()
        await asyncio.gather(*(one(i) for i in range(count)))
        return (time.process_time() - cpu) / count, (time.monotonic() - wall) / count
    finally:
        await api.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    with control_plane() as kubeconfig:
        cpu, wall = asyncio.run(measure(kubeconfig, args.count, args.concurrency))
    print(f"status patch: {cpu * 1e3:.2f} ms CPU, {wall * 1e3:.2f} ms wall per request")


if __name__ == "__main__":
    main()
