"""`opamp-operator dev` (what ./scripts/dev runs): start, a real agent shows up, clean stop."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import sys
import uuid
from pathlib import Path

import pytest

from opamp_operator.kube.shapes.naming import resource_name
from opamp_operator.testbed.processes import free_port
from tests.e2e.helpers import eventually
from tests.support.goagent import GoAgent
from tests.support.operator_process import REPO_ROOT, kubectl

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


async def test_dev_command_runs_the_whole_stack_and_stops_cleanly(tmp_path: Path) -> None:
    opamp_port, api_port = free_port(), free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "opamp_operator", "dev", "--workdir", str(tmp_path),
        "--listen-port", str(opamp_port), "--api-port", str(api_port),
        stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL, cwd=REPO_ROOT,
    )  # fmt: skip
    assert process.stderr is not None
    seen: list[str] = []
    kubeconfig: Path | None = None
    try:
        async with asyncio.timeout(90):
            while kubeconfig is None:
                line = (await process.stderr.readline()).decode()
                assert line, "dev exited early:\n" + "".join(seen)
                seen.append(line)
                if match := re.search(r"export KUBECONFIG=(\S+)", line):
                    kubeconfig = Path(match.group(1))
        drain = asyncio.create_task(_drain(process.stderr, seen))
        apiserver_port = int(re.findall(r"127\.0\.0\.1:(\d+)", kubeconfig.read_text())[0])
        agent_id = str(uuid.uuid4())
        async with GoAgent() as agent:
            url = f"ws://127.0.0.1:{opamp_port}/v1/opamp"
            await agent.start(url=url, instance_uid=agent_id, service_name="first-run", heartbeat=1)

            async def listed() -> str | None:
                out = await asyncio.to_thread(
                    kubectl, kubeconfig, "-n", "opamp-system", "get", "opampagents"
                )
                return out if resource_name(agent_id) in out and "Online" in out else None

            table = await eventually("the agent in kubectl get opampagents", listed, within=40)
            assert "first-run" in table
        process.send_signal(signal.SIGINT)
        async with asyncio.timeout(60):
            assert await process.wait() == 0, "".join(seen)
        await drain
        assert not _port_open(apiserver_port), "kube-apiserver left running"
        assert not _port_open(opamp_port), "OpAMP listener left running"
        assert any("stopping the local servers" in line for line in seen)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _drain(stream: asyncio.StreamReader, into: list[str]) -> None:
    while line := await stream.readline():
        into.append(line.decode())
