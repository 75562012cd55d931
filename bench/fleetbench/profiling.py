"""py-spy against a running process: record a window, then rank functions by GIL-held samples.

`--gil` samples only the thread holding the GIL, so the samples are the process's Python
CPU time wherever it runs (event loop or the Kubernetes client's threads).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

_LINE = re.compile(r"^(.*) (\d+)$")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]*)(?::\d+)?\)$")


def py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


async def record(pid: int, seconds: float, out: Path, rate: int = 100) -> Path | None:
    """Sample `pid` for `seconds` into `out` (collapsed stacks); None when py-spy is missing."""
    exe = py_spy()
    if exe is None:
        return None
    process = await asyncio.create_subprocess_exec(
        exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
        "--rate", str(rate), "--gil", "--nonblocking", "--format", "raw", "-o", str(out),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await process.communicate()
    if process.returncode != 0 or not await asyncio.to_thread(out.exists):
        print(f"py-spy failed: {err.decode(errors='replace')[-500:]}", file=sys.stderr)
        return None
    return out


@dataclass(frozen=True)
class Hot:
    where: str  # "function (file)", file shortened to the package path
    self_share: float  # fraction of all samples with this frame on top
    total_share: float  # fraction of all samples with this frame anywhere


def _short(path: str) -> str:
    if "opamp_operator/" in path:
        return "opamp_operator/" + path.split("opamp_operator/", 1)[1]
    for marker in ("site-packages/", "lib/python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def _frame(text: str) -> str:
    match = _FRAME.match(text)
    if match is None:
        return text
    return f"{match['func']} ({_short(match['file'])})"


def summarize(raw: Path, top: int = 20) -> tuple[int, list[Hot], list[Hot]]:
    """(samples, hottest by self time, hottest by inclusive time)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        match = _LINE.match(line)
        if match is None:
            continue
        count = int(match[2])
        frames = [_frame(f) for f in match[1].split(";") if f]
        if not frames:
            continue
        samples += count
        own[frames[-1]] += count
        for name in set(frames):
            total[name] += count
    if not samples:
        return 0, [], []

    def ranked(counter: Counter[str]) -> list[Hot]:
        return [
            Hot(name, own[name] / samples, total[name] / samples)
            for name, _ in counter.most_common(top)
        ]

    return samples, ranked(own), ranked(total)


# Where a sample's time goes, by the first matching marker anywhere in its stack.
_CATEGORIES: tuple[tuple[str, str], ...] = (
    ("kopf/", "Kopf (login, start-up; before issue 14 its OpAMPAgent watch and handlers)"),
    # Before issue 14 the kubernetes client ran requests in threads; now only the bench's
    # own gcwatch writer and asyncio's to_thread calls run in threads.
    ("_writer (fleetbench/gcwatch", "the benchmark's gcwatch thread"),
    ("Thread._bootstrap", "threads (to_thread calls; before issue 14 the kubernetes client)"),
    ("Informer", "OpAMPAgent and OpAMPAgentConfig watches (informers)"),
    ("kube/liveness/", "liveness (CR reads of due CRs)"),
    ("kube/gitops/", "GitOps resolution, settings, rollouts"),
    ("opamp_operator/kube/", "status writer, pod links, Leases"),
    ("handle_message", "fleet: handle_message"),
    ("opamp_operator/store/", "store writer (asyncpg)"),
    ("opamp_operator/api/", "REST API and /metrics"),
    # Plain HTTP: our HTTP/1.1 server (http11, httpconn) and the endpoint's checks (http).
    ("opamp_operator/transport/http", "plain HTTP: parsing, checks, body, responses"),
    ("aiohttp/", "aiohttp (before the own HTTP/1.1 server: plain HTTP's parsing, responses)"),
    ("websocket", "WebSocket framing and sessions"),
    ("transport/ownws", "WebSocket framing and sessions"),
    ("transport/rfc6455", "WebSocket framing and sessions"),
    ("selector_events", "asyncio socket transport"),
)


def categories(raw: Path) -> list[tuple[str, float]]:
    """Share of samples per part of the operator (the rest: event loop and other)."""
    counts: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        match = _LINE.match(line)
        if match is None:
            continue
        count = int(match[2])
        samples += count
        stack = match[1]
        name = next((label for marker, label in _CATEGORIES if marker in stack), "other")
        counts[name] += count
    return [(name, count / samples) for name, count in counts.most_common()] if samples else []
