"""`promtool` (built from the Prometheus Go module by the test bed) on our rules and queries.

The PrometheusRule objects hold Prometheus rule groups in `spec.groups`; promtool reads plain
rule files, so the groups are written out to one first.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from opamp_operator.testbed.binaries import ensure_promtool

PROMTOOL_TIMEOUT_SECONDS = 120

Obj = dict[str, Any]


def run_promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ensure_promtool()), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=PROMTOOL_TIMEOUT_SECONDS,
    )


def promtool(*args: str, stdin: str | None = None) -> str:
    """Run promtool; fail with its output unless it exits 0; return stdout."""
    result = run_promtool(*args, stdin=stdin)
    assert result.returncode == 0, (
        f"promtool {' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
    )
    return result.stdout


def lint_metrics(exposition: str) -> list[str]:
    """`promtool check metrics` on a /metrics scrape: one line per naming problem."""
    result = run_promtool("check", "metrics", stdin=exposition)
    assert result.returncode in (0, 3), f"promtool check metrics failed:\n{result.stderr}"
    return sorted(line.strip() for line in result.stderr.splitlines() if line.strip())


def write_rule_file(groups: list[Obj], path: Path) -> Path:
    """A Prometheus rule file holding `groups` (a PrometheusRule's spec.groups)."""
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


def check_queries(exprs: dict[str, str], directory: Path) -> None:
    """Every PromQL expression parses: promtool cannot parse a query offline, but it checks
    each recording rule of a file, so every expression becomes one."""
    rules = [
        {"record": "check:" + re.sub(r"[^a-zA-Z0-9_]", "_", name), "expr": expr}
        for name, expr in exprs.items()
    ]
    path = write_rule_file([{"name": "queries", "rules": rules}], directory / "queries.yaml")
    promtool("check", "rules", str(path))
