"""Helpers for the fault-injection tests (tests/e2e/test_faults_*.py): raw OpAMP messages,
history rows, the operator's /readyz and its resident memory."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from opamp_operator.opamp.messages import AgentToServer, ServerToAgent, parse_server_to_agent
from tests.support.operator_process import OperatorProcess, kubectl

PROTOBUF = {"Content-Type": "application/x-protobuf"}


def hello(uid: uuid.UUID, name: str = "raw", sequence_num: int = 0) -> AgentToServer:
    """A first message: instance uid and an identifying service.name."""
    message = AgentToServer(instance_uid=uid.bytes, sequence_num=sequence_num)
    attribute = message.agent_description.identifying_attributes.add(key="service.name")
    attribute.value.string_value = name
    return message


async def post_opamp(
    session: aiohttp.ClientSession, url: str, message: AgentToServer
) -> tuple[int, ServerToAgent | None]:
    """POST one AgentToServer; the status and the decoded ServerToAgent (None if not 200)."""
    body = message.SerializeToString()
    limit = aiohttp.ClientTimeout(total=5.0)
    async with session.post(url, data=body, headers=PROTOBUF, timeout=limit) as response:
        data = await response.read()
        if response.status != 200:
            return response.status, None
        return response.status, parse_server_to_agent(data)


async def readyz(operator: OperatorProcess) -> tuple[int, dict[str, Any]]:
    url = f"{operator.api_url}/readyz"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, json.loads(await response.text())


async def fetch(dsn: str, query: str, *args: object) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(dsn)
    try:
        return list(await connection.fetch(query, *args))
    finally:
        await connection.close()


async def history(dsn: str, agent_ids: Iterable[str] | None = None) -> list[asyncpg.Record]:
    """Connection history rows (of these agents, or all), oldest first."""
    if agent_ids is None:
        return await fetch(dsn, "SELECT * FROM agent_connection_history ORDER BY id")
    return await fetch(
        dsn,
        "SELECT * FROM agent_connection_history WHERE agent_id = ANY($1::text[]) ORDER BY id",
        list(agent_ids),
    )


def agent_crs(kubeconfig: Path, namespace: str) -> list[dict[str, Any]]:
    out = kubectl(kubeconfig, "-n", namespace, "get", "opampagents", "-o", "json")
    return list(json.loads(out)["items"])


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))
