"""Transport cost: messages per CPU-second of minimal OpAMP servers, beside opamp-go's peer.

Every server (bench/minservers) does the same per-message work, parse one AgentToServer
and answer a ServerToAgent with its instance_uid, so what differs between them is the
transport: websockets, aiohttp's WebSocket, our own RFC 6455 framing, aiohttp's HTTP server
or our own HTTP/1.1, on asyncio's loop or uvloop. The load is the saturation run's
(bench/fleetbench/saturation.py: 500 simulated agents, one message each per 50 ms); each
server's CPU is read from /proc over a fixed window, and each variant's messages per
CPU-second is divided by the peer's from the same round and transport. Not a test:
    bench/run-framing [--rounds 2] [--window 15] [--out table.md] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import timeit
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from fleetbench.peer_runs import message_count
from fleetbench.procstat import cpu_percent, machine_busy_percent, machine_sample, sample
from fleetbench.stack import SimPlan, Simulator
from minservers.answer import answer

from opamp_operator.opamp.generated.opamp_pb2 import AgentToServer
from opamp_operator.simulator.wire import CAPABILITIES
from tests.support.goagent import PeerServer

REPO_ROOT = Path(__file__).resolve().parents[1]
SOURCE_ROOTS = (REPO_ROOT / "bench", REPO_ROOT / "operator", REPO_ROOT)


@dataclass(frozen=True)
class Variant:
    server: str  # "peer" or a minservers variant
    transport: str  # "ws" or "http"
    loop: str = "asyncio"  # the peer's is Go's runtime

    @property
    def name(self) -> str:
        base = f"peer-{self.transport}" if self.server == "peer" else self.server
        return f"{base}@{self.loop}" if self.loop == "uvloop" else base


VARIANTS = (
    Variant("peer", "ws", "go"),
    Variant("ws-websockets", "ws"),
    Variant("ws-websockets", "ws", "uvloop"),
    Variant("ws-aiohttp", "ws"),
    Variant("ws-own", "ws"),
    Variant("peer", "http", "go"),
    Variant("http-aiohttp", "http"),
    Variant("http-aiohttp", "http", "uvloop"),
    Variant("http-own", "http"),
)


@dataclass(frozen=True)
class Plan:
    agents: int = 500
    heartbeat: float = 0.05
    settle_seconds: float = 5.0  # connect (ramp 0: all at once) before the window
    window_seconds: float = 15.0


@dataclass
class Measurement:
    variant: str
    transport: str
    round: int
    seconds: float
    messages: int
    cpu_pct: float
    sim_cpu_pct: float
    machine_busy_pct: float
    ratio: float | None = None  # per CPU-second, to the peer's (same round and transport)

    @property
    def per_second(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0

    @property
    def per_cpu_second(self) -> float:
        cpu = self.cpu_pct / 100 * self.seconds
        return self.messages / cpu if cpu else 0.0


class Server(Protocol):
    @property
    def pid(self) -> int: ...

    def url(self, transport: str) -> str: ...

    async def count(self) -> int: ...

    async def stop(self) -> None: ...


class MinServer:
    """One `python -m minservers VARIANT` child; counts on SIGUSR1 (see its __main__)."""

    def __init__(self, variant: Variant, extra_path: str | None) -> None:
        self.variant = variant
        roots = [*map(str, SOURCE_ROOTS), *([extra_path] if extra_path else [])]
        self._env = {**os.environ, "PYTHONPATH": os.pathsep.join(roots)}
        self._process: asyncio.subprocess.Process | None = None
        self._port = 0

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    async def start(self) -> None:
        argv = [sys.executable, "-m", "minservers", self.variant.server, "--loop"]
        self._process = await asyncio.create_subprocess_exec(
            *argv, self.variant.loop, stdout=subprocess.PIPE, env=self._env, cwd=REPO_ROOT
        )
        self._port = await self._event("listening", "port")

    def url(self, transport: str) -> str:
        return f"{transport}://127.0.0.1:{self._port}/v1/opamp"

    async def count(self) -> int:
        assert self._process is not None
        self._process.send_signal(signal.SIGUSR1)
        return await self._event("count", "messages")

    async def stop(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.terminate()
            try:
                await asyncio.wait_for(self._process.wait(), 5)
            except TimeoutError:
                self._process.kill()
                await self._process.wait()

    async def _event(self, name: str, field: str) -> int:
        """The integer `field` of the next `name` event on stdout."""
        assert self._process is not None and self._process.stdout is not None
        async with asyncio.timeout(60):
            while line := await self._process.stdout.readline():
                event = json.loads(line)
                if event.get("event") == name:
                    return int(event[field])
        raise RuntimeError(f"{self.variant.name} exited before {name!r}")


class Peer:
    """opamp-go's server (bench/peer); counts from its /agents as saturation.py does."""

    def __init__(self) -> None:
        self._peer = PeerServer()

    @property
    def pid(self) -> int:
        return self._peer.pid

    async def start(self) -> None:
        await self._peer.__aenter__()
        await self._peer.start()

    def url(self, transport: str) -> str:
        return self._peer.http_url if transport == "http" else self._peer.ws_url

    async def count(self) -> int:
        return int(message_count(await self._peer.agents()))

    async def stop(self) -> None:
        await self._peer.stop()
        await self._peer.__aexit__(None, None, None)


