"""Build and drive the opamp-go test agent and the reference OpAMP peer server.

Both are small Go programs in this repository (tests/agents/goagent and
bench/peer) built on the opamp-go library; the kstatus checker
(tests/tools/kstatus, see tests/support/kstatus.py) is built the same way.
The first two print one JSON object per line on stdout. This module builds
each once into a cache keyed by a hash of its sources and runs them as
asyncio subprocesses whose events can be awaited.

    async with GoAgent() as agent:
        await agent.start(url="ws://127.0.0.1:4320/v1/opamp", heartbeat=0.5)
        await agent.wait_for_event("connected")
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

REPO_ROOT = Path(__file__).resolve().parents[2]
GOAGENT_DIR = REPO_ROOT / "tests" / "agents" / "goagent"
PEER_DIR = REPO_ROOT / "bench" / "peer"
KSTATUS_DIR = REPO_ROOT / "tests" / "tools" / "kstatus"

_BUILD_TIMEOUT_S = 600.0
_STDERR_LINES_KEPT = 200
_MAX_LINE_BYTES = 1 << 20
_SHOWN_EVENTS = 20
_PEER_READY_S = 30.0


class GoToolchainMissingError(RuntimeError):
    """The go tool is not on PATH, so the Go test programs cannot be built."""


class GoBuildError(RuntimeError):
    """`go build` failed; the message carries its output."""


class ProcessExitedError(RuntimeError):
    """The process ended before the awaited event arrived."""


@dataclass(frozen=True)
class ProcessEvent:
    """One JSON line from the process's stdout."""

    index: int  # position in the stream, usable as `start=` for later waits
    name: str  # the "event" field
    data: Mapping[str, Any]  # the whole object, "event" and "ts" included

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)


# --------------------------------------------------------------------------- building


