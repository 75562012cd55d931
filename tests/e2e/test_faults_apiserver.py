"""kube-apiserver stopped and restarted under the whole operator.

The session's control plane is shared, and this test stops its kube-apiserver (etcd stays
up). Why not a private control plane: the suite runs tests one at a time, so nothing else
uses the API server meanwhile; `start_apiserver()` in a `finally` brings it back on the same
port with the same flags and waits for its /readyz, and the test then checks it answers; a
private etcd + kube-apiserver would add its start-up and CRD installation to the suite's
time for no more isolation than that.

OPAMP_FAULT_APISERVER_OUTAGE_SECONDS sets the outage (default 30: long enough for the status
writer's backoff to pass 16 s and for Kopf's watches to fail several times; 75 s, past Kopf's
54 s of request retries, also passes and is the manual long run).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from opamp_operator.config import FleetSettings, KubeSettings
from opamp_operator.fleet.clock import FakeClock
from opamp_operator.fleet.events import EventBus
from opamp_operator.fleet.model import Transport
from opamp_operator.fleet.registry import Fleet
from opamp_operator.kube.api.resources import KubeApi
from opamp_operator.kube.shapes.agentstatus import build_status
from opamp_operator.kube.shapes.naming import agent_labels, resource_name
from opamp_operator.opamp.messages import AgentToServer
from opamp_operator.testbed.controlplane import ControlPlane
from tests.e2e.conftest import OperatorFactory
from tests.e2e.helpers import eventually, get_agent_cr
from tests.support.faults import readyz
from tests.support.goagent import GoAgent
from tests.support.operator_process import OperatorProcess, kubectl

OUTAGE_SECONDS = float(os.environ.get("OPAMP_FAULT_APISERVER_OUTAGE_SECONDS", "30"))

#: A write that failed during the outage is retried with backoff capped at 30 s (+20% jitter),
#: and CR paths answer 503 for a few seconds after the API server reports ready.
CONVERGE_SECONDS = 60.0

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(OUTAGE_SECONDS + 240)]

NAMES = ("stays", "leaves", "freezes", "arrives")


async def fleet_phase(operator: OperatorProcess, agent_id: str) -> str | None:
    url = f"{operator.api_url}/api/v1/agents/{agent_id}/status"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return str((await response.json())["phase"]) if response.status == 200 else None


async def cr_status(kubeconfig: Path, namespace: str, agent_id: str) -> dict[str, Any] | None:
    cr = await asyncio.to_thread(get_agent_cr, kubeconfig, namespace, resource_name(agent_id))
    return None if cr is None else dict(cr.get("status", {}))


async def test_operator_survives_an_apiserver_restart_and_crs_converge(
    operator_factory: OperatorFactory,
    controlplane: ControlPlane,
    kubeconfig: Path,
    namespace: str,
) -> None:
    # Error only after 10 minutes: agents that leave during the outage must read Offline
    # when the CRs are compared afterwards, however long the outage.
    operator = operator_factory(
        error_after_offline=600.0, log_level=os.environ.get("FAULT_LOG_LEVEL", "INFO")
    )
    await operator.start()
    ids = {name: str(uuid.uuid4()) for name in NAMES}
    agents = {name: GoAgent() for name in NAMES}

    async def start(name: str) -> None:
        await agents[name].start(url=operator.ws_url, instance_uid=ids[name],
                                 service_name=name, heartbeat=1)  # fmt: skip
        agent_id = ids[name]
        await eventually(
            f"{name} Online in the fleet",
            lambda: _is(fleet_phase(operator, agent_id), "Online"),
            within=20,
        )

    try:
        for name in ("stays", "leaves", "freezes"):
            await start(name)
            await eventually(f"{name}'s CR Online",
                             lambda n=name: _cr_phase(kubeconfig, namespace, ids[n], "Online"),  # type: ignore[misc]
                             within=20)  # fmt: skip
        stopped_at = time.monotonic()
        try:
            await asyncio.to_thread(controlplane.stop_apiserver)
            # The OpAMP side does not need Kubernetes: agents come, go and time out.
            await start("arrives")
            assert await agents["leaves"].stop() == 0
            agents["freezes"].freeze()
            await eventually("the frozen agent Offline in the fleet",
                             lambda: _is(fleet_phase(operator, ids["freezes"]), "Offline"),
                             within=3 + 2)  # fmt: skip
            _, body = await eventually("/readyz 503 (kubernetes)", lambda: _unready(operator),
                                       within=10)  # fmt: skip
            assert body["checks"]["listener"] and body["checks"]["database"], body
            await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - stopped_at)))
            assert operator.returncode is None, operator.log_tail()
        finally:
            await asyncio.to_thread(controlplane.start_apiserver)
        kubectl(kubeconfig, "get", "--raw", "/readyz")  # healthy for every later test

        await check_convergence(operator, kubeconfig, namespace, ids)
    finally:
        for agent in agents.values():
            if agent.running:
                await agent.kill()
    assert operator.returncode is None, operator.log_tail()


async def check_convergence(
    operator: OperatorProcess, kubeconfig: Path, namespace: str, ids: dict[str, str]
) -> None:
    """Every CR says what the fleet knows; Kopf's handlers work again."""
    expected = {"stays": ("Online", None), "arrives": ("Online", None),
                "leaves": ("Offline", "agent_disconnect"),
                "freezes": ("Offline", "heartbeat_timeout")}  # fmt: skip
    started = time.monotonic()
    for name, (phase, reason) in expected.items():
        try:
            status = await eventually(
                f"{name}'s CR {phase}",
                lambda n=name, p=phase: _cr_phase(kubeconfig, namespace, ids[n], p),  # type: ignore[misc]
                within=max(1.0, CONVERGE_SECONDS - (time.monotonic() - started)),
            )
        except AssertionError as error:
            phases = {n: (await cr_status(kubeconfig, namespace, ids[n]) or {}).get("phase")
                      for n in ids}  # fmt: skip
            writes = [line for line in (await operator.metrics_text()).splitlines()
                      if line.startswith("opamp_kube_write")]  # fmt: skip
            raise AssertionError(f"{error}\nids: {ids}\nCR phases: {phases}\n{writes}") from None
        if reason is not None:
            assert status["disconnectReason"] == reason, (name, status)
    print(f"CRs converged {time.monotonic() - started:.1f}s after the API server was back")
    _, body = await eventually("/readyz 200 again", lambda: _ready(operator), within=30)
    assert all(body["checks"].values()), body

    # Kopf watches again: a CR a dead process left Online, created now, is judged by the
    # liveness check, which only learns of CRs through Kopf's watch. (Kopf's watch resumes
    # with a relist after up to its 21 s request backoff; a CR deleted before that would
    # go unnoticed until the agent's next lastSeenAt refresh: see docs/kubernetes.md.)
    name = await orphan(namespace, kubeconfig, online_at=datetime.now(UTC) - timedelta(hours=1))
    await eventually(
        "the orphaned CR judged Offline by the liveness check",
        lambda: _cr_named_phase(kubeconfig, namespace, name, "Offline"),
        within=21 + 5 + 10,  # Kopf's longest backoff + the liveness interval + slack
    )


