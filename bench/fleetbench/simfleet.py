"""One simulated fleet over several simulator processes, behind one Simulator's interface.

One `opamp-operator simulate` process holds at most MAX_CONNECTIONS_CAP agents (and, on
two cores, one event loop is the limit well before that), so a fleet larger than
`per_simulator` is split over processes that differ by name prefix and seed (instance
uids and service names never collide) and share the ramp, so all finish connecting
together. The scenario starts, waits for, kills and samples the group as it would one
simulator; their CPU and RSS add up (procstat per pid).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from pathlib import Path
from typing import Any

from opamp_operator.simulator.config import MAX_CONNECTIONS_CAP

from .stack import SimPlan, Simulator

DEFAULT_PER_SIMULATOR = MAX_CONNECTIONS_CAP
SEED_STRIDE = 100  # process i gets seed + i * stride: apart from the silent (2) and churn (3) runs


def split(agents: int, per_simulator: int) -> list[int]:
    """Agents per process: as few processes as fit `per_simulator` each, shares within one."""
    if agents < 1 or per_simulator < 1:
        raise ValueError("agents and per_simulator must be positive")
    count = math.ceil(agents / per_simulator)
    base, extra = divmod(agents, count)
    return [base + (1 if i < extra else 0) for i in range(count)]


def member_plans(plan: SimPlan, per_simulator: int) -> list[SimPlan]:
    """`plan` split over processes; one process keeps `plan` unchanged."""
    shares = split(plan.agents, per_simulator)
    if len(shares) == 1:
        return [plan]
    return [
        dataclasses.replace(
            plan,
            agents=share,
            ramp=plan.ramp * share / plan.agents,
            name_prefix=f"{plan.name_prefix}{i + 1}",
            seed=plan.seed + i * SEED_STRIDE,
        )
        for i, share in enumerate(shares)
    ]


class SimulatorGroup:
    """`Simulator`s started, awaited and killed together; `name` as a Simulator's (logs)."""

    def __init__(
        self, plan: SimPlan, url: str, workdir: Path, name: str, per_simulator: int
    ) -> None:
        plans = member_plans(plan, per_simulator)
        names = [name] if len(plans) == 1 else [f"{name}-{i + 1}" for i in range(len(plans))]
        self.plan = plan
        self.members = [Simulator(p, url, workdir, n) for p, n in zip(plans, names, strict=True)]

    @property
    def pids(self) -> list[int]:
        return [m.pid for m in self.members]

    async def start(self) -> None:
        for member in self.members:
            await member.start()

    async def wait(self) -> list[dict[str, Any]]:
        """Every member's report (each bounded by its duration, as `Simulator.wait`)."""
        return list(await asyncio.gather(*(m.wait() for m in self.members)))

    async def kill(self) -> None:
        await asyncio.gather(*(m.kill() for m in self.members))
