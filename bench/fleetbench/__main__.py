"""Fleet benchmark: the real stack on loopback, the operator and the opamp-go peer side by side.

    bench/run [--agents 1000 10000] [--fleet-transport ws http] [--profile] [--json results.json]

Starts etcd + kube-apiserver + PostgreSQL (the test bed), then, each in its own namespace
and database: a saturation run (operator, then peer), and per fleet size a fleet run on
the operator (ramp, steady window, REST latency, opt-in churn window, silent agents,
reconnect storm, adoption of a SIGKILLed replica) and on the peer (memory per connection).
Prints Markdown tables; every number also goes to JSON. Bounded: each phase has a timeout;
everything listens on 127.0.0.1 only. Up to 50,000 agents: the fleet is split over
simulator processes, and the machine must allow the operator one descriptor and one
loopback port per WebSocket agent (checked before anything starts).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import itertools
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from opamp_operator.simulator.config import MAX_CONNECTIONS_CAP

from .churn import MAX_WINDOW_S, ChurnPlan
from .operator_runs import FleetPlan, FleetResult, FleetScenario
from .peer_runs import PeerFleetResult, peer_fleet
from .saturation import SaturationPlan, SaturationResult, operator_saturation, peer_saturation
from .simfleet import DEFAULT_PER_SIMULATOR
from .stack import OperatorOptions, TestBed
from .table import dump, fleet_table, offline_summary, profile_table, saturation_table

MAX_AGENTS = 50_000  # above --agents-per-simulator the fleet runs in several simulators
PORT_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"
SPARE_FDS = 500  # the operator's own files and sockets beside its agents' WebSockets


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--agents",
        type=int,
        nargs="*",
        default=[1000, 10000],
        help="fleet sizes (none: saturation only)",
    )
    parser.add_argument(
        "--silent",
        type=int,
        default=None,
        help="silent agents per fleet (default: 10%% of it, at most 200)",
    )
    parser.add_argument(
        "--ramp",
        type=float,
        default=200.0,
        help="agents connected per second (the operator's default admission rate)",
    )
    parser.add_argument("--steady", type=float, default=60.0, help="steady window (seconds)")
    parser.add_argument(
        "--agents-per-simulator",
        type=int,
        default=DEFAULT_PER_SIMULATOR,
        help=f"a larger fleet is split over simulator processes (at most {MAX_CONNECTIONS_CAP})",
    )
    parser.add_argument(
        "--churn-window",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="after the REST requests, churn this long (0: no churn phase; at most 3600)",
    )
    parser.add_argument(
        "--churn-agents",
        type=int,
        default=1000,
        help="agents that churn (taken from the main fleet, so the fleet stays --agents)",
    )
    parser.add_argument(
        "--churn-rate", type=float, default=5.0, help="disconnects per second across them"
    )
    parser.add_argument(
        "--churn-delay", type=float, default=2.0, help="mean seconds before a churned agent returns"
    )
    parser.add_argument("--saturation-agents", type=int, default=500)
    parser.add_argument("--saturation-heartbeat", type=float, default=0.05)
    parser.add_argument(
        "--saturation-transport",
        nargs="+",
        choices=["ws", "http"],
        default=["ws"],
        help="saturation over WebSocket, plain HTTP (the simulator polls), or both in turn",
    )
    parser.add_argument(
        "--fleet-transport",
        nargs="+",
        choices=["ws", "http"],
        default=["ws"],
        help="fleets over WebSocket, plain HTTP (every agent polls every heartbeat), or both",
    )
    parser.add_argument("--no-saturation", action="store_true")
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--no-storm", action="store_true", help="skip the reconnect storm")
    parser.add_argument(
        "--no-adoption",
        action="store_true",
        help="skip the adoption of a SIGKILLed replica (after the storm)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the operator during saturation, steady and storm windows",
    )
    parser.add_argument("--kube-writes-per-second", type=float, default=500.0)
    parser.add_argument(
        "--last-seen-refresh",
        type=lambda text: None if text.strip().lower() in ("off", "none", "") else float(text),
        default=None,
        help="the operator's opt-in lastSeenAt refresh (seconds; default off, as the operator)",
    )
    parser.add_argument(
        "--no-gc-stats",
        action="store_true",
        help="run the operator without the collector-pause hook",
    )
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write every number here")
    args = parser.parse_args()  # fmt: skip
    if any(not 10 <= n <= MAX_AGENTS for n in args.agents):
        parser.error(f"--agents must be 10..{MAX_AGENTS}")
    if not 1 <= args.steady <= 600:
        parser.error("--steady must be 1..600 seconds")
    if not 1 <= args.agents_per_simulator <= MAX_CONNECTIONS_CAP:
        parser.error(f"--agents-per-simulator must be 1..{MAX_CONNECTIONS_CAP}")
    check_churn(parser, args)
    problem = machine_problem(max(args.agents, default=0), args.fleet_transport)
    if problem:
        parser.error(problem)
    return args


def check_churn(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not 0 <= args.churn_window <= MAX_WINDOW_S:
        parser.error(f"--churn-window must be 0..{MAX_WINDOW_S:g} seconds")
    if not args.churn_window:
        return
    if not 1 <= args.churn_agents <= MAX_CONNECTIONS_CAP:
        parser.error(f"--churn-agents must be 1..{MAX_CONNECTIONS_CAP}")
    if any(n - silent_agents(args, n) - args.churn_agents < 1 for n in args.agents):
        parser.error("--churn-agents leaves no main fleet: raise --agents")
    if not args.churn_rate > 0 or not args.churn_delay >= 0:
        parser.error("--churn-rate must be positive, --churn-delay not negative")


def silent_agents(args: argparse.Namespace, agents: int) -> int:
    return int(args.silent) if args.silent is not None else min(200, agents // 10)


def machine_problem(agents: int, transports: list[str]) -> str | None:
    """Why this machine cannot hold `agents` WebSockets in one operator, if it cannot: one
    descriptor each (the hard limit is what raise_fd_limit reaches) and one loopback port
    each (every agent dials the same address, so the ephemeral range bounds them)."""
    if "ws" not in transports:
        return None  # over HTTP only the simulators' connection pools are open
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and agents + SPARE_FDS > hard:
        return (
            f"{agents:,} WebSocket agents need {agents + SPARE_FDS:,} open files in the "
            f"operator; the hard limit here is {hard:,} (raise it, or use --fleet-transport http)"
        )
    low, high = (int(x) for x in Path(PORT_RANGE).read_text().split())
    if agents > high - low + 1:
        return (
            f"{agents:,} WebSocket agents need as many loopback ports; {PORT_RANGE} gives "
            f"{high - low + 1:,} (sysctl -w net.ipv4.ip_local_port_range='1024 65535')"
        )
    return None


def machine() -> dict[str, str]:
    def run(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True).stdout.strip()

    model = [line for line in run("lscpu").splitlines() if line.startswith("Model name")]
    memory = run("free", "-h").splitlines()
    return {
        "nproc": run("nproc"),
        "model": model[0].split(":", 1)[1].strip() if model else "?",
        "memory": memory[1] if len(memory) > 1 else "?",
        "python": platform.python_version(),
        "kernel": platform.release(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": run("git", "rev-parse", "--short", "HEAD"),
    }


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def run(args: argparse.Namespace, bed: TestBed, workdir: Path) -> dict[str, Any]:
    options = OperatorOptions(
        kube_writes_per_second=args.kube_writes_per_second,
        last_seen_refresh=args.last_seen_refresh,
        gc_stats=not args.no_gc_stats,
    )
    results: dict[str, Any] = {"machine": machine(), "argv": sys.argv, "options": options}
    saturations: dict[str, tuple[SaturationResult, SaturationResult | None]] = {}
    for transport in [] if args.no_saturation else args.saturation_transport:
        sat_plan = SaturationPlan(
            agents=args.saturation_agents, heartbeat=args.saturation_heartbeat,
            profile=args.profile, transport=transport,
        )  # fmt: skip
        print(f"[saturation {transport}] operator", flush=True)
        ours = await operator_saturation(bed, sat_plan, workdir, options)
        theirs: SaturationResult | None = None
        if not args.no_peer:
            print(f"[saturation {transport}] peer", flush=True)
            theirs = await peer_saturation(sat_plan, workdir)
        saturations[transport] = (ours, theirs)
    fleets: list[FleetResult] = []
    churn = None
    if args.churn_window:
        churn = ChurnPlan(args.churn_window, args.churn_agents, args.churn_rate, args.churn_delay)
    peers: dict[str, PeerFleetResult] = {}  # by FleetPlan.label
    for transport, n in itertools.product(args.fleet_transport, args.agents):
        plan = FleetPlan(
            agents=n, silent=silent_agents(args, n), ramp=args.ramp, steady_seconds=args.steady,
            profile=args.profile, storm=not args.no_storm, adoption=not args.no_adoption,
            transport=transport, churn=churn, agents_per_simulator=args.agents_per_simulator,
        )  # fmt: skip
        started = time.monotonic()
        fleets.append(await FleetScenario(bed, plan, workdir, options).run())
        took = time.monotonic() - started
        print(f"[fleet {plan.label}] operator scenario took {took:.0f} s", flush=True)
        if not args.no_peer:
            print(f"[fleet {plan.label}] peer", flush=True)
            peers[plan.label] = await peer_fleet(
                n, args.ramp, 30.0, workdir, transport, per_simulator=args.agents_per_simulator
            )
    results["saturation"] = {t: {"operator": o, "peer": p} for t, (o, p) in saturations.items()}
    results.update(fleets=fleets, peers=peers)
    results["offline"] = {r.plan.label: offline_summary(r.offline_delays) for r in fleets}
    results["churn"] = {r.plan.label: r.churn.summary() for r in fleets if r.churn}
    print_report(results, saturations, fleets, peers)
    return results


def print_report(
    results: dict[str, Any],
    saturations: dict[str, tuple[SaturationResult, SaturationResult | None]],
    fleets: list[FleetResult],
    peers: dict[str, PeerFleetResult],
) -> None:
    m = results["machine"]
    print(f"\nMachine: nproc {m['nproc']}, {m['model']}, {m['memory']}")
    print(f"Date: {m['date']}, commit {m['commit']}, Python {m['python']}\n")
    for transport, (ours, theirs) in saturations.items():
        plan = ours.plan
        print(f"Saturation over {transport}: {plan.agents} agents, heartbeat "
              f"{plan.heartbeat:g} s, window {plan.window_seconds:g} s\n")  # fmt: skip
        print(saturation_table(ours, theirs) + "\n")
    if fleets:
        print(fleet_table(fleets, peers) + "\n")
    profiles = [ours.profile for ours, _ in saturations.values() if ours.profile is not None]
    for fleet in fleets:
        profiles.extend(fleet.profiles.values())
    for path in profiles:
        if path.exists():
            print(profile_table(path) + "\n")


def main() -> int:
    args = parse_args()
    raise_fd_limit()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fleetbench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"[bench] work directory {workdir}", flush=True)
    bed = TestBed(workdir)
    started = time.monotonic()
    try:
        bed.start()
        print(f"[bench] test bed up after {time.monotonic() - started:.0f} s", flush=True)
        results = asyncio.run(run(args, bed, workdir))
    finally:
        bed.stop()
    results["elapsed_seconds"] = time.monotonic() - started
    print(f"[bench] done in {results['elapsed_seconds']:.0f} s")
    if args.json is not None:
        dump(args.json, results)
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
