"""The committed generated modules are exactly what scripts/gen_proto makes from the protos."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GENERATED = REPO / "operator" / "opamp_operator" / "opamp" / "generated"
SCRIPT = REPO / "scripts" / "gen_proto"


def _files(directory: Path) -> dict[str, bytes]:
    return {
        path.name: path.read_bytes()
        for path in sorted(directory.iterdir())
        if path.is_file() and path.suffix in {".py", ".pyi"}
    }


@pytest.mark.skipif(
    importlib.util.find_spec("grpc_tools") is None,
    reason="grpcio-tools (dev extra) is not installed: cannot regenerate",
)
def test_generated_modules_are_fresh(tmp_path: Path) -> None:
    done = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path)],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    fresh = _files(tmp_path)
    committed = _files(GENERATED)
    assert set(fresh) == {
        "__init__.py",
        "anyvalue_pb2.py",
        "anyvalue_pb2.pyi",
        "opamp_pb2.py",
        "opamp_pb2.pyi",
    }
    assert sorted(committed) == sorted(fresh), "generated/ has missing or extra files"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale generated modules {stale}: run scripts/gen_proto and commit"


def test_generated_imports_are_package_relative() -> None:
    source = (GENERATED / "opamp_pb2.py").read_text()
    assert "from . import anyvalue_pb2 as anyvalue__pb2" in source
    assert "\nimport anyvalue_pb2" not in source
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import opamp_operator.opamp.generated.opamp_pb2 as m; m.AgentToServer",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd="/",
    )
    assert done.returncode == 0, done.stderr
