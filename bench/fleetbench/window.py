"""One measured window of the fleet scenario: the operator, the simulators, the machine,
the control plane (kube-apiserver, etcd) and PostgreSQL, between two samples."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from tests.support.operator_process import OperatorProcess

from . import gcwatch, planestat
from .pgstats import PgCounters, counters
from .procstat import cpu_percent, machine_busy_percent, machine_sample, sample, sample_sum
from .stack import TestBed, gc_totals, operator_pid, scrape


@dataclass
class Window:
    seconds: float
    agents: int
    operator_cpu_pct: float
    operator_rss: int
    sim_cpu_pct: float
    sim_rss: int
    machine_busy_pct: float  # all cores, every process on the machine
    messages: float
    kube_writes: float
    transitions: float
    db_rows: float
    pg: PgCounters
    gc: gcwatch.GcWindow | None = None
    plane: planestat.PlaneWindow | None = None  # kube-apiserver and etcd


async def measure_window(
    op: OperatorProcess,
    bed: TestBed,
    database: str,
    *,
    sim_pids: Sequence[int],
    seconds: float,
    agents: int,
) -> Window:
    pid = operator_pid(op)
    assert bed.pg is not None
    gc0, k0 = gc_totals(op), await planestat.plane_sample(bed.plane)
    m0, p0 = await scrape(op.api_url), await counters(bed.pg, database)
    s0, q0, c0 = sample(pid), sample_sum(sim_pids), machine_sample()
    await asyncio.sleep(seconds)
    m1, p1 = await scrape(op.api_url), await counters(bed.pg, database)
    s1, q1, c1 = sample(pid), sample_sum(sim_pids), machine_sample()
    k1 = await planestat.plane_sample(bed.plane)
    await asyncio.sleep(1.1)  # the gc stats file is rewritten every second
    gc1 = gc_totals(op)

    def delta(name: str) -> float:
        return m1.value(name) - m0.value(name)

    return Window(
        seconds=s1.at - s0.at,
        agents=agents,
        operator_cpu_pct=cpu_percent(s0, s1),
        operator_rss=s1.rss_bytes,
        sim_cpu_pct=cpu_percent(q0, q1),
        sim_rss=q1.rss_bytes,
        machine_busy_pct=machine_busy_percent(c0, c1),
        messages=delta("opamp_messages_received_total"),
        kube_writes=delta("opamp_kube_writes_total"),
        transitions=delta("opamp_agent_phase_transitions_total"),
        db_rows=delta("opamp_db_writes_total"),
        pg=PgCounters(
            p1.statements - p0.statements,
            p1.control - p0.control,
            p1.transactions - p0.transactions,
            p1.rows - p0.rows,
        ),
        gc=gcwatch.between(gc0, gc1),
        plane=planestat.between(k0, k1),
    )
