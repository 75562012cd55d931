"""Two operator processes on one namespace and one database, as a Deployment of 2 runs them.

Both serve agents; each mirrors its own agents (status.connection.replica) and writes their
history under its replica id. They run on the manifests' ServiceAccount, which may not touch
Kopf's peering: Kopf runs standalone in each, so neither joins the KopfPeering CRD and
object an older release left on the cluster, and neither pauses.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes import client as k8s

from opamp_operator.kube.shapes.naming import resource_name
from tests.e2e.conftest import OperatorFactory
from tests.e2e.helpers import get_agent_cr
from tests.support.faults import fetch, history
from tests.support.goagent import GoAgent
from tests.support.manifests import base_account, leave_kopf_peering
from tests.support.operator_process import OperatorProcess
from tests.support.polling import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

# What Kopf logs when it joins a peering, pauses for a peer, or is refused a request.
PEERING_OR_REFUSED = re.compile(
    r"[Pp]eering|kopfpeerings|Pausing operations|Resuming operations|\b403\b|[Ff]orbidden"
)


@pytest.fixture
def account_kubeconfig(
    kube_api: k8s.ApiClient, kubeconfig: Path, namespace: str, tmp_path: Path
) -> Iterator[Path]:
    """A kubeconfig holding only the manifests' ServiceAccount token, with the KopfPeering
    CRD and `default` object an older release leaves behind present in `namespace`."""
    leave_kopf_peering(kubeconfig, namespace)
    with base_account(kube_api, kubeconfig, namespace, tmp_path / "account.kubeconfig") as path:
        yield path


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


async def test_two_replicas_mirror_their_own_agents_and_leave_kopf_peering_alone(
    *,
    operator_factory: OperatorFactory,
    account_kubeconfig: Path,
    kube_api: k8s.ApiClient,
    kubeconfig: Path,
    namespace: str,
    postgres_dsn: str,
) -> None:
    replicas = {
        name: operator_factory(replica_id=name, error_after_offline=60.0) for name in ("r-a", "r-b")
    }
    for operator in replicas.values():
        operator.config.kubeconfig = account_kubeconfig
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

        # r-a leaves: the agents it held are Offline, as it said on its way out.
        assert await replicas["r-a"].terminate() == 0
        for name, agent_id in ids.items():
            cr = await cr_of(kubeconfig, namespace, agent_id)
            assert cr is not None
            held_by_b = name.startswith("b_") or name in ("mover", "partitioned")
            assert cr["status"]["phase"] == ("Online" if held_by_b else "Offline"), cr["status"]
            if not held_by_b:
                assert cr["status"]["disconnectReason"] == "operator_shutdown"

        # Kopf ran standalone in both, from start to exit (where a peer would have signed
        # off): neither touched the peering object, nor was refused anything.
        assert await replicas["r-b"].terminate() == 0
        assert peers(kube_api, namespace) == {}
        for name, operator in replicas.items():
            touched = PEERING_OR_REFUSED.findall(operator.log_text())
            assert not touched, (name, touched, operator.log_tail())
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


async def _closed_by(dsn: str, agent_id: str, replica: str, reason: str) -> bool:
    rows = await history(dsn, [agent_id])
    return any(r["replica_id"] == replica and r["disconnect_reason"] == reason for r in rows)
