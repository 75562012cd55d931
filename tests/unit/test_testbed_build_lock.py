"""Two first runs at once build each test-bed binary once: the second waits for the first."""

from __future__ import annotations

import fcntl
import threading
from pathlib import Path

import pytest

from opamp_operator.testbed import binaries


def test_a_build_waits_for_the_other_builder_and_reuses_its_binary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPAMP_OPERATOR_CACHE", str(tmp_path))
    monkeypatch.setattr("shutil.which", lambda _name: "/usr/bin/go")
    commands: list[list[str]] = []
    monkeypatch.setattr(binaries, "_run", lambda cmd, *_args: commands.append(cmd))
    waiting = threading.Event()
    monkeypatch.setattr(
        binaries, "_say", lambda _progress, message: waiting.set() if "waiting" in message else None
    )
    target = tmp_path / "bin" / "tool-v1"
    workdir = tmp_path / "build" / target.name
    workdir.mkdir(parents=True)
    with (workdir / ".lock").open("w") as other_builder:
        fcntl.flock(other_builder, fcntl.LOCK_EX)
        second = threading.Thread(
            target=lambda: binaries._build(
                name="tool", version="v1", go_mod="", package="x", target=target, progress=True
            )
        )
        second.start()
        assert waiting.wait(timeout=10), "the second build did not wait for the lock"
        target.parent.mkdir(parents=True)
        target.write_text("built by the other process")
    second.join(timeout=10)
    assert not second.is_alive()
    assert commands == []  # no `go mod tidy`, no `go build`: the binary was there
    assert target.read_text() == "built by the other process"
