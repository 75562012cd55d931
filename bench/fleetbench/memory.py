"""Memory per connected agent, by component (issue 19, item 3).

    bench/run-memory --agents 10000 [--transport ws|http] [--frames 8]

Starts the test bed, the operator under `fleetbench.gcwatch` with tracemalloc on from its
first line, and N simulated agents (30 s heartbeats, the default admission rate). Once every
agent is connected and both write queues are empty, it asks the operator for a report
(SIGUSR2: garbage collected first), and subtracts the report taken before any agent
connected. Printed: live Python memory per agent by where it was allocated (our sub-packages,
each library, the stdlib) and by which of our modules asked for it (the innermost frame of
ours on the stack), next to RSS.

tracemalloc sees what Python's allocators hand out, not memory below them (the kernel's
socket buffers are not in RSS either; libc arenas are in RSS only). With tracing on, the
operator is several times slower and bigger: this run measures *where* memory goes, the
fleet run (`bench/run`) *how much* per agent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fleetbench.stack import (
    OperatorOptions,
    SimPlan,
    Simulator,
    TestBed,
    gc_stats_path,
    idle_queues,
    opamp_url,
    operator_pid,
    operator_process,
    wait_metrics,
)

SETTLE_SECONDS = 900.0  # every CR written, with tracing on: bounded
ROWS = 18


async def _report(pid: int, stats: Path, number: int) -> dict[str, Any]:
    path = stats.with_suffix(f".mem-{number}.json")
    os.kill(pid, signal.SIGUSR2)  # the operator's gcwatch writes `path`
    deadline = time.monotonic() + 900  # a snapshot of a traced heap takes minutes
    while not path.exists():  # renamed into place once written
        if time.monotonic() > deadline:
            raise RuntimeError(f"no memory report at {path}")
        await asyncio.sleep(1)
    report: dict[str, Any] = json.loads(path.read_text())
    return report


def _per_agent(
    before: list[list[Any]], after: list[list[Any]], agents: int
) -> list[tuple[str, float]]:
    grown = dict(after)
    for name, size in before:
        grown[name] = grown.get(name, 0) - size
    return sorted(((name, size / agents) for name, size in grown.items()), key=lambda r: -r[1])


def _table(title: str, rows: list[tuple[str, float]], shown: int = ROWS) -> str:
    total = sum(size for _, size in rows)
    lines = [f"| {title} | bytes per agent | share |", "|---|---:|---:|"]
    for name, size in rows[:shown]:
        lines.append(f"| `{name}` | {size:,.0f} | {size / total:.1%} |")
    rest = sum(size for _, size in rows[shown:])
    if rows[shown:]:
        lines.append(f"| {len(rows) - shown} others | {rest:,.0f} | {rest / total:.1%} |")
    lines.append(f"| **total traced** | **{total:,.0f}** | |")
    return "\n".join(lines)


async def _measure(
    bed: TestBed, args: argparse.Namespace, workdir: Path
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The operator's reports before any agent connected and once all are settled."""
    namespace, database = bed.new_target("mem")
    operator = operator_process(bed, namespace, database, OperatorOptions(), workdir / "op.log")
    stats = gc_stats_path(operator)
    assert stats is not None
    await operator.start(within=300)
    try:
        pid = operator_pid(operator)
        before = await _report(pid, stats, 1)
        url = opamp_url(operator, args.transport)
        plan = SimPlan(agents=args.agents, duration=SETTLE_SECONDS + 300, ramp=args.ramp)
        simulator = Simulator(plan, url, workdir, "sim")
        await simulator.start()
        try:
            settled = await wait_metrics(
                operator.api_url,
                lambda m: m.value("opamp_agents_online_total") >= args.agents and idle_queues(m),
                within=SETTLE_SECONDS, interval=5.0,
            )  # fmt: skip
            if settled is None:
                raise RuntimeError("the fleet did not settle; see the operator log")
            after = await _report(pid, stats, 2)
        finally:
            await simulator.kill()
    finally:
        # Measured already: a traced operator's shutdown can take minutes (10,000 sessions
        # end under tracing), and nothing after the reports is measured.
        await operator.kill()
    return before, after


def _summary(before: dict[str, Any], after: dict[str, Any], args: argparse.Namespace) -> str:
    agents = args.agents
    traced = (after["traced_bytes"] - before["traced_bytes"]) / agents
    rss = (after["rss_bytes"] - before["rss_bytes"]) / agents
    if not args.frames:
        return (
            f"{agents:,} agents over {args.transport}, tracemalloc off: RSS {rss:,.0f} bytes "
            f"per agent (RSS {before['rss_bytes'] / 2**20:.0f} -> "
            f"{after['rss_bytes'] / 2**20:.0f} MiB)\n"
        )
    head = (
        f"{agents:,} agents over {args.transport}, tracemalloc {args.frames} frames: "
        f"traced {traced:,.0f} bytes per agent, RSS {rss:,.0f} bytes per agent "
        f"(RSS {before['rss_bytes'] / 2**20:.0f} -> {after['rss_bytes'] / 2**20:.0f} MiB, "
        "tracing's own overhead included)"
    )
    where = _table("allocated in", _per_agent(before["where"], after["where"], agents))
    ours = _table("asked for by", _per_agent(before["ours"], after["ours"], agents))
    if "ours_at" not in after:
        return f"{head}\n\n{where}\n\n{ours}\n"
    sites = _per_agent(before["lines"], after["lines"], agents)
    lines = _table("allocated at (innermost frame)", sites, shown=40)
    asked = _per_agent(before["ours_at"], after["ours_at"], agents)
    asked_at = _table("asked for at (innermost frame of ours)", asked, shown=40)
    return f"{head}\n\n{where}\n\n{ours}\n\n{lines}\n\n{asked_at}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--transport", choices=("ws", "http"), default="ws")
    parser.add_argument(
        "--frames",
        type=int,
        default=8,
        help="tracemalloc frames per trace (0: no tracing, RSS only)",
    )
    # Tracing makes the operator several times slower: at the default admission rate
    # (200/s) new connections time out before their first message is read.
    parser.add_argument("--ramp", type=float, default=50.0, help="agents connecting per second")
    parser.add_argument(
        "--out", type=Path, help="also write the tables here (Markdown), the reports beside (.json)"
    )
    args = parser.parse_args()
    os.environ["FLEETBENCH_TRACEMALLOC"] = str(args.frames)  # read by the operator's gcwatch
    with tempfile.TemporaryDirectory(prefix="fleetbench-mem-") as temporary:
        workdir = Path(temporary)
        bed = TestBed(workdir)
        bed.start()
        try:
            before, after = asyncio.run(_measure(bed, args, workdir))
        finally:
            bed.stop()
    text = _summary(before, after, args)
    print(text)
    if args.out:
        args.out.write_text(text)
        # Both reports whole, to look further without running again.
        args.out.with_suffix(".json").write_text(json.dumps({"before": before, "after": after}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
