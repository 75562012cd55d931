"""Child processes that die with us, free loopback ports, and polling helpers."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1


class StartupError(RuntimeError):
    """A test-bed server did not come up; the message carries the tail of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    # Linux-only: the kernel sends SIGTERM to the child when the test process dies,
    # even by SIGKILL, so an interrupted run leaves no orphaned servers.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _die_with_parent_as(uid: int, gid: int) -> Callable[[], None]:
    def prepare() -> None:
        os.setgid(gid)
        os.setgroups([])
        os.setuid(uid)
        _die_with_parent()  # after setuid: a uid change clears the death signal

    return prepare


class ManagedProcess:
    """A server process with its output in a log file, stopped by `stop()`."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        run_as: tuple[int, int] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_path
        log = log_path.open("ab")
        prepare = _die_with_parent_as(*run_as) if run_as else _die_with_parent
        self._process = subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=prepare,  # noqa: PLW1509 - needed for PDEATHSIG/setuid, no threads yet matter here
            env=env,
        )
        log.close()

    @property
    def pid(self) -> int:
        return self._process.pid

    def running(self) -> bool:
        return self._process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        if not self.running():
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout)

    def kill(self) -> None:
        if self.running():
            self._process.kill()
            self._process.wait()


def wait_until(
    what: str, check: Callable[[], bool], timeout: float, process: ManagedProcess
) -> None:
    """Poll `check` until true; fail early with the log if `process` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.running():
            raise StartupError(f"{process.name} exited before {what}:\n{process.log_tail()}")
        if check():
            return
        time.sleep(0.1)
    raise StartupError(
        f"{process.name}: timed out after {timeout:.0f}s waiting for {what}:\n{process.log_tail()}"
    )