def cache_dir() -> Path:
    """Where built binaries live: $OPAMP_OPERATOR_CACHE or ~/.cache/opamp-operator."""
    configured = os.environ.get("OPAMP_OPERATOR_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "opamp-operator"


def source_digest(module_dir: Path) -> str:
    """12 hex chars of sha256 over the module's non-test Go sources, go.mod and go.sum."""
    files = sorted(
        p
        for p in module_dir.rglob("*")
        if p.is_file()
        and (
            p.name in ("go.mod", "go.sum")
            or (p.suffix == ".go" and not p.name.endswith("_test.go"))
        )
    )
    digest = hashlib.sha256()
    for path in files:
        # The path is hashed too, so renaming or moving a file rebuilds.
        digest.update(path.relative_to(module_dir).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def _ensure_binary(module_dir: Path, name: str) -> Path:
    target = cache_dir() / "bin" / f"{name}-{source_digest(module_dir)}"
    if target.is_file():
        return target
    go = shutil.which("go")
    if go is None:
        raise GoToolchainMissingError(
            f"cannot build {name}: the `go` tool is not on PATH. Install Go >= 1.24 "
            "(https://go.dev/dl/) and make sure the Go module proxy is reachable, "
            f"or put a prebuilt binary at {target}."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build next to the target and rename: concurrent builders never see a
    # half-written binary, and the last rename wins with identical content.
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    print(
        f"[goagent] building {name} from {module_dir} -> {target} (the first build downloads "
        "its Go modules: up to a few minutes)",
        file=sys.stderr,
    )
    started = time.monotonic()
    try:
        result = subprocess.run(
            [go, "build", "-trimpath", "-o", str(partial), "."],
            cwd=module_dir,
            capture_output=True,
            text=True,
            timeout=_BUILD_TIMEOUT_S,
            check=False,
        )
        if result.returncode != 0:
            raise GoBuildError(
                f"go build of {name} in {module_dir} failed (exit {result.returncode}):\n"
                f"{result.stdout}{result.stderr}"
            )
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    print(f"[goagent] built {target} in {time.monotonic() - started:.1f} s", file=sys.stderr)
    return target


def ensure_goagent() -> Path:
    """Build the opamp-go test agent (once per source version) and return its path.

    Blocking (runs `go build` on a cache miss): from async code use
    `await asyncio.to_thread(ensure_goagent)`.
    """
    return _ensure_binary(GOAGENT_DIR, "opamp-goagent")


def ensure_peer_server() -> Path:
    """Build the reference OpAMP peer server (bench/peer) and return its path. Blocking."""
    return _ensure_binary(PEER_DIR, "opamp-peer")


def ensure_kstatus_checker() -> Path:
    """Build the kstatus checker (tests/tools/kstatus) and return its path. Blocking."""
    return _ensure_binary(KSTATUS_DIR, "kstatus-check")


# --------------------------------------------------------------------------- processes


class JsonLinesProcess:
    """A child process that reports events as JSON lines on stdout.

    Every line is kept in `events` (the stream is short-lived test output);
    stderr keeps only its last lines, for error messages. Used as an async
    context manager the process is always SIGKILLed on exit if still running.
    """

    def __init__(self, binary: Path | None = None) -> None:
        self._binary = binary
        self._proc: asyncio.subprocess.Process | None = None
        self._events: list[ProcessEvent] = []
        self._stderr: deque[str] = deque(maxlen=_STDERR_LINES_KEPT)
        self._changed: asyncio.Condition | None = None
        self._readers: list[asyncio.Task[None]] = []
        self._stdout_done = False
        self.args: list[str] = []

    # -- to override
    def _build_binary(self) -> Path:
        raise NotImplementedError

    # -- state
    @property
    def events(self) -> Sequence[ProcessEvent]:
        return tuple(self._events)

    @property
    def pid(self) -> int:
        return self._process().pid

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.returncode

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def stderr_tail(self) -> str:
        return "\n".join(self._stderr)

    def _process(self) -> asyncio.subprocess.Process:
        if self._proc is None:
            raise RuntimeError(f"{type(self).__name__} was not started")
        return self._proc

    @property
    def instance_uid(self) -> str | None:
        """32 lowercase hex digits, from the "started" event (None before it)."""
        started = self.events_named("started")
        return str(started[0].data["instance_uid"]) if started else None

    def freeze(self) -> None:
        """SIGSTOP: sockets stay open, nothing is sent (no heartbeats, no pongs)."""
        self.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT: undo freeze() (or the Go agent's --silent-after)."""
        self.send_signal(signal.SIGCONT)

    # -- lifecycle
    async def _spawn(self, args: Sequence[str]) -> None:
        if self._proc is not None:
            raise RuntimeError(f"{type(self).__name__} already started")
        binary = self._binary or await asyncio.to_thread(self._build_binary)
        self.args = [str(binary), *args]
        self._changed = asyncio.Condition()
        self._proc = await asyncio.create_subprocess_exec(
            *self.args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=_MAX_LINE_BYTES,
        )
        assert self._proc.stdout is not None and self._proc.stderr is not None
        self._readers = [
            asyncio.create_task(self._read_stdout(self._proc.stdout)),
            asyncio.create_task(self._read_stderr(self._proc.stderr)),
        ]

    async def _read_stdout(self, stream: asyncio.StreamReader) -> None:
        try:
            while line := await stream.readline():
                await self._record(line)
        except (ValueError, asyncio.LimitOverrunError) as exc:  # line over _MAX_LINE_BYTES
            self._stderr.append(f"[wrapper] stdout reader stopped: {exc!r}")
        finally:
            self._stdout_done = True
            await self._notify()

    async def _record(self, line: bytes) -> None:
        text = line.decode(errors="replace").strip()
        if not text:
            return
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            obj = None
        if not isinstance(obj, dict):
            obj = {"event": "unparsed", "line": text}
        name = obj.get("event")
        self._events.append(ProcessEvent(len(self._events), str(name), obj))
        await self._notify()

    async def _notify(self) -> None:
        if self._changed is not None:
            async with self._changed:
                self._changed.notify_all()

    async def _read_stderr(self, stream: asyncio.StreamReader) -> None:
        # Read in chunks, not lines, so that no line length can stop the
        # draining: a child blocked on a full stderr pipe would hang the test.
        pending = b""
        while chunk := await stream.read(65536):
            *lines, pending = (pending + chunk).split(b"\n")
            self._stderr.extend(line.decode(errors="replace") for line in lines)
            pending = pending[-_MAX_LINE_BYTES:]
        if pending:
            self._stderr.append(pending.decode(errors="replace"))

    async def wait_for_event(
        self,
        name: str,
        timeout: float = 10.0,  # noqa: ASYNC109 - own deadline: the error lists recent events
        *,
        start: int = 0,
        where: Callable[[ProcessEvent], bool] | None = None,
    ) -> ProcessEvent:
        """Return the first event called `name` at index >= `start` matching `where`.

        Raises TimeoutError after `timeout` seconds and ProcessExitedError if
        the process's stdout ends first; both messages list the recent events.
        """
        self._process()
        assert self._changed is not None
        try:
            async with asyncio.timeout(timeout), self._changed:
                while True:
                    for event in self._events[start:]:
                        if event.name == name and (where is None or where(event)):
                            return event
                    if self._stdout_done:
                        raise ProcessExitedError(self._describe(f"exited before {name!r}"))
                    await self._changed.wait()
        except TimeoutError:
            raise TimeoutError(self._describe(f"no {name!r} within {timeout}s")) from None

    def events_named(self, name: str, *, start: int = 0) -> list[ProcessEvent]:
        return [e for e in self._events[start:] if e.name == name]

    def _describe(self, what: str) -> str:
        recent = "\n".join(json.dumps(e.data) for e in self._events[-_SHOWN_EVENTS:])
        return (
            f"{type(self).__name__} (pid {self.pid}, exit {self.returncode}): {what}\n"
            f"args: {self.args}\nlast events:\n{recent}\nstderr tail:\n{self.stderr_tail}"
        )

    def send_signal(self, sig: signal.Signals) -> None:
        if self.running:
            os.kill(self.pid, sig)

    async def wait(self) -> int:
        """Wait for exit and for stdout to be fully read; return the exit code.

        Unbounded: wrap in asyncio.timeout().
        """
        code = await self._process().wait()
        await asyncio.gather(*self._readers, return_exceptions=True)
        return code

    async def kill(self) -> int:
        """SIGKILL (works on a frozen process too) and reap."""
        self.send_signal(signal.SIGKILL)
        return await self.wait()

    async def terminate(self, grace: float = 15.0) -> int:
        """SIGCONT + SIGTERM; after `grace` seconds SIGKILL and raise TimeoutError."""
        # A stopped process only handles SIGTERM once continued.
        self.send_signal(signal.SIGCONT)
        self.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(grace):
                return await self.wait()
        except TimeoutError:
            await self.kill()
            raise TimeoutError(self._describe(f"still running {grace}s after SIGTERM")) from None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._proc is not None:
            await self.kill()


def go_duration(seconds: float) -> str:
    """A Go time.Duration flag value with millisecond resolution."""
    if seconds < 0:
        raise ValueError(f"negative duration: {seconds}")
    return f"{round(seconds * 1000)}ms"


def agent_args(
    *,
    url: str,
    instance_uid: str | uuid.UUID | None = None,
    service_name: str | None = None,
    service_version: str | None = None,
    host_name: str | None = None,
    attrs: Mapping[str, str] | None = None,
    id_attrs: Mapping[str, str] | None = None,
    heartbeat: float | None = None,
    token: str | None = None,
    accept_remote_config: bool = False,
    silent_after: float | None = None,
    run_for: float | None = None,
    no_disconnect: bool = False,
    http_disconnect: bool = False,
    unhealthy: bool = False,
    debug: bool = False,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The goagent command line for these settings (durations in seconds)."""
    args = ["--url", url]
    optional: list[tuple[str, str | None]] = [
        ("--instance-uid", None if instance_uid is None else str(instance_uid)),
        ("--service-name", service_name),
        ("--service-version", service_version),
        ("--host-name", host_name),
        ("--heartbeat", None if heartbeat is None else go_duration(heartbeat)),
        ("--token", token),
        ("--silent-after", None if silent_after is None else go_duration(silent_after)),
        ("--run-for", None if run_for is None else go_duration(run_for)),
    ]
    args += [item for flag, value in optional if value is not None for item in (flag, value)]
    args += [item for k, v in (id_attrs or {}).items() for item in ("--id-attr", f"{k}={v}")]
    args += [item for k, v in (attrs or {}).items() for item in ("--attr", f"{k}={v}")]
    switches = {
        "--accept-remote-config": accept_remote_config,
        "--no-disconnect": no_disconnect,
        "--http-disconnect": http_disconnect,
        "--unhealthy": unhealthy,
        "--debug": debug,
    }
    args += [flag for flag, on in switches.items() if on]
    return [*args, *extra_args]


class GoAgent(JsonLinesProcess):
    """The opamp-go test agent (tests/agents/goagent) as an asyncio subprocess.

    Events (the "event" field): started, connected, connect_failed, error,
    message, remote_config, silent, resumed, stopping, stopped, log, dropped.
    """

    def _build_binary(self) -> Path:
        return ensure_goagent()

    async def start(
        self,
        *,
        url: str,
        instance_uid: str | uuid.UUID | None = None,
        service_name: str | None = None,
        service_version: str | None = None,
        host_name: str | None = None,
        attrs: Mapping[str, str] | None = None,
        id_attrs: Mapping[str, str] | None = None,
        heartbeat: float | None = None,
        token: str | None = None,
        accept_remote_config: bool = False,
        silent_after: float | None = None,
        run_for: float | None = None,
        no_disconnect: bool = False,
        http_disconnect: bool = False,
        unhealthy: bool = False,
        debug: bool = False,
        extra_args: Sequence[str] = (),
    ) -> None:
        """Launch the agent; see agent_args for the flag mapping. Returns once spawned."""
        await self._spawn(
            agent_args(
                url=url,
                instance_uid=instance_uid,
                service_name=service_name,
                service_version=service_version,
                host_name=host_name,
                attrs=attrs,
                id_attrs=id_attrs,
                heartbeat=heartbeat,
                token=token,
                accept_remote_config=accept_remote_config,
                silent_after=silent_after,
                run_for=run_for,
                no_disconnect=no_disconnect,
                http_disconnect=http_disconnect,
                unhealthy=unhealthy,
                debug=debug,
                extra_args=extra_args,
            )
        )

    async def stop(self, grace: float = 15.0) -> int:
        """Graceful stop: SIGTERM makes the agent call client.Stop (see README).

        Returns the exit code (0 when client.Stop succeeded).
        """
        return await self.terminate(grace)


class PeerServer(JsonLinesProcess):
    """The reference OpAMP server (bench/peer) on loopback."""

    def __init__(self, binary: Path | None = None) -> None:
        super().__init__(binary)
        self.addr = ""

    def _build_binary(self) -> Path:
        return ensure_peer_server()

    async def start(
        self,
        *,
        listen: str = "127.0.0.1:0",
        token: str | None = None,
        remote_config: str | None = None,
        verbose: bool = False,
    ) -> str:
        """Launch and wait until it listens; returns host:port (port 0 picks a free one)."""
        args = ["--listen", listen]
        if token is not None:
            args += ["--token", token]
        if remote_config is not None:
            args += ["--remote-config", remote_config]
        if verbose:
            args.append("--verbose")
        await self._spawn(args)
        listening = await self.wait_for_event("listening", _PEER_READY_S)
        self.addr = str(listening.data["addr"])
        return self.addr

    @property
    def ws_url(self) -> str:
        return f"ws://{self.addr}/v1/opamp"

    @property
    def http_url(self) -> str:
        return f"http://{self.addr}/v1/opamp"

    async def agents(self) -> list[dict[str, Any]]:
        """GET /agents: what the peer knows of every agent."""
        import aiohttp

        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.get(f"http://{self.addr}/agents") as resp,
        ):
            resp.raise_for_status()
            body = await resp.json()
        if not isinstance(body, list):
            raise TypeError(f"/agents returned {type(body).__name__}, want a list")
        return [dict(item) for item in body]

    async def stop(self, grace: float = 15.0) -> int:
        return await self.terminate(grace)
