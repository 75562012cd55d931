"""Replica Leases on the real stack: renewal, zero CR writes in steady state, adoption of a
lost replica (exactly once), a replacement under a new id, and the disruption guard.

Short Leases keep it quick: renewed every 1 s, lost after 4 s. Agents are opamp-go agents
(tests/support/goagent.py); "reconnecting to the survivor" is done the way a load balancer
would do it for them: the same instance uid, started again against the survivor's URL.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from opamp_operator.kube.shapes.naming import resource_name
from tests.e2e.conftest import OperatorFactory
from tests.e2e.helpers import get_agent_cr, lease_of
from tests.support.faults import fetch, history, readyz
from tests.support.goagent import GoAgent
from tests.support.operator_process import OperatorProcess, kubectl, metric_value
from tests.support.polling import eventually, rounds_pass
from tests.support.tcpproxy import TcpProxy, api_server_address, proxied_kubeconfig

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

LEASE_SECONDS, RENEW_SECONDS = 4.0, 1.0
LEASES = ("--lease-duration", str(LEASE_SECONDS), "--lease-renew-interval", str(RENEW_SECONDS))
QUICK = (*LEASES, "--liveness-check-interval", "1")


def replica(factory: OperatorFactory, name: str, *extra: str, **overrides: Any) -> OperatorProcess:
    """An operator with short Leases and the default write-on-change CRs."""
    return factory(
        replica_id=name, last_seen_refresh=None, error_after_offline=120.0,
        extra_args=(*QUICK, *extra), **overrides,
    )  # fmt: skip


@pytest.fixture
async def agents() -> AsyncIterator[list[GoAgent]]:
    started: list[GoAgent] = []
    yield started
    for agent in started:
        if agent.running:
            await agent.kill()


async def connect(
    started: list[GoAgent], operator: OperatorProcess, agent_id: str, kubeconfig: Path,
    namespace: str, *, http: bool = False,
) -> GoAgent:  # fmt: skip
    agent = GoAgent()
    started.append(agent)
    url = operator.http_url if http else operator.ws_url
    await agent.start(url=url, instance_uid=agent_id, service_name="lease", heartbeat=1)
    name = operator.config.replica_id
    await eventually(f"{agent_id} Online held by {name}",
                     lambda: held_by(kubeconfig, namespace, agent_id, name), within=20)  # fmt: skip
    return agent


async def cr_status(kubeconfig: Path, namespace: str, agent_id: str) -> dict[str, Any]:
    cr = await asyncio.to_thread(get_agent_cr, kubeconfig, namespace, resource_name(agent_id))
    return dict((cr or {}).get("status") or {})


async def held_by(kubeconfig: Path, namespace: str, agent_id: str, name: str) -> bool:
    status = await cr_status(kubeconfig, namespace, agent_id)
    return (
        status.get("phase") == "Online" and (status.get("connection") or {}).get("replica") == name
    )


async def events_about(kubeconfig: Path, namespace: str, name: str, reason: str) -> list[Any]:
    out = await asyncio.to_thread(
        kubectl, kubeconfig, "-n", namespace, "get", "events", "-o", "json"
    )
    return [
        e for e in json.loads(out)["items"]
        if e["involvedObject"]["name"] == name and e["reason"] == reason
    ]  # fmt: skip


async def adopted(
    kubeconfig: Path, namespace: str, dsn: str, agent_ids: list[str]
) -> list[dict[str, Any]] | None:
    """Every CR Offline replica_lost and every row closed, or None."""
    statuses = [await cr_status(kubeconfig, namespace, a) for a in agent_ids]
    if any(
        s.get("phase") != "Offline" or s.get("disconnectReason") != "replica_lost" for s in statuses
    ):
        return None
    if any(row["disconnected_at"] is None for row in await history(dsn, agent_ids)):
        return None
    return statuses


async def transitions(dsn: str, agent_id: str, reason: str) -> list[Any]:
    return await fetch(
        dsn, "SELECT * FROM agent_state_transitions WHERE agent_id = $1 AND reason = $2",
        agent_id, reason,
    )  # fmt: skip


async def all_rows_open(dsn: str, agent_ids: list[str]) -> bool:
    rows = await history(dsn, agent_ids)
    return len(rows) == len(agent_ids) and all(r["disconnected_at"] is None for r in rows)


async def test_lease_renewed_readyz_metric_no_steady_writes_and_released_at_exit(
    *,
    operator_factory: OperatorFactory,
    kube_api: k8s.ApiClient,
    kubeconfig: Path,
    namespace: str,
    agents: list[GoAgent],
) -> None:
    operator = replica(operator_factory, "r-steady")
    await operator.start()
    lease = await lease_of(kube_api, namespace, "r-steady")
    assert lease is not None and lease.spec.holder_identity == "r-steady"
    assert lease.spec.lease_duration_seconds == 4
    first = lease.spec.renew_time
    status, body = await readyz(operator)
    assert status == 200 and body["checks"]["lease"] is True, body
    assert metric_value(await operator.metrics_text(), "opamp_replica_lease_current") == 1.0

    ids = [str(uuid.uuid4()) for _ in range(3)]
    for number, agent_id in enumerate(ids):
        await connect(agents, operator, agent_id, kubeconfig, namespace, http=number == 2)

    async def renewed() -> bool:
        lease = await lease_of(kube_api, namespace, "r-steady")
        return bool(lease.spec.renew_time > first)

    await eventually("the Lease renewed", renewed, within=RENEW_SECONDS + 2)

    # Steady state: heartbeats flow, nothing changes, so no CR is written at all.
    # Let the connect writes (and their Events) drain: no signal says the last is done,
    # but a wait too short fails the test below, it cannot make it pass.
    await asyncio.sleep(2.0)
    seen_before = [(await cr_status(kubeconfig, namespace, a))["lastSeenAt"] for a in ids]
    before = await operator.metrics_text()
    # A window of steady state on purpose; the counts below prove the fleet and the Lease
    # keeper ran through it (heartbeats handled, renewals), so "no write" means something.
    await asyncio.sleep(8.0)
    after = await operator.metrics_text()
    heartbeats = metric_value(after, "opamp_messages_received_total") - metric_value(
        before, "opamp_messages_received_total"
    )
    assert heartbeats >= 3 * 6, heartbeats  # 3 agents at 1/s for 8 s: the window was live
    writes = [metric_value(text, "opamp_kube_writes_total") for text in (before, after)]
    assert writes[0] > 0 and writes[1] == writes[0], writes
    renewals = [
        metric_value(text, "opamp_replica_lease_renewals_total", {"outcome": "ok"})
        for text in (before, after)
    ]
    assert renewals[1] - renewals[0] >= 6, renewals

    # LAST SEEN (lastSeenAt) is as of the latest change, not the latest heartbeat.
    seen_after = [(await cr_status(kubeconfig, namespace, a))["lastSeenAt"] for a in ids]
    assert seen_after == seen_before

    assert await operator.terminate() == 0
    assert await lease_of(kube_api, namespace, "r-steady") is None  # released
    for agent_id in ids:
        ended = await cr_status(kubeconfig, namespace, agent_id)
        assert ended["disconnectReason"] == "operator_shutdown", ended


async def test_sigkilled_replica_is_adopted_exactly_once_and_agents_move_to_a_survivor(
    *,
    operator_factory: OperatorFactory,
    kube_api: k8s.ApiClient,
    kubeconfig: Path,
    namespace: str,
    postgres_dsn: str,
    agents: list[GoAgent],
) -> None:
    replicas = {name: replica(operator_factory, name) for name in ("r-a", "r-b", "r-c")}
    for operator in replicas.values():
        await operator.start()
    lost, survivors = replicas["r-a"], [replicas["r-b"], replicas["r-c"]]
    ids = [str(uuid.uuid4()) for _ in range(3)]
    for number, agent_id in enumerate(ids):
        await connect(agents, lost, agent_id, kubeconfig, namespace, http=number == 2)
    await eventually("their rows open", lambda: all_rows_open(postgres_dsn, ids), within=10)
    # An agent of a live replica, Online all along: never adopted, never timed out.
    steady = str(uuid.uuid4())
    await connect(agents, survivors[0], steady, kubeconfig, namespace)

    await lost.kill()
    killed_at = time.time()
    for agent in agents[:3]:  # they die with it (else they would retry r-a's address)
        await agent.kill()
    statuses = await eventually(
        "r-a's CRs Offline replica_lost and its rows closed",
        lambda: adopted(kubeconfig, namespace, postgres_dsn, ids),
        within=LEASE_SECONDS + RENEW_SECONDS + 5,
    )
    adopted_after = time.time() - killed_at
    assert await lease_of(kube_api, namespace, "r-a") is None  # the adopter deleted it

    rows = await history(postgres_dsn, ids)
    for row in rows:
        assert row["replica_id"] == "r-a" and row["disconnect_reason"] == "replica_lost", row
        # Closed at the Lease's last renewal: before the kill, within one renew interval.
        closed = row["disconnected_at"].timestamp()
        assert killed_at - RENEW_SECONDS - 1.5 <= closed <= killed_at + 0.5, (closed, killed_at)
    adoptions = []
    for survivor in survivors:
        text = await survivor.metrics_text()
        adoptions.append(metric_value(text, "opamp_replica_adoptions_total"))
    assert sorted(adoptions) == [0.0, 1.0], adoptions  # exactly one survivor adopted
    for agent_id, status in zip(ids, statuses, strict=True):
        assert status.get("connection") is None, status
        name = resource_name(agent_id)
        events = await events_about(kubeconfig, namespace, name, "replica_lost")
        assert len(events) == 1, events
        assert len(await transitions(postgres_dsn, agent_id, "replica_lost")) == 1
    assert await held_by(kubeconfig, namespace, steady, "r-b")

    # The agents come back through the load balancer, to a survivor: Online there.
    for agent_id in ids:
        await connect(agents, survivors[1], agent_id, kubeconfig, namespace)
    for survivor in survivors:  # nobody adopts or judges them again: each looked twice
        await rounds_pass("adoption", survivor.passes("adoption"), 2)
        await rounds_pass("liveness", survivor.passes("liveness"), 2)
    for agent_id in ids:
        assert await held_by(kubeconfig, namespace, agent_id, "r-c")
        events = await events_about(kubeconfig, namespace, resource_name(agent_id), "replica_lost")
        assert len(events) == 1
    print(f"adoption of a SIGKILLed replica took {adopted_after:.1f}s (Lease {LEASE_SECONDS}s)")


async def test_replacement_with_a_new_replica_id_adopts_the_old_ones_rows(
    *,
    operator_factory: OperatorFactory,
    kube_api: k8s.ApiClient,
    kubeconfig: Path,
    namespace: str,
    postgres_dsn: str,
    agents: list[GoAgent],
) -> None:
    old = replica(operator_factory, "pod-old-7f9c")
    await old.start()
    ids = [str(uuid.uuid4()) for _ in range(2)]
    for agent_id in ids:
        await connect(agents, old, agent_id, kubeconfig, namespace)
    await eventually("their rows open", lambda: all_rows_open(postgres_dsn, ids), within=10)
    await old.kill()
    for agent in agents:
        await agent.kill()
    # No replica at all for longer than a Lease: nothing adopts, nothing judges the CRs.
    await asyncio.sleep(LEASE_SECONDS * 2)
    assert await all_rows_open(postgres_dsn, ids)
    new = replica(operator_factory, "pod-new-2b4d")  # a Deployment's new pod name
    await new.start()
    await eventually(
        "the new pod adopted the old one's CRs and rows",
        lambda: adopted(kubeconfig, namespace, postgres_dsn, ids),
        within=RENEW_SECONDS + 5,
    )
    assert metric_value(await new.metrics_text(), "opamp_replica_adoptions_total") == 1.0
    assert await lease_of(kube_api, namespace, "pod-old-7f9c") is None
    assert "adopted replica pod-old-7f9c" in new.log_text()


async def test_a_replica_cut_off_adopts_nobody_and_mass_expiry_pauses_adoption(
    *,
    operator_factory: OperatorFactory,
    kube_api: k8s.ApiClient,
    kubeconfig: Path,
    namespace: str,
    postgres_dsn: str,
    agents: list[GoAgent],
    tmp_path: Path,
) -> None:
    host, port = api_server_address(kubeconfig)
    proxies = {name: TcpProxy(host, port) for name in ("r-a", "r-b")}
    replicas: dict[str, OperatorProcess] = {}
    for name in ("r-a", "r-b", "r-c"):
        config = kubeconfig
        if name in proxies:
            await proxies[name].start()
            config = proxied_kubeconfig(kubeconfig, proxies[name], tmp_path / f"{name}.kubeconfig")
        replicas[name] = replica(operator_factory, name)
        replicas[name].config.kubeconfig = config
        await replicas[name].start()
    try:
        ids = {name: str(uuid.uuid4()) for name in ("r-a", "r-b")}
        for name, agent_id in ids.items():
            await connect(agents, replicas[name], agent_id, kubeconfig, namespace)
        await eventually("rows open", lambda: all_rows_open(postgres_dsn, list(ids.values())),
                         within=10)  # fmt: skip
        # Two of three replicas lose the API server (a partition, not a crash): their
        # agents stay connected to them, and their Leases expire together.
        for proxy in proxies.values():
            proxy.cut()
        cut_at = time.time()
        watcher = replicas["r-c"]
        await eventually(
            "r-c pauses adoption",
            lambda: _contains(watcher, "adoption paused: 2 of 3 replica Leases expired"),
            within=LEASE_SECONDS + RENEW_SECONDS + 5,
        )
        assert metric_value(await watcher.metrics_text(), "opamp_replica_adoption_paused") == 1.0
        for name in proxies:
            await eventually(
                f"{name} says it adopts nobody",
                lambda n=name: _contains(replicas[n], "adopting no replica"),  # type: ignore[misc]
                within=LEASE_SECONDS + RENEW_SECONDS + 3,
            )
            status, body = await readyz(replicas[name])
            assert status == 503 and body["checks"]["lease"] is False, body
        await asyncio.sleep(max(0.0, cut_at + 2 * LEASE_SECONDS - time.time()))
        paused_events = await events_about(kubeconfig, namespace, "r-c", "AdoptionPaused")
        assert len(paused_events) == 1, paused_events
        assert watcher.log_text().count("adoption paused") == 1  # said once

        # The partition heals: Leases renewed, adoption resumes, and nobody was adopted.
        for proxy in proxies.values():
            proxy.restore()
        await eventually("r-c resumes", lambda: _contains(watcher, "replica adoption resumed"),
                         within=LEASE_SECONDS + 15)  # fmt: skip
        assert metric_value(await watcher.metrics_text(), "opamp_replica_adoption_paused") == 0.0
        for name, agent_id in ids.items():
            assert await held_by(kubeconfig, namespace, agent_id, name)
            assert metric_value(await replicas[name].metrics_text(),
                                "opamp_replica_adoptions_total") == 0.0  # fmt: skip
        assert metric_value(await watcher.metrics_text(), "opamp_replica_adoptions_total") == 0.0
        assert await all_rows_open(postgres_dsn, list(ids.values()))
        for name in ids:
            assert (await lease_of(kube_api, namespace, name)).spec.holder_identity == name
    finally:
        for proxy in proxies.values():
            await proxy.close()


async def _contains(operator: OperatorProcess, text: str) -> bool:
    return text in operator.log_text()
