"""REST latency: GET /api/v1/agents/{id}/status against fleets of 1,000 and 10,000 agents.

The server runs in a child process (as in production: its own interpreter and event loop)
with a Fleet fed real AgentToServer messages through fake channels, and authentication off
(so the numbers are the API's own cost; a cached authorization decision adds one dict look-up
and a SHA-256 of the token). The client sends sequential requests over one keep-alive
connection on loopback and reports percentiles. Bounded: fixed request counts, loopback only.

    .venv/bin/python bench/api_latency.py [--agents 1000 10000] [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import multiprocessing.connection
import random
import statistics
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp

if TYPE_CHECKING:  # the child process imports the operator itself (see _serve)
    from opamp_operator.fleet.model import Transport

WARMUP_REQUESTS = 200
LIST_REQUESTS = 200


@dataclass(eq=False)
class BenchChannel:
    transport: Transport
    remote_addr: str

    def request_close(self, reason: str) -> None:
        pass


def _serve(agents: int, conn: multiprocessing.connection.Connection) -> None:
    """Child process: build the fleet, serve the API, send (port, sample ids), wait for stop."""
    asyncio.run(_serve_async(agents, conn))


async def _serve_async(agents: int, conn: multiprocessing.connection.Connection) -> None:
    from opamp_operator.api.server import ApiServer
    from opamp_operator.config import ApiSettings, FleetSettings
    from opamp_operator.fleet.clock import SystemClock
    from opamp_operator.fleet.events import EventBus
    from opamp_operator.fleet.model import Transport
    from opamp_operator.fleet.registry import Fleet
    from opamp_operator.opamp.generated import opamp_pb2
    from opamp_operator.opamp.generated.anyvalue_pb2 import AnyValue, KeyValue

    settings = FleetSettings(
        max_agents=agents + 1, registrations_per_second=1e9, registration_burst=10**9
    )
    fleet = Fleet(settings, SystemClock(), EventBus())
    ids = []
    for i in range(agents):
        uid = uuid.uuid4()
        channel = BenchChannel(Transport.WEBSOCKET, f"127.0.0.1:{10000 + i % 50000}")
        hello = opamp_pb2.AgentToServer(instance_uid=uid.bytes, sequence_num=0, capabilities=7)
        for key, value in (("service.name", "otelcol"), ("service.version", "0.140.0")):
            hello.agent_description.identifying_attributes.append(
                KeyValue(key=key, value=AnyValue(string_value=value))
            )
        hello.agent_description.non_identifying_attributes.append(
            KeyValue(key="host.name", value=AnyValue(string_value=f"node-{i % 300}"))
        )
        hello.health.healthy = True
        hello.health.status = "StatusOK"
        fleet.handle_message(channel, hello)
        beat = opamp_pb2.AgentToServer(instance_uid=uid.bytes, sequence_num=1)
        fleet.handle_message(channel, beat)
        ids.append(str(uid))
    api = ApiSettings(host="127.0.0.1", port=0, auth_enabled=False)
    server = ApiServer(api, fleet, None, None, lambda: {"listener": True})
    await server.start()
    conn.send((server.port, random.Random(1).sample(ids, min(len(ids), 2000))))
    await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # until told to stop
    await server.stop()


@dataclass(frozen=True)
class Result:
    agents: int
    path: str
    requests: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    per_second: float


async def _measure(port: int, paths: list[str], requests: int, agents: int, label: str) -> Result:
    connector = aiohttp.TCPConnector(limit=1)  # one keep-alive connection: sequential
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", connector=connector) as client:
        for i in range(WARMUP_REQUESTS):
            async with client.get(paths[i % len(paths)]) as response:
                await response.read()
        samples = []
        started = time.perf_counter()
        for i in range(requests):
            t0 = time.perf_counter_ns()
            async with client.get(paths[i % len(paths)]) as response:
                await response.read()
                assert response.status == 200, response.status
            samples.append((time.perf_counter_ns() - t0) / 1e6)
        elapsed = time.perf_counter() - started
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return Result(
        agents, label, requests, cuts[49], cuts[89], cuts[98], max(samples), requests / elapsed
    )


def run(agent_counts: list[int], requests: int) -> list[Result]:
    results = []
    context = multiprocessing.get_context("spawn")
    for agents in agent_counts:
        parent, child = context.Pipe()
        process = context.Process(target=_serve, args=(agents, child), daemon=True)
        process.start()
        try:
            if not parent.poll(300):
                raise RuntimeError(f"server with {agents} agents did not start")
            port, ids = parent.recv()
            status_paths = [f"/api/v1/agents/{agent_id}/status" for agent_id in ids]
            results.append(
                asyncio.run(
                    _measure(port, status_paths, requests, agents, "GET /agents/{id}/status")
                )
            )
            list_paths = ["/api/v1/agents?limit=100"]
            results.append(
                asyncio.run(
                    _measure(port, list_paths, LIST_REQUESTS, agents, "GET /agents?limit=100")
                )
            )
        finally:
            parent.send("stop")
            process.join(30)
            if process.is_alive():
                process.kill()
    return results


def table(results: list[Result]) -> str:
    lines = [
        "| agents | request | n | p50 ms | p90 ms | p99 ms | max ms | req/s |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.agents:,} | {r.path} | {r.requests:,} | {r.p50_ms:.3f} | {r.p90_ms:.3f} "
            f"| {r.p99_ms:.3f} | {r.max_ms:.3f} | {r.per_second:,.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    if any(n < 1 or n > 100_000 for n in args.agents) or not 1 <= args.requests <= 100_000:
        parser.error("agents must be 1..100000 and requests 1..100000 (a bounded benchmark)")
    print(table(run(args.agents, args.requests)))


if __name__ == "__main__":
    main()
