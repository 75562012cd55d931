"""Memory per WebSocket agent in the transport and the fleet alone (no Kubernetes, no database).

    PYTHONPATH=operator:. .venv/bin/python bench/transport_memory.py --agents 500

Our listener over a real Fleet in this process (the tests' `opamp_server`), tracemalloc on,
N simulated agents (`opamp-operator simulate`, 30 s heartbeats) from a child process. Once
all are Online: traced bytes per agent by allocation site and by our innermost calling line.
A quick check of a transport change (half a minute at 500 agents) before the full-stack
`bench/run-memory`; it says nothing of the Kubernetes side.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import subprocess
import sys
import tracemalloc
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from tests.support.opamp_clients import opamp_server
from tests.support.polling import eventually

Site = Callable[[tracemalloc.Traceback], str]


def _inner(frames: tracemalloc.Traceback) -> str:
    return f"{'/'.join(Path(frames[-1].filename).parts[-2:])}:{frames[-1].lineno}"


def _ours(frames: tracemalloc.Traceback) -> str:
    mine = next((f for f in reversed(frames) if "opamp_operator" in f.filename), None)
    return f"{Path(mine.filename).name}:{mine.lineno}" if mine else "(no frame of ours)"


def _grown(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, site: Site) -> Counter[str]:
    grown: Counter[str] = Counter()
    for stat in after.statistics("traceback"):
        grown[site(stat.traceback)] += stat.size
    for stat in before.statistics("traceback"):
        grown[site(stat.traceback)] -= stat.size
    return grown


async def _measure(agents: int, rows: int) -> None:
    tracemalloc.start(8)
    async with opamp_server(heartbeat=30.0, heartbeat_timeout=60.0) as server:
        gc.collect()
        before = tracemalloc.take_snapshot()
        simulator = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "opamp_operator", "--log-level", "WARNING", "simulate",
            "--url", server.ws_url, "--agents", str(agents), "--ramp", "100",
            "--duration", "300", "--max-connections", str(agents),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:

            async def online() -> bool | None:
                return server.fleet.active() >= agents or None

            await eventually("every agent Online", online, within=300, every=0.5)
            await asyncio.sleep(3)  # every first reply written
            gc.collect()
            after = tracemalloc.take_snapshot()
        finally:
            simulator.kill()
            await simulator.wait()
    tracemalloc.stop()
    for title, site in (("allocated at", _inner), ("asked for at", _ours)):
        grown = _grown(before, after, site)
        print(f"\n{title}: {sum(grown.values()) / agents:,.0f} bytes per agent traced")
        for name, size in grown.most_common(rows):
            print(f"{size / agents:8,.0f}  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=500)
    parser.add_argument("--rows", type=int, default=30)
    args = parser.parse_args()
    asyncio.run(_measure(args.agents, args.rows))


if __name__ == "__main__":
    main()
