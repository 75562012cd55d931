"""Run the operator with the garbage collector's pauses recorded (the bench's `--gc-stats`).

    python -m fleetbench.gcwatch STATS.json <opamp-operator arguments>

Same as `python -m opamp_operator ...`, plus a gc.callbacks hook that times every
collection; a daemon thread writes the totals to STATS.json every second. The hook costs
two perf_counter() calls per collection; the operator's code is untouched.

For experiments, $FLEETBENCH_GC_THRESHOLD ("a,b,c") sets the collector's thresholds before
the operator starts, and $FLEETBENCH_GC_FREEZE_AFTER (seconds) calls gc.freeze() once
that long after start (to compare collector settings without editing the operator).
$FLEETBENCH_EVENT_LOOP=uvloop runs it on uvloop's event loop (to measure it the same way).
$FLEETBENCH_TRACEMALLOC=N traces allocations (N frames each) from the start; then
`kill -USR2 <pid>` collects garbage and writes the live Python memory by component to
STATS.mem-K.json (K = 1, 2, ...; `fleetbench.memory` diffs two of them). N = 0: no tracing,
the reports hold RSS only.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import importlib
import json
import os
import signal
import sys
import threading
import time
import tracemalloc
import types
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SLOW_S = 0.010  # collections at least this long are kept one by one
_SLOW_KEPT = 2000  # the newest; a long run counts its long pauses in `long` as well
LONG_S = 0.050  # pauses at least this long are counted (the churn window reports them)


class GcStats:
    def __init__(self) -> None:
        self.started = 0.0
        self.count = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self.max = [0.0, 0.0, 0.0]
        self.long = 0  # pauses of LONG_S or more, since start
        # (wall, gen, seconds, collected); the newest kept, so a late window still finds its own
        self.slow: deque[tuple[float, int, float, int]] = deque(maxlen=_SLOW_KEPT)

    def hook(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
            return
        elapsed = time.perf_counter() - self.started
        generation = int(info["generation"])
        self.count[generation] += 1
        self.seconds[generation] += elapsed
        self.max[generation] = max(self.max[generation], elapsed)
        if elapsed >= LONG_S:
            self.long += 1
        if elapsed >= _SLOW_S:
            self.slow.append((time.time(), generation, elapsed, int(info["collected"])))

    def snapshot(self) -> dict[str, Any]:
        # Not gc.get_freeze_count(): it walks the whole frozen list (a million objects at
        # 10,000 agents), and doing so every second was 22 % of the operator's steady CPU.
        return {
            "count": list(self.count),
            "seconds": list(self.seconds),
            "max": list(self.max),
            "slow": list(self.slow),
            "long": self.long,
            "thresholds": gc.get_threshold(),
            "at": time.time(),
        }


def _writer(stats: GcStats, path: Path) -> None:
    while True:
        time.sleep(1.0)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(stats.snapshot()))
        temporary.replace(path)


def _census(path: Path, seconds: float) -> None:
    """What cyclic garbage the process makes: keep all of it for `seconds`, count by type."""
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)

    def finish() -> None:
        gc.collect()
        kinds = Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage)
        # Frames and coroutines name the code that made the cycle.
        code = Counter(
            f"{o.f_code.co_filename}:{o.f_code.co_name}"
            for o in gc.garbage
            if isinstance(o, types.FrameType)
        )
        total = len(gc.garbage)
        gc.garbage.clear()
        gc.set_debug(0)
        report = {"seconds": seconds, "objects": total, "types": kinds.most_common(40)}
        report["frames"] = code.most_common(40)
        path.write_text(json.dumps(report, indent=1))

    timer = threading.Timer(seconds, finish)
    timer.daemon = True
    timer.start()


def _freezer(every: float) -> None:
    """Experiment: collect, then freeze the survivors, every `every` seconds."""
    while True:
        time.sleep(every)
        gc.collect()
        gc.freeze()


@functools.cache
def _component(filename: str) -> str:
    """Our sub-package (opamp_operator/kube/api), a library (websockets), or the stdlib."""
    parts = Path(filename).parts
    if "opamp_operator" in parts:
        at = len(parts) - 1 - parts[::-1].index("opamp_operator")
        inside = parts[at + 1 : -1]
        return "/".join(("opamp_operator", *inside)) if inside else "opamp_operator"
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1].removesuffix(".py")
    if len(parts) > 1 and parts[-2].startswith("python3"):
        return "stdlib/" + parts[-1].removesuffix(".py")
    return "stdlib/" + parts[-2] if len(parts) > 1 else filename


def _memory_report(path: Path) -> None:
    """Live Python memory by where it was allocated and by which of our modules asked
    (RSS alone when not tracing), written by a forked copy of the process.

    Why a fork: every allocation of the analysis is traced too, which made it take over
    5 minutes at 3,000 agents (the event loop stopped meanwhile); the child takes the
    snapshot, stops tracing and groups the traces in seconds, and the operator goes on.
    """
    gc.collect()
    rss = _rss_bytes()
    if not tracemalloc.is_tracing():
        _write_report(path, rss, [])
        return
    child = os.fork()
    if child:
        threading.Thread(target=os.waitpid, args=(child, 0), daemon=True).start()
        return
    try:
        snapshot = tracemalloc.take_snapshot()
        tracemalloc.stop()
        _write_report(path, rss, snapshot.statistics("traceback"))
    finally:
        os._exit(0)  # nothing of the operator's may run in the child


def _write_report(path: Path, rss: int, stats: list[tracemalloc.Statistic]) -> None:
    where: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    lines: Counter[str] = Counter()
    ours_at: Counter[str] = Counter()
    for stat in stats:
        frames = stat.traceback  # oldest first
        inner = frames[-1]
        where[_component(inner.filename)] += stat.size
        lines[f"{_component(inner.filename)}:{inner.lineno}"] += stat.size
        caller = next((f for f in reversed(frames) if "opamp_operator" in f.filename), None)
        if caller is None:
            ours["(no frame of ours)"] += stat.size
            ours_at["(no frame of ours)"] += stat.size
        else:
            ours[_component(caller.filename)] += stat.size
            ours_at[f"{Path(caller.filename).name}:{caller.lineno}"] += stat.size
    report = {
        "traced_bytes": sum(where.values()),
        "rss_bytes": rss,
        "where": where.most_common(),
        "ours": ours.most_common(),
        "lines": lines.most_common(),
        "ours_at": ours_at.most_common(),
    }
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(report, indent=1))
    temporary.replace(path)  # the bench reads it once it exists


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _trace_memory(target: Path) -> None:
    frames = os.environ.get("FLEETBENCH_TRACEMALLOC")
    if not frames:
        return
    if int(frames) > 0:  # 0: reports of RSS only, for the same run untraced
        tracemalloc.start(int(frames))
    reports = iter(range(1, 1000))
    signal.signal(
        signal.SIGUSR2,
        lambda *_: _memory_report(target.with_suffix(f".mem-{next(reports)}.json")),
    )


def main() -> None:
    stats = GcStats()
    gc.callbacks.append(stats.hook)
    target = Path(sys.argv[1])
    threading.Thread(target=_writer, args=(stats, target), daemon=True).start()
    threshold = os.environ.get("FLEETBENCH_GC_THRESHOLD")
    if threshold:
        first, second, third = (int(part) for part in threshold.split(","))
        gc.set_threshold(first, second, third)
    # kill -USR1 <pid>: a census of 5 s of cyclic garbage into STATS.census.json
    census = target.with_suffix(".census.json")
    signal.signal(signal.SIGUSR1, lambda *_: _census(census, 5.0))
    _trace_memory(target)
    freeze_every = os.environ.get("FLEETBENCH_GC_FREEZE_EVERY")
    if freeze_every:
        threading.Thread(target=_freezer, args=(float(freeze_every),), daemon=True).start()
    freeze_after = os.environ.get("FLEETBENCH_GC_FREEZE_AFTER")
    if freeze_after:
        timer = threading.Timer(float(freeze_after), gc.freeze)
        timer.daemon = True
        timer.start()
    if os.environ.get("FLEETBENCH_EVENT_LOOP") == "uvloop":
        uvloop = importlib.import_module("uvloop")  # installed by hand to measure it
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    from opamp_operator.cli import main as operator_main

    raise SystemExit(operator_main(sys.argv[2:]))


def read(path: Path) -> dict[str, Any] | None:
    """The latest totals written by a gcwatch process (None before the first write)."""
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data


if __name__ == "__main__":
    main()


@dataclass(frozen=True)
class GcWindow:
    """Collections between two reads: how many full (generation 2), time, longest pause."""

    collections: int
    full: int
    seconds: float
    longest: float | None  # None: no pause reached the 10 ms recording threshold
    long: int = 0  # pauses of LONG_S (50 ms) or more

    def describe(self) -> str:
        longest = "< 10 ms" if self.longest is None else f"{self.longest * 1000:.0f} ms"
        return f"{self.collections} ({self.full} full), {self.seconds:.2f} s, longest {longest}"


def between(before: dict[str, Any] | None, after: dict[str, Any] | None) -> GcWindow | None:
    if before is None or after is None:
        return None
    start, end = float(before["at"]), float(after["at"])
    pauses = [seconds for wall, _, seconds, _ in after["slow"] if start <= wall <= end]
    return GcWindow(
        collections=sum(after["count"]) - sum(before["count"]),
        full=after["count"][2] - before["count"][2],
        seconds=sum(after["seconds"]) - sum(before["seconds"]),
        longest=max(pauses) if pauses else None,
        long=int(after.get("long", 0)) - int(before.get("long", 0)),
    )
