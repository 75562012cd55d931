"""What watching OpAMPAgent resources costs a process: CPU per watch event, Kopf vs ours.

The decision this measures (docs/architecture.md, "What Kopf does and what we do"): the
operator's one OpAMPAgent watch per replica is our informer (`kube/api/listwatch.py`), not
Kopf's `on.event`. Starts the test bed's etcd + kube-apiserver, creates `--objects` CRs,
then for each consumer (a child process that only watches and counts events) patches every
CR's status `--rounds` times from this process and prints the consumer's CPU time (all its
threads) per event received.

    .venv/bin/python bench/watch_cost.py --objects 200 --rounds 10
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import multiprocessing.connection
import time
from pathlib import Path
from typing import Any

import kopf
from kubebed import control_plane, online_status

from opamp_operator.config import KubeSettings
from opamp_operator.kube.api import load_credentials
from opamp_operator.kube.api.listwatch import Informer
from opamp_operator.kube.api.resources import KubeApi
from opamp_operator.kube.api.session import ApiSession
from opamp_operator.kube.shapes.naming import GROUP, PLURAL, VERSION
from opamp_operator.kube.wiring.kopfsetup import build_registry, run_kopf

NAMESPACE = "default"


class _Count:
    def __init__(self, expected: int, done: asyncio.Event) -> None:
        self.seen, self.expected, self.done = 0, expected, done

    def replace(self, items: list[dict[str, Any]]) -> None:
        pass

    def apply(self, event_type: str, obj: dict[str, Any]) -> None:
        self.seen += event_type == "MODIFIED"
        if self.seen >= self.expected:
            self.done.set()


async def _consume(kind: str, kubeconfig: Path, expected: int, conn: Any) -> None:
    done = asyncio.Event()
    count = _Count(expected, done)
    credentials = await load_credentials(kubeconfig)
    if kind == "ours":
        session = ApiSession(credentials)
        informer = Informer(session, NAMESPACE, PLURAL, count)
        task = asyncio.create_task(informer.run())
        await informer.synced.wait()
    else:
        # Kopf as the operator runs it, plus the `on.event` handler it no longer has.
        registry = build_registry(credentials)
        stop, ready = asyncio.Event(), asyncio.Event()

        async def event(event: dict[str, Any], **_: Any) -> None:
            count.apply(str(event.get("type")), event.get("object") or {})

        kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)(event)
        task = asyncio.create_task(run_kopf(registry, NAMESPACE, stop_flag=stop, ready_flag=ready))
        await ready.wait()
        await asyncio.sleep(2.0)  # its watch is open and the initial listing processed
    cpu = time.process_time()
    conn.send("ready")
    await asyncio.wait_for(done.wait(), 300)
    conn.send(time.process_time() - cpu)
    if kind == "ours":
        task.cancel()
        await session.close()
    else:
        stop.set()
    await asyncio.gather(task, return_exceptions=True)


def _child(kind: str, kubeconfig: Path, expected: int, conn: Any) -> None:
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(_consume(kind, kubeconfig, expected, conn))


async def _patch(kubeconfig: Path, names: list[str], rounds: int, hour: int) -> None:
    """Every CR `rounds` times, each patch a change (an hour per consumer: no repeats)."""
    api = await KubeApi.connect(KubeSettings(namespace=NAMESPACE, kubeconfig=kubeconfig))
    sem = asyncio.Semaphore(8)

    async def one(name: str, i: int) -> None:
        async with sem:
            await api.patch_agent_status(name, online_status(i, hour), None)

    try:
        for i in range(rounds):
            await asyncio.gather(*(one(name, i) for name in names))
    finally:
        await api.close()


async def _create(kubeconfig: Path, count: int) -> list[str]:
    api = await KubeApi.connect(KubeSettings(namespace=NAMESPACE, kubeconfig=kubeconfig))
    try:
        names = [f"bench-{i:05d}" for i in range(count)]
        for name in names:
            await api.create_agent(name, {})
        return names
    finally:
        await api.close()


def measure(kind: str, kubeconfig: Path, names: list[str], rounds: int, hour: int) -> float:
    parent, child = multiprocessing.Pipe()
    process = multiprocessing.get_context("spawn").Process(
        target=_child, args=(kind, kubeconfig, len(names) * rounds, child)
    )
    process.start()
    assert parent.recv() == "ready"
    asyncio.run(_patch(kubeconfig, names, rounds, hour))
    cpu = float(parent.recv())
    process.join(30)
    return cpu / (len(names) * rounds)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--objects", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    with control_plane() as kubeconfig:
        names = asyncio.run(_create(kubeconfig, args.objects))
        results = {kind: measure(kind, kubeconfig, names, args.rounds, hour)
                   for hour, kind in enumerate(("kopf", "ours"))}  # fmt: skip
    events = args.objects * args.rounds
    print(f"| consumer ({events} watch events) | CPU per event |")
    print("|---|---:|")
    for kind, cpu in results.items():
        print(f"| {'Kopf on.event' if kind == 'kopf' else 'our informer'} | {cpu * 1e6:.0f} µs |")
    print(f"\nKopf / ours: {results['kopf'] / results['ours']:.1f}x")


if __name__ == "__main__":
    main()
