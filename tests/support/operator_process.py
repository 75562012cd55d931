"""The whole operator (`python -m opamp_operator run`) as a child process, for e2e tests."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from opamp_operator.testbed.processes import free_port
from tests.support.polling import eventually

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class OperatorConfig:
    kubeconfig: Path
    namespace: str
    dsn: str
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 3.0
    error_after_offline: float = 6.0
    last_seen_refresh: float | None = 30.0  # None: off (the operator's default)
    api_auth: bool = False
    replica_id: str = "e2e"
    listen_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    extra_args: Sequence[str] = ()
    log_level: str = "INFO"
    #: Extra environment variables (e.g. POD_ID for Kopf's peering identity).
    env: Mapping[str, str] = field(default_factory=dict)
    #: A command the operator runs under (e.g. prlimit and its arguments, ending in "--").
    launcher: Sequence[str] = ()

    def argv(self) -> list[str]:
        return [
            *self.launcher,
            sys.executable, "-m", "opamp_operator", "--log-level", self.log_level, "run",
            "--kubeconfig", str(self.kubeconfig), "--namespace", self.namespace,
            "--listen-host", "127.0.0.1", "--listen-port", str(self.listen_port),
            "--api-host", "127.0.0.1", "--api-port", str(self.api_port),
            "--api-auth", "true" if self.api_auth else "false",
            "--heartbeat-interval", str(self.heartbeat_interval),
            "--heartbeat-timeout", str(self.heartbeat_timeout),
            "--error-after-offline", str(self.error_after_offline),
            "--last-seen-refresh",
            "off" if self.last_seen_refresh is None else str(self.last_seen_refresh),
            "--flush-interval", "0.2",
            "--replica-id", self.replica_id,
            *self.extra_args,
        ]  # fmt: skip


class OperatorExited(AssertionError):
    """The operator process ended while a test waited for it."""


class OperatorProcess:
    """Start, stop (SIGTERM), kill (SIGKILL) and restart the operator; its log in a file."""

    def __init__(self, config: OperatorConfig, log_path: Path) -> None:
        self.config = config
        self.log_path = log_path
        self._process: asyncio.subprocess.Process | None = None

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.config.listen_port}/v1/opamp"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.config.listen_port}/v1/opamp"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.config.api_port}"

    @property
    def pid(self) -> int:
        return self._require().pid

    @property
    def returncode(self) -> int | None:
        """None while running (or never started)."""
        return None if self._process is None else self._process.returncode

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    async def start(self, within: float = 60.0) -> None:
        env = {
            **os.environ, "OPAMP_DATABASE_DSN": self.config.dsn, "PYTHONUNBUFFERED": "1",
            **self.config.env,
        }  # fmt: skip
        with self.log_path.open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                *self.config.argv(), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT
            )
        await self.wait_ready(within)

    async def wait_ready(self, within: float) -> None:
        async with aiohttp.ClientSession() as session:

            async def ready() -> bool:
                if self._process is not None and self._process.returncode is not None:
                    raise OperatorExited(f"operator exited early:\n{self.log_tail()}")
                async with session.get(f"{self.api_url}/readyz") as response:
                    return response.status == 200

            try:
                await eventually(
                    "the operator's /readyz 200",
                    ready,
                    within=within,
                    every=0.2,
                    ignoring=(aiohttp.ClientError,),
                )
            except OperatorExited:
                raise
            except AssertionError as error:
                raise AssertionError(f"{error}\n{self.log_tail()}") from None

    async def terminate(self, within: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code (fails the test if it hangs)."""
        process = self._require()
        process.send_signal(signal.SIGTERM)
        return await self._wait(within)

    async def kill(self) -> None:
        process = self._require()
        process.kill()
        await self._wait(10)

    async def _wait(self, within: float) -> int:
        process = self._require()
        try:
            async with asyncio.timeout(within):
                return await process.wait()
        except TimeoutError:
            process.kill()
            tail = self.log_tail()
            raise AssertionError(f"operator did not exit in {within}s:\n{tail}") from None

    def _require(self) -> asyncio.subprocess.Process:
        if self._process is None:
            raise RuntimeError("operator not started")
        return self._process

    async def cleanup(self, grace: float = 10.0) -> None:
        """Stop a process the test left running: SIGTERM (so it exits as in production and
        coverage saves its data), SIGKILL after `grace` seconds."""
        process = self._process
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(grace):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()

    async def get_json(self, path: str) -> Any:
        async with aiohttp.ClientSession() as session, session.get(self.api_url + path) as response:
            body = await response.text()
            assert response.status == 200, f"GET {path}: {response.status} {body}"
            return json.loads(body)

    async def metrics_text(self) -> str:
        async with aiohttp.ClientSession() as session, session.get(f"{self.api_url}/metrics") as r:
            return await r.text()

    def metric(self, name: str, **labels: str) -> Callable[[], Awaitable[float]]:
        """Reads the sum of `name{labels}` from /metrics (for `polling.grows`)."""

        async def read() -> float:
            return metric_value(await self.metrics_text(), name, labels or None)

        return read

    def passes(self, loop: str) -> Callable[[], Awaitable[float]]:
        """Reads `opamp_loop_passes_total{loop}` (for `tests.support.polling.rounds_pass`)."""
        return self.metric("opamp_loop_passes_total", loop=loop)


def kubectl(kubeconfig: Path, *args: str) -> str:
    result = subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), *args],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    if result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr}")
    return result.stdout


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, label_text = head.partition("{")
        if metric != name:
            continue
        if labels and not all(f'{k}="{v}"' in label_text for k, v in labels.items()):
            continue
        total += float(value)
    return total