async def started(variant: Variant, uvloop_path: str | None) -> Server:
    server: Peer | MinServer = (
        Peer() if variant.server == "peer" else MinServer(variant, uvloop_path)
    )
    try:
        await server.start()
    except BaseException:
        await server.stop()
        raise
    return server


async def measure(
    variant: Variant, plan: Plan, round_: int, workdir: Path, uvloop_path: str | None
) -> Measurement:
    server = await started(variant, uvloop_path)
    sim_plan = SimPlan(
        agents=plan.agents, heartbeat=plan.heartbeat, ramp=0, name_prefix="fr", seed=3,
        duration=plan.settle_seconds + plan.window_seconds + 30,
    )  # fmt: skip
    sim = Simulator(sim_plan, server.url(variant.transport), workdir, f"sim-{variant.name}")
    try:
        await sim.start()
        await asyncio.sleep(plan.settle_seconds)
        n0, s0, q0, c0 = await server.count(), sample(server.pid), sample(sim.pid), machine_sample()
        await asyncio.sleep(plan.window_seconds)
        n1, s1, q1, c1 = await server.count(), sample(server.pid), sample(sim.pid), machine_sample()
    finally:
        await sim.kill()
        await server.stop()
    return Measurement(
        variant.name, variant.transport, round_, s1.at - s0.at, n1 - n0, cpu_percent(s0, s1),
        cpu_percent(q0, q1), machine_busy_percent(c0, c1),
    )  # fmt: skip


def set_ratios(results: list[Measurement]) -> None:
    peers = {(m.round, m.transport): m for m in results if m.variant.startswith("peer-")}
    for m in results:
        peer = peers.get((m.round, m.transport))
        if peer is not None and peer.per_cpu_second:
            m.ratio = m.per_cpu_second / peer.per_cpu_second


def protobuf_microseconds() -> float:
    """The per-message protobuf work alone (parse a heartbeat, serialize the answer), in µs."""
    payload = AgentToServer(
        instance_uid=bytes(range(16)), sequence_num=7, capabilities=CAPABILITIES
    ).SerializeToString()
    runs = 20_000
    return min(timeit.repeat(lambda: answer(payload), number=runs, repeat=5)) / runs * 1e6


def uvloop_importable(path: str | None) -> bool:
    env = {**os.environ, "PYTHONPATH": path or ""}
    probe = subprocess.run([sys.executable, "-c", "import uvloop"], env=env, capture_output=True)
    return probe.returncode == 0


def table(results: list[Measurement]) -> str:
    rows = [
        "| variant | round | msgs/s | server CPU | msgs per CPU-s | µs per msg | ratio to peer "
        "| sim CPU | machine busy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in sorted(results, key=lambda m: (m.transport != "ws", m.variant, m.round)):
        ratio = "—" if m.ratio is None else f"{m.ratio:.2f}"
        micros = 1e6 / m.per_cpu_second if m.per_cpu_second else 0.0
        rows.append(
            f"| {m.variant} | {m.round} | {m.per_second:,.0f} | {m.cpu_pct:.0f} % "
            f"| {m.per_cpu_second:,.0f} | {micros:.1f} | {ratio} | {m.sim_cpu_pct:.0f} % "
            f"| {m.machine_busy_pct:.0f} % |"
        )
    return "\n".join(rows)


async def run(args: argparse.Namespace, workdir: Path) -> list[Measurement]:
    plan = Plan(args.agents, args.heartbeat, args.settle, args.window)
    variants = [v for v in VARIANTS if not args.only or v.name in args.only]
    if not uvloop_importable(args.uvloop_path):
        print(f"uvloop not importable from {args.uvloop_path!r}: skipping it", file=sys.stderr)
        variants = [v for v in variants if v.loop != "uvloop"]
    results: list[Measurement] = []
    for round_ in range(1, args.rounds + 1):
        # Every other round in reverse: a drift in the machine's load hits both ends.
        for variant in variants if round_ % 2 else variants[::-1]:
            started_at = time.monotonic()
            result = await measure(variant, plan, round_, workdir, args.uvloop_path)
            results.append(result)
            print(
                f"[framing] round {round_} {variant.name}: {result.per_cpu_second:,.0f} msgs "
                f"per CPU-s ({time.monotonic() - started_at:.0f} s)",
                file=sys.stderr,
            )
    set_ratios(results)
    return results


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="framing", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--agents", type=int, default=500)
    parser.add_argument("--heartbeat", type=float, default=0.05)
    parser.add_argument("--settle", type=float, default=5.0)
    parser.add_argument("--window", type=float, default=15.0)
    parser.add_argument("--only", nargs="*", help="variant names (default: all)")
    parser.add_argument("--uvloop-path", default=os.environ.get("UVLOOP_PATH", "/tmp/uvl"))
    parser.add_argument("--workdir", help="simulator logs (default: a new temporary dir)")
    parser.add_argument("--out", type=Path, help="also write the table here")
    parser.add_argument("--json", type=Path, help="the measurements as JSON")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    print(f"[framing] protobuf work alone: {protobuf_microseconds():.1f} µs per message")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="framing-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results = asyncio.run(run(args, workdir))
    text = table(results)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    if args.json is not None:
        rows = [{**asdict(m), "per_cpu_second": m.per_cpu_second} for m in results]
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
