"""Two operator processes on one namespace and one database, as a Deployment of 2 runs them.

Both serve agents; each mirrors its own agents (status.connection.replica) and writes their
history under its replica id. Kopf peering (the CRD and the `default` object from
manifests/kopf-peering.yaml) lets only one of them run the Kopf handlers; when that one
leaves, the other takes over.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from kubernetes import client as k8s

from opamp_operator.kube.shapes.naming import resource_name
from tests.e2e.conftest import OperatorFactory
from tests.e2e.helpers import eventually, get_agent_cr
from tests.support.faults import fetch, history
from tests.support.goagent import GoAgent
from tests.support.operator_process import REPO_ROOT, OperatorProcess

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

PEERING_FILE = REPO_ROOT / "manifests" / "kopf-peering.yaml"
PAUSING = re.compile(r"Pausing operations in favour of")
RESUMING = re.compile(r"Resuming operations after the pause")


@pytest.fixture
def kopf_peering(kube_api: k8s.ApiClient, namespace: str) -> Iterator[str]:
    """Kopf's KopfPeering CRD (installed once) and the `default` object in `namespace`."""
    crd, peering = yaml.safe_load_all(PEERING_FILE.read_text())
    extensions = k8s.ApiextensionsV1Api(kube_api)
    try:
        extensions.create_custom_resource_definition(crd)
    except k8s.ApiException as error:
        if error.status != 409:
            raise
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        conditions = extensions.read_custom_resource_definition(crd["metadata"]["name"])
        if any(c.type == "Established" and c.status == "True"
               for c in conditions.status.conditions or []):  # fmt: skip
            break
        time.sleep(0.1)
    peering["metadata"]["namespace"] = namespace
    k8s.CustomObjectsApi(kube_api).create_namespaced_custom_object(
        "kopf.dev", "v1", namespace, "kopfpeerings", peering
    )
    yield str(peering["metadata"]["name"])


def peers(kube_api: k8s.ApiClient, namespace: str) -> dict[str, Any]:
    body = k8s.CustomObjectsApi(kube_api).get_namespaced_custom_object(
        "kopf.dev", "v1", namespace, "kopfpeerings", "default"
    )
    return dict(body.get("status") or {})


async def cr_of(kubeconfig: Path, namespace: str, agent_id: str) -> dict[str, Any] | None:
    return await asyncio.to_thread(get_agent_cr, kubeconfig, namespace, resource_name(agent_id))


async def held_by(
    kubeconfig: Path, namespace: str, agent_id: str, replica: str
) -> dict[str, Any] | None:
    """The CR's status when it says Online and held by `replica`."""
    cr = await cr_of(kubeconfig, namespace, agent_id)
    status = (cr or {}).get("status", {})
    connection = status.get("connection") or {}
    online = status.get("phase") == "Online" and connection.get("replica") == replica
    return dict(status) if online else None


async def api_status(operator: OperatorProcess, agent_id: str) -> int:
    url = f"{operator.api_url}/api/v1/agents/{agent_id}/status"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status


