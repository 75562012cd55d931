"""Command-line flags of `opamp-operator simulate`, parsed into a SimulationConfig."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Final

from opamp_operator.simulator.config import (
    MAX_CONNECTIONS_CAP,
    SimulationConfig,
    SimulationConfigError,
)
from opamp_operator.simulator.runner import run_simulation

DEFAULT_URL: Final = "ws://127.0.0.1:4320/v1/opamp"
_DEFAULTS: Final = SimulationConfig(url=DEFAULT_URL)


def add_simulate_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the simulator's flags to `parser` (a subcommand parser)."""
    d = _DEFAULTS
    add = parser.add_argument
    add("--url", default=DEFAULT_URL, help=f"OpAMP endpoint, loopback only (default {DEFAULT_URL})")
    add("--agents", type=int, default=d.agents, help=f"simulated agents (default {d.agents})")
    add(
        "--transport",
        choices=["ws", "http"],
        default=None,
        help="ws or http (default: from the URL scheme; a mismatch switches the scheme)",
    )
    add(
        "--heartbeat",
        type=float,
        default=None,
        metavar="SECONDS",
        help="fixed heartbeat interval (default: the server's offer, else 30)",
    )
    add(
        "--ramp",
        type=float,
        default=d.ramp,
        metavar="PER_SECOND",
        help=f"agents started per second; 0 starts all at once (default {d.ramp:g})",
    )
    add(
        "--duration",
        type=float,
        default=d.duration,
        metavar="SECONDS",
        help=f"length of the load phase; the run always stops (default {d.duration:g})",
    )
    add(
        "--churn",
        type=float,
        default=d.churn,
        metavar="PER_SECOND",
        help="agents per second that say goodbye, close and come back (default 0)",
    )
    add(
        "--churn-delay",
        type=float,
        default=d.churn_delay,
        metavar="SECONDS",
        help=f"mean pause before a churned agent reconnects (default {d.churn_delay:g})",
    )
    add(
        "--silent",
        type=_silent,
        default=(0, 0.0),
        metavar="N|FRACTION|PERCENT%",
        help="agents that stop sending but keep the socket open: 25, 0.1 or 10%% (default 0)",
    )
    add(
        "--silent-after",
        type=float,
        default=None,
        metavar="SECONDS",
        help="when they go silent, after the start (default: half the duration)",
    )
    add(
        "--silent-freeze",
        action="store_true",
        help="silent WebSocket agents also stop reading (no pongs), like a frozen process",
    )
    add("--token", default=None, help="bearer token (visible in ps: prefer --token-file)")
    add("--token-file", type=Path, default=None, help="read the bearer token from this file")
    add(
        "--max-connections",
        type=int,
        default=d.max_connections,
        help=f"refuse more agents than this (default {d.max_connections}, "
        f"at most {MAX_CONNECTIONS_CAP})",
    )
    add(
        "--http-connections",
        type=int,
        default=d.http_connections,
        help=f"HTTP connection pool size (default {d.http_connections})",
    )
    add(
        "--name-prefix",
        default=d.name_prefix,
        help=f"service.name is <prefix>-<group> (default {d.name_prefix!r})",
    )
    add("--groups", type=int, default=d.groups, help="service.name groups (default 1)")
    add("--service-version", default=d.service_version, help="service.version attribute")
    add("--seed", type=int, default=None, help="random seed, for repeatable runs")
    add(
        "--stop-grace",
        type=float,
        default=d.stop_grace,
        metavar="SECONDS",
        help=f"time for goodbyes at the end (default {d.stop_grace:g})",
    )
    add(
        "--connect-timeout",
        type=float,
        default=d.connect_timeout,
        metavar="SECONDS",
        help=f"connect / handshake timeout (default {d.connect_timeout:g})",
    )
    add(
        "--no-gc-tuning",
        action="store_true",
        help="leave the garbage collector alone (default: freeze the heap during the ramp)",
    )
    add(
        "--report-json",
        type=Path,
        default=None,
        metavar="PATH",
        help="also write the report as JSON here ('-' for stdout)",
    )


def _silent(text: str) -> tuple[int, float]:
    """'25' -> 25 agents; '0.1' or '10%' -> a fraction of the fleet."""
    try:
        if text.endswith("%"):
            return 0, float(text[:-1]) / 100
        if text.isdigit():
            return int(text), 0.0
        return 0, float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a count, fraction or percentage: {text!r}") from None


def config_from_args(args: argparse.Namespace) -> SimulationConfig:
    """Build the config from parsed flags; raises SimulationConfigError when they do not fit."""
    token: str | None = args.token
    if args.token_file is not None:
        if token is not None:
            raise SimulationConfigError("give --token or --token-file, not both")
        try:
            token = args.token_file.read_text().strip()
        except OSError as exc:
            raise SimulationConfigError(f"cannot read --token-file: {exc}") from None
    silent_count, silent_fraction = args.silent
    return SimulationConfig(
        url=args.url,
        agents=args.agents,
        transport=args.transport,
        heartbeat=args.heartbeat,
        ramp=args.ramp,
        duration=args.duration,
        churn=args.churn,
        churn_delay=args.churn_delay,
        silent_count=silent_count,
        silent_fraction=silent_fraction,
        silent_after=args.silent_after,
        silent_freeze=args.silent_freeze,
        token=token,
        max_connections=args.max_connections,
        http_connections=args.http_connections,
        name_prefix=args.name_prefix,
        groups=args.groups,
        service_version=args.service_version,
        seed=args.seed,
        stop_grace=args.stop_grace,
        connect_timeout=args.connect_timeout,
        tune_gc=not args.no_gc_tuning,
    )


def run_from_args(args: argparse.Namespace) -> int:
    """The whole `simulate` command: run, print the table, maybe write JSON.

    Exit status: 0 when at least one agent connected, 1 when none did,
    2 for a configuration error (including a non-loopback target).
    """
    try:
        config = config_from_args(args)
        report = asyncio.run(run_simulation(config))
    except SimulationConfigError as exc:
        print(f"opamp-operator simulate: {exc}", file=sys.stderr)
        return 2
    print(report.to_table())
    if args.report_json is not None:
        text = json.dumps(report.to_dict(), indent=2)
        if str(args.report_json) == "-":
            print(text)
        else:
            args.report_json.write_text(text + "\n")
    return 0 if report.peak_connected else 1
