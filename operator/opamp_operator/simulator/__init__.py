"""A fleet of simulated OpAMP agents in one asyncio process, for load and failure tests.

    config = SimulationConfig(url="ws://127.0.0.1:4320/v1/opamp", agents=1000, heartbeat=1)
    report = await run_simulation(config)
    print(report.to_table())

Modules: `config` (settings, loopback rule), `wire` (messages, pure),
`agent` (per-agent state, shared rules; its backoff is `opamp_operator.backoff`),
`ws` / `http` (transport loops), `runner` (ramp, churn, silence, stop),
`stats` / `report` (results), `args` (CLI flags).
"""

from opamp_operator.simulator.args import (
    add_simulate_arguments,
    config_from_args,
    run_from_args,
)
from opamp_operator.simulator.config import (
    MAX_CONNECTIONS_CAP,
    SimulationConfig,
    SimulationConfigError,
    ensure_loopback,
    is_loopback_address,
)
from opamp_operator.simulator.report import SilentAgent, SimulationReport
from opamp_operator.simulator.runner import run_simulation

__all__ = [
    "MAX_CONNECTIONS_CAP",
    "SilentAgent",
    "SimulationConfig",
    "SimulationConfigError",
    "SimulationReport",
    "add_simulate_arguments",
    "config_from_args",
    "ensure_loopback",
    "is_loopback_address",
    "run_from_args",
    "run_simulation",
]
