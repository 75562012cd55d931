"""`opamp-operator run | dev | migrate | config-reference`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from .config import ConfigError
from .options import add_options, reference_markdown, settings_from
from .simulator import add_simulate_arguments, run_from_args

log = logging.getLogger("opamp_operator")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="opamp-operator", description=__doc__)
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the operator against the configured cluster")
    add_options(run)

    dev = commands.add_parser(
        "dev", help="run on an embedded default: local kube-apiserver + etcd + PostgreSQL"
    )
    dev.add_argument("--workdir", default=None, help="where the local servers keep state")
    dev.add_argument("--demo-agents", type=int, default=0, help="start N simulated agents")
    add_options(dev)

    migrate = commands.add_parser("migrate", help="apply or revert database migrations")
    migrate.add_argument("direction", choices=["up", "down", "status", "force"])
    migrate.add_argument("steps", nargs="?", type=int, default=None)
    migrate.add_argument("--migrations-dir", default=None)
    add_options(migrate)

    simulate = commands.add_parser(
        "simulate", help="run N simulated OpAMP agents against a loopback server"
    )
    add_simulate_arguments(simulate)

    commands.add_parser("config-reference", help="print every flag and variable as Markdown")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "config-reference":
        print(reference_markdown())
        return 0
    if args.command == "simulate":
        return run_from_args(args)
    try:
        settings = settings_from(args)
    except ConfigError as error:
        print(f"opamp-operator: configuration error: {error}", file=sys.stderr)
        return 2
    if args.command == "migrate":
        from .store.cli import run_migrate_command

        return asyncio.run(run_migrate_command(settings, args.direction, args.steps,
                                               args.migrations_dir))  # fmt: skip
    if args.command == "dev":
        from .devmode import run_dev

        exit_at_once(run_dev(settings, workdir=args.workdir, demo_agents=args.demo_agents))
    from .app import run_operator

    exit_at_once(run_operator(settings))


def exit_at_once(code: int) -> NoReturn:
    """Leave without the interpreter's teardown once the operator has stopped: everything
    is written and closed by then, and tearing down the heap of 10,000 agents (330 MiB)
    took 2.4 s of the SIGTERM-to-exit time (docs/benchmarks.md, run D). Coverage saves its
    data on os._exit too (pyproject: patch = _exit)."""
    logging.shutdown()  # flushes every handler
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