async def orphan(namespace: str, kubeconfig: Path, *, online_at: datetime) -> str:
    """An OpAMPAgent as a process that has since died left it: Online, lastSeenAt `online_at`."""
    fleet = Fleet(FleetSettings(), FakeClock(online_at), EventBus())
    uid = uuid.uuid4()
    message = AgentToServer(instance_uid=uid.bytes, sequence_num=0)
    fleet.handle_message(_Gone(), message)
    snapshot = fleet.get(str(uid))
    assert snapshot is not None
    api = await KubeApi.connect(KubeSettings(namespace=namespace, kubeconfig=kubeconfig))
    try:
        name = resource_name(str(uid))
        created = await api.create_agent(name, agent_labels(snapshot))
        status = build_status(snapshot, None, generation=1, replica="dead", now=online_at)
        status = {key: value for key, value in status.items() if value is not None}
        await api.patch_agent_status(name, status, created["metadata"]["resourceVersion"])
    finally:
        await api.close()
    return name


class _Gone:
    """The channel of the dead process's session (never used again)."""

    transport = Transport.WEBSOCKET
    remote_addr = "127.0.0.1:1"

    def request_close(self, reason: str) -> None:
        pass


async def _cr_named_phase(kubeconfig: Path, namespace: str, name: str, phase: str) -> bool:
    cr = await asyncio.to_thread(get_agent_cr, kubeconfig, namespace, name)
    return cr is not None and cr.get("status", {}).get("phase") == phase


async def _is(value: Any, expected: str) -> bool:
    return bool(await value == expected)


async def _cr_phase(
    kubeconfig: Path, namespace: str, agent_id: str, phase: str
) -> dict[str, Any] | None:
    status = await cr_status(kubeconfig, namespace, agent_id)
    return status if status is not None and status.get("phase") == phase else None


async def _unready(operator: OperatorProcess) -> tuple[int, dict[str, Any]] | None:
    try:
        status, body = await readyz(operator)
    except aiohttp.ClientError:
        return None
    return (status, body) if status == 503 and not body["checks"]["kubernetes"] else None


async def _ready(operator: OperatorProcess) -> tuple[int, dict[str, Any]] | None:
    status, body = await readyz(operator)
    return (status, body) if status == 200 else None
