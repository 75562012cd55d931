"""CPU time and resident memory of a process, read from /proc (Linux only)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class ProcSample:
    at: float  # monotonic seconds
    cpu_seconds: float  # user + system, all threads
    rss_bytes: int


def sample(pid: int) -> ProcSample:
    """One reading; raises ProcessLookupError when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        with open(f"/proc/{pid}/statm", "rb") as statm:
            resident_pages = int(statm.read().split()[1])
    except FileNotFoundError:
        raise ProcessLookupError(pid) from None
    # fields[0] is the state (field 3 of stat(5)); utime and stime are fields 14 and 15.
    cpu = (int(fields[11]) + int(fields[12])) / _TICKS
    return ProcSample(time.monotonic(), cpu, resident_pages * _PAGE)


def sample_sum(pids: Sequence[int]) -> ProcSample:
    """Processes read as one (a fleet over several simulators): CPU and RSS summed."""
    readings = [sample(pid) for pid in pids]
    return ProcSample(
        max(r.at for r in readings),
        sum(r.cpu_seconds for r in readings),
        sum(r.rss_bytes for r in readings),
    )


def cpu_percent(before: ProcSample, after: ProcSample) -> float:
    """Average CPU use between two samples, in percent of one core."""
    elapsed = after.at - before.at
    return 100.0 * (after.cpu_seconds - before.cpu_seconds) / elapsed if elapsed > 0 else 0.0


class PeakRss:
    """Samples a process's RSS every `interval` seconds in the background; keeps the peak."""

    def __init__(self, pid: int, interval: float = 1.0) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"rss-{self.pid}")

    async def stop(self) -> int:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        return self.peak

    async def _run(self) -> None:
        while True:
            try:
                self.peak = max(self.peak, sample(self.pid).rss_bytes)
            except ProcessLookupError:
                return
            await asyncio.sleep(self.interval)


@dataclass(frozen=True)
class MachineSample:
    at: float
    busy: int  # jiffies spent not idle, all CPUs
    total: int


def machine_sample() -> MachineSample:
    """The whole machine's CPU counters (first line of /proc/stat)."""
    with open("/proc/stat", "rb") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return MachineSample(time.monotonic(), sum(fields[:8]) - idle, sum(fields[:8]))


def machine_busy_percent(before: MachineSample, after: MachineSample) -> float:
    """Share of all CPUs busy between two samples (100 % = every core busy)."""
    total = after.total - before.total
    return 100.0 * (after.busy - before.busy) / total if total > 0 else 0.0
