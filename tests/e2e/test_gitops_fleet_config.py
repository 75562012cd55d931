"""Fleet remote config (OpAMPAgentConfig): selection by labels, precedence, conflicts, status.

The whole operator with opamp-go test agents (WebSocket, one over HTTP) that accept remote
config; OpAMPAgentConfigs applied with kubectl as a GitOps tool would.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from opamp_operator.kube.shapes.naming import resource_name
from tests.e2e.conftest import OperatorFactory
from tests.e2e.helpers import condition, eventually
from tests.support.gitops import (
    agent_manifest,
    config_hash,
    config_manifest,
    get_object,
    install_crd,
    kubectl_apply,
    yaml_file,
)
from tests.support.goagent import GoAgent
from tests.support.operator_process import OperatorProcess, kubectl

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

SERVICE = "opamp.dev/service-name"
HOST = "opamp.dev/host-name"


@pytest.fixture
def config_crd(kube_api: k8s.ApiClient, opampagent_crd: str) -> str:
    return install_crd(kube_api)


class Fleet:
    """Named Go agents of one test, and what they were sent."""

    def __init__(self, operator: OperatorProcess, stack: AsyncExitStack) -> None:
        self.operator = operator
        self.stack = stack
        self.agents: dict[str, GoAgent] = {}
        self.ids: dict[str, str] = {}

    async def start(self, name: str, service: str, *, http: bool = False) -> GoAgent:
        agent = await self.stack.enter_async_context(GoAgent())
        self.ids[name] = str(uuid.uuid4())
        await agent.start(
            url=self.operator.http_url if http else self.operator.ws_url,
            instance_uid=self.ids[name], service_name=service, host_name=f"node-{name}",
            heartbeat=1, accept_remote_config=True,
        )  # fmt: skip
        self.agents[name] = agent
        return agent

    def cr_name(self, name: str) -> str:
        return resource_name(self.ids[name])

    def hashes(self, name: str) -> list[str]:
        """Config hashes the agent received, in order."""
        return [str(e.get("hash")) for e in self.agents[name].events_named("remote_config")]

    async def received(self, name: str, expected: str, within: float = 30) -> None:
        event = await self.agents[name].wait_for_event(
            "remote_config", timeout=within, where=lambda e: e.get("hash") == expected
        )
        assert event.get("status") == "APPLIED"


@pytest.fixture
async def fleet(operator_factory: OperatorFactory, config_crd: str) -> AsyncIterator[Fleet]:
    operator = operator_factory()
    await operator.start()
    async with AsyncExitStack() as stack:
        yield Fleet(operator, stack)
    assert await operator.terminate() == 0
    assert "Traceback" not in operator.log_text()


def agent_cr(kubeconfig: Path, namespace: str, name: str) -> dict[str, Any]:
    return get_object(kubeconfig, namespace, "opampagents", name) or {}


def config_state(kubeconfig: Path, namespace: str, name: str) -> dict[str, Any]:
    cr = get_object(kubeconfig, namespace, "opampagentconfigs", name) or {}
    status = cr.get("status", {})
    state = {k: v for k, v in status.items() if k.endswith("Agents")}
    state["current"] = cr.get("metadata", {}).get("generation") == status.get("observedGeneration")
    for kind in ("Ready", "Reconciling", "Stalled"):
        state[kind] = condition(cr, kind).get("status")
    state["problems"] = status.get("problems")
    return state


async def wait_config(
    kubeconfig: Path, namespace: str, name: str, expected: dict[str, Any]
) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        state = config_state(kubeconfig, namespace, name)
        return state if all(state.get(k) == v for k, v in expected.items()) else None

    return await eventually(f"status of OpAMPAgentConfig {name} to show {expected}", probe, 30)


async def wait_desired(
    kubeconfig: Path, namespace: str, cr_name: str, source: str | None, applied: str
) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        cr = agent_cr(kubeconfig, namespace, cr_name)
        desired = (cr.get("status") or {}).get("desiredConfig") or {}
        ok = desired.get("source") == source and (
            condition(cr, "RemoteConfigApplied").get("status") == applied
        )
        return cr if ok else None

    return await eventually(f"{cr_name} to get {source} ({applied})", probe, 30)


async def test_fleet_config_reaches_exactly_the_matching_agents_with_precedence(
    fleet: Fleet, kubeconfig: Path, namespace: str
) -> None:
    for name, service in [("a", "checkout"), ("b", "checkout"), ("c", "payments"),
                          ("d", "checkout")]:  # fmt: skip
        await fleet.start(name, service)
    await fleet.start("e", "checkout", http=True)
    for name in fleet.ids:
        await eventually(
            f"CR of {name}", lambda n=name: _labelled(kubeconfig, namespace, fleet.cr_name(n)), 30
        )

    # d has its own config: it wins over every fleet config.
    own = yaml_file("own: d\n")
    kubectl_apply(kubeconfig, namespace, agent_manifest(fleet.cr_name("d"), own))
    await fleet.received("d", config_hash(own))

    # 1. Every checkout agent but d gets the fleet config; payments (c) gets nothing.
    checkout = yaml_file("fleet: checkout\n")
    x = config_hash(checkout)
    kubectl_apply(
        kubeconfig, namespace,
        config_manifest("checkout", {"matchLabels": {SERVICE: "checkout"}}, checkout),
    )  # fmt: skip
    for name in ("a", "b", "e"):
        await fleet.received(name, x)
    await wait_config(
        kubeconfig, namespace, "checkout",
        {"matchedAgents": 4, "selectedAgents": 3, "appliedAgents": 3, "failedAgents": 0,
         "current": True, "Ready": "True", "Reconciling": "False", "Stalled": "False"},
    )  # fmt: skip
    await wait_desired(
        kubeconfig, namespace, fleet.cr_name("a"), "OpAMPAgentConfig/checkout", "True"
    )
    late = await fleet.start("f", "checkout")  # joins after the config exists
    await fleet.received("f", x)
    assert late.events_named("remote_config")[0].get("hash") == x

    # 2. A more specific selector wins for a.
    node_a = yaml_file("fleet: checkout on node-a\n")
    y = config_hash(node_a)
    selector = {"matchLabels": {SERVICE: "checkout", HOST: "node-a"}}
    kubectl_apply(kubeconfig, namespace, config_manifest("checkout-node-a", selector, node_a))
    await fleet.received("a", y)
    await wait_config(
        kubeconfig, namespace, "checkout",
        {"matchedAgents": 5, "selectedAgents": 3, "appliedAgents": 3, "Ready": "True"},
    )  # fmt: skip
    await wait_config(
        kubeconfig, namespace, "checkout-node-a",
        {"matchedAgents": 1, "selectedAgents": 1, "appliedAgents": 1, "Ready": "True"},
    )  # fmt: skip

    # 3. Two configs of equal rank for c: a conflict; c gets neither and keeps what it runs.
    payments, node_c = yaml_file("fleet: payments\n"), yaml_file("fleet: node-c\n")
    kubectl_apply(
        kubeconfig, namespace,
        config_manifest("node-c", {"matchLabels": {HOST: "node-c"}}, node_c),
    )  # fmt: skip
    await fleet.received("c", config_hash(node_c))
    kubectl_apply(
        kubeconfig, namespace,
        config_manifest("payments", {"matchLabels": {SERVICE: "payments"}}, payments),
    )  # fmt: skip
    for config in ("payments", "node-c"):
        state = await wait_config(
            kubeconfig, namespace, config,
            {"conflictingAgents": 1, "selectedAgents": 0, "Stalled": "True", "current": True},
        )  # fmt: skip
        assert state["problems"][0]["agent"] == fleet.cr_name("c")
    cr = await wait_desired(kubeconfig, namespace, fleet.cr_name("c"), None, "False")
    applied = condition(cr, "RemoteConfigApplied")
    assert applied["reason"] == "Conflict"
    assert "node-c, payments" in applied["message"]
    assert condition(cr, "Stalled").get("status") == "True"

    # 4. A higher priority settles it.
    kubectl_apply(
        kubeconfig, namespace,
        config_manifest("payments", {"matchLabels": {SERVICE: "payments"}}, payments, priority=5),
    )  # fmt: skip
    await fleet.received("c", config_hash(payments))
    await wait_desired(
        kubeconfig, namespace, fleet.cr_name("c"), "OpAMPAgentConfig/payments", "True"
    )
    await wait_config(
        kubeconfig, namespace, "node-c",
        {"conflictingAgents": 0, "matchedAgents": 1, "selectedAgents": 0, "Stalled": "False"},
    )  # fmt: skip
    await wait_config(
        kubeconfig, namespace, "payments",
        {"selectedAgents": 1, "appliedAgents": 1, "Ready": "True", "current": True},
    )  # fmt: skip

    # 5. Deleting the specific config gives a the checkout config again.
    kubectl(kubeconfig, "-n", namespace, "delete", "opampagentconfig", "checkout-node-a")
    await eventually(
        "a to get checkout again", lambda: _asyncify(fleet.hashes("a")[-1:] == [x]), 30
    )
    await wait_config(kubeconfig, namespace, "checkout", {"selectedAgents": 4, "appliedAgents": 4})

    # Exactly the matching agents: each got exactly what the precedence says, nothing else.
    assert fleet.hashes("b") == [x] and fleet.hashes("e") == [x] and fleet.hashes("f") == [x]
    assert fleet.hashes("a") == [x, y, x]
    assert fleet.hashes("c") == [config_hash(node_c), config_hash(payments)]
    assert fleet.hashes("d") == [config_hash(own)]


async def test_fleet_config_rejected_by_an_agent_is_counted_as_failed(
    fleet: Fleet, kubeconfig: Path, namespace: str
) -> None:
    for name in ("a", "b"):
        await fleet.start(name, "edge")
    for name in fleet.ids:
        await eventually(
            f"CR of {name}", lambda n=name: _labelled(kubeconfig, namespace, fleet.cr_name(n)), 30
        )
    bad = yaml_file("REJECT: true\n")
    kubectl_apply(
        kubeconfig, namespace, config_manifest("edge", {"matchLabels": {SERVICE: "edge"}}, bad)
    )
    state = await wait_config(
        kubeconfig, namespace, "edge",
        {"selectedAgents": 2, "failedAgents": 2, "Stalled": "True", "Ready": "False"},
    )  # fmt: skip
    assert {p["agent"] for p in state["problems"]} == {fleet.cr_name("a"), fleet.cr_name("b")}
    assert {p["message"] for p in state["problems"]} == {"config body contains REJECT"}
    good = yaml_file("fine: true\n")
    kubectl_apply(
        kubeconfig, namespace, config_manifest("edge", {"matchLabels": {SERVICE: "edge"}}, good)
    )
    await wait_config(
        kubeconfig, namespace, "edge",
        {"appliedAgents": 2, "failedAgents": 0, "Stalled": "False", "Ready": "True",
         "current": True},
    )  # fmt: skip


async def _labelled(kubeconfig: Path, namespace: str, name: str) -> bool:
    labels = agent_cr(kubeconfig, namespace, name).get("metadata", {}).get("labels", {})
    return HOST in labels and SERVICE in labels


async def _asyncify(value: bool) -> bool:
    await asyncio.sleep(0)
    return value