async def test_two_replicas_mirror_their_own_agents_and_one_runs_kopf(
    *,
    operator_factory: OperatorFactory,
    kopf_peering: str,
    kube_api: k8s.ApiClient,
    kubeconfig: Path,
    namespace: str,
    postgres_dsn: str,
) -> None:
    replicas = {
        name: operator_factory(replica_id=name, env={"POD_ID": name}, error_after_offline=60.0)
        for name in ("r-a", "r-b")
    }
    for operator in replicas.values():
        await operator.start()
    names = ("a_ws", "a_http", "b_ws", "b_http", "mover", "partitioned")
    ids = {name: str(uuid.uuid4()) for name in names}
    agents: list[GoAgent] = []

    async def connect(name: str, replica: str) -> GoAgent:
        operator, agent = replicas[replica], GoAgent()
        agents.append(agent)
        url = operator.http_url if name.endswith("http") else operator.ws_url
        await agent.start(url=url, instance_uid=ids[name], service_name=name, heartbeat=1)
        agent_id = ids[name]
        await eventually(
            f"{name} held by {replica}",
            lambda: held_by(kubeconfig, namespace, agent_id, replica),
            within=20,
        )
        return agent

    try:
        for name in ("a_ws", "a_http", "mover"):
            await connect(name, "r-a")
        for name in ("b_ws", "b_http"):
            await connect(name, "r-b")
        # Each replica's REST API knows its own agents only.
        assert await api_status(replicas["r-a"], ids["a_ws"]) == 200
        assert await api_status(replicas["r-b"], ids["a_ws"]) == 404

        # An agent moves from one replica to the other.
        assert await agents[2].stop() == 0
        await connect("mover", "r-b")
        # An agent reaches the other replica while the first still holds its silent
        # session (a network partition, a load balancer moving it): the first replica
        # times the old session out 3 s later, and must not undo what the second wrote.
        stale = await connect("partitioned", "r-a")
        stale.freeze()
        await connect("partitioned", "r-b")
        await eventually(
            "r-a timed out the stale session",
            lambda: _closed_by(postgres_dsn, ids["partitioned"], "r-a", "heartbeat_timeout"),
            within=3 + 2,
        )
        await asyncio.sleep(1.0)  # r-a's writers flush every 0.2 s: give them the chance
        status = await held_by(kubeconfig, namespace, ids["partitioned"], "r-b")
        assert status is not None, (
            await cr_of(kubeconfig, namespace, ids["partitioned"]) or {}
        ).get("status")

        await check_history(postgres_dsn, ids)
        active, paused = await check_one_runs_kopf(replicas, kube_api, namespace)

        # The active replica leaves: the other one resumes the handlers.
        assert await replicas[active].terminate() == 0
        await eventually(
            f"{paused} resumes Kopf's handlers",
            lambda: _logged(replicas[paused], RESUMING),
            within=15,
        )
        assert active not in peers(kube_api, namespace)
        # And the agents the departed replica held are Offline, as it said on its way out.
        for name, agent_id in ids.items():
            cr = await cr_of(kubeconfig, namespace, agent_id)
            assert cr is not None
            held = name.startswith("b_") or name in ("mover", "partitioned")
            if (active == "r-b") == held:
                assert cr["status"]["phase"] == "Offline", (name, cr["status"])
                assert cr["status"]["disconnectReason"] == "operator_shutdown"
            else:
                assert cr["status"]["phase"] == "Online", (name, cr["status"])
    finally:
        for agent in agents:
            if agent.running:
                await agent.kill()


async def check_history(dsn: str, ids: dict[str, str]) -> None:
    """Rows carry the replica that served the session; the agents table agrees."""

    async def written() -> list[Any] | None:
        rows = await history(dsn, ids.values())
        return rows if len(rows) == len(ids) + 2 else None  # two each for the movers

    rows = await eventually("every session in the history", written, within=10)
    served = {(row["agent_id"], row["replica_id"]) for row in rows}
    for name, agent_id in ids.items():
        expected = {"r-a"} if name.startswith("a_") else {"r-b"}
        if name in ("mover", "partitioned"):
            expected = {"r-a", "r-b"}
        assert {replica for agent, replica in served if agent == agent_id} == expected, name
    for name, reason in (("mover", "agent_disconnect"), ("partitioned", "heartbeat_timeout")):
        # In the order the sessions opened: each replica's writer inserts on its own
        # schedule, so the row ids need not follow it.
        moved = sorted(
            (row for row in rows if row["agent_id"] == ids[name]), key=lambda r: r["connected_at"]
        )
        assert [(r["replica_id"], r["disconnect_reason"]) for r in moved] == [
            ("r-a", reason),
            ("r-b", None),
        ], name

    async def all_online() -> bool:
        statuses = await fetch(
            dsn, "SELECT status FROM agents WHERE id = ANY($1::text[])", list(ids.values())
        )
        return [row["status"] for row in statuses] == ["online"] * len(ids)

    await eventually("every agent online in the agents table", all_online, within=10)


async def check_one_runs_kopf(
    replicas: dict[str, OperatorProcess], kube_api: k8s.ApiClient, namespace: str
) -> tuple[str, str]:
    """Both are peers; the one with the lower priority paused its handlers. (active, paused)"""
    status = await eventually(
        "both replicas in the peering object",
        lambda: _both_peers(kube_api, namespace),
        within=20,
    )
    priorities = {name: status[name]["priority"] for name in replicas}
    assert len(set(priorities.values())) == 2, priorities  # equal priorities pause both
    active = max(priorities, key=lambda name: priorities[name])
    paused = min(priorities, key=lambda name: priorities[name])
    await eventually(
        f"{paused} pauses its handlers",
        lambda: _logged(replicas[paused], PAUSING),
        within=15,
    )
    assert not PAUSING.search(replicas[active].log_text()), replicas[active].log_tail()
    return active, paused


async def _closed_by(dsn: str, agent_id: str, replica: str, reason: str) -> bool:
    rows = await history(dsn, [agent_id])
    return any(r["replica_id"] == replica and r["disconnect_reason"] == reason for r in rows)


async def _both_peers(kube_api: k8s.ApiClient, namespace: str) -> dict[str, Any] | None:
    status = await asyncio.to_thread(peers, kube_api, namespace)
    return status if {"r-a", "r-b"} <= set(status) else None


async def _logged(operator: OperatorProcess, pattern: re.Pattern[str]) -> bool:
    return bool(pattern.search(operator.log_text()))
