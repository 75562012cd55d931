"""What kstatus (sigs.k8s.io/cli-utils/pkg/kstatus/status, as Flux and kpt use it) says of objects.

The library runs in a small Go program (tests/tools/kstatus), built once into the cache like
the Go test agent (`goagent.ensure_kstatus_checker`), and fed the objects as JSON.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.goagent import ensure_kstatus_checker

_TIMEOUT_S = 30.0
_ROW = re.compile(r"^\| (OpAMPAgent|OpAMPAgentConfig) \| `([a-z-]+)` \| [^|]* \| (\w+) \|")


@dataclass(frozen=True, slots=True)
class Verdict:
    name: str
    kind: str
    status: str  # Current, InProgress, Failed, Terminating, ...
    message: str


async def compute(objects: Sequence[Mapping[str, Any]]) -> list[Verdict]:
    """The kstatus verdict of every object, in order."""
    binary = await asyncio.to_thread(ensure_kstatus_checker)
    process = await asyncio.create_subprocess_exec(
        str(binary),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(_TIMEOUT_S):
        out, err = await process.communicate(json.dumps(list(objects)).encode())
    if process.returncode != 0:
        raise AssertionError(f"kstatus-check failed ({process.returncode}): {err.decode()}")
    return [Verdict(**json.loads(line)) for line in out.decode().splitlines() if line]


def documented_verdicts(doc: Path) -> dict[tuple[str, str], str]:
    """(kind, case) -> kstatus verdict, from the table rows of `doc` (docs/gitops.md).

    Rows look like: | OpAMPAgent | `error` | what the case is | Failed | ... |
    """
    table: dict[tuple[str, str], str] = {}
    for line in doc.read_text().splitlines():
        match = _ROW.match(line)
        if match:
            table[(match[1], match[2])] = match[3]
    return table
