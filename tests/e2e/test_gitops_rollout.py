"""Progressive rollout of an OpAMPAgentConfig (issue 18), on the real stack.

The whole operator (real kube-apiserver + etcd, PostgreSQL) with opamp-go test agents that
accept remote config; a config body containing `REJECT` makes them report FAILED (see
tests/agents/goagent/README.md). opamp-go cannot roll itself back to its previous config, so
the self-rollback case uses a scripted WebSocket client doing what the Collector's OpAMP
Supervisor does on a bad config: APPLIED(A) -> APPLYING(B) -> FAILED(B) -> APPLIED(A).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from websockets.asyncio.client import ClientConnection, connect

from opamp_operator.fleet.rollout import agent_rank
from opamp_operator.kube.shapes.naming import resource_name
from opamp_operator.opamp.frames import decode_ws_frame, encode_ws_frame
from opamp_operator.opamp.generated import opamp_pb2
from opamp_operator.opamp.messages import AgentToServer, parse_server_to_agent
from tests.e2e.conftest import OperatorFactory
from tests.e2e.helpers import condition
from tests.support.gitops import (
    config_hash,
    config_manifest,
    get_object,
    install_crd,
    kubectl_apply,
    yaml_file,
)
from tests.support.goagent import GoAgent
from tests.support.kstatus import compute
from tests.support.operator_process import OperatorProcess, kubectl
from tests.support.polling import eventually, rounds_pass

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

SERVICE = "opamp.dev/service-name"
SELECTOR = {"matchLabels": {SERVICE: "rollout"}}
OLD = yaml_file("exporters: {debug: {verbosity: basic}}\n")
NEW = yaml_file("exporters: {debug: {verbosity: detailed}}\n")
BAD = yaml_file("exporters: {debug: {}}  # REJECT\n")


class Agents:
    """opamp-go agents of one test, in canary order (the operator's documented order)."""

    def __init__(self, operator: OperatorProcess, stack: AsyncExitStack) -> None:
        self.operator = operator
        self.stack = stack
        self.by_id: dict[str, GoAgent] = {}

    async def start(
        self, count: int, *, unhealthy_canary: bool = False, silent_canary: float | None = None
    ) -> None:
        """`count` agents; the first in canary order may report unhealthy, or fall silent
        (SIGSTOP: no heartbeats, no goodbye) `silent_canary` seconds after its start."""
        ids = sorted((str(uuid.uuid4()) for _ in range(count)), key=lambda i: (agent_rank(i), i))
        for number, agent_id in enumerate(ids):
            agent = await self.stack.enter_async_context(GoAgent())
            await agent.start(
                url=self.operator.ws_url, instance_uid=agent_id, service_name="rollout",
                heartbeat=1, accept_remote_config=True,
                unhealthy=unhealthy_canary and number == 0,
                silent_after=silent_canary if number == 0 else None,
            )  # fmt: skip
            self.by_id[agent_id] = agent

    @property
    def ordered(self) -> list[str]:
        """Agent ids by rank: the first ones are the canaries."""
        return sorted(self.by_id, key=lambda i: (agent_rank(i), i))

    def got(self, expected: str) -> set[str]:
        """Agents that received (and processed) the config with this hash."""
        return {
            agent_id
            for agent_id, agent in self.by_id.items()
            if any(e.get("hash") == expected for e in agent.events_named("remote_config"))
        }

    def last(self, agent_id: str) -> dict[str, Any]:
        return dict(self.by_id[agent_id].events_named("remote_config")[-1].data)

    async def all_got(self, expected: str, within: float = 40) -> None:
        async def probe() -> bool | None:
            return len(self.got(expected)) == len(self.by_id) or None

        await eventually(f"every agent to process {expected[:12]}", probe, within=within)


@pytest.fixture
async def operator(
    operator_factory: OperatorFactory, kube_api: k8s.ApiClient
) -> AsyncIterator[OperatorProcess]:
    install_crd(kube_api)
    process = operator_factory()
    await process.start()
    yield process
    assert "Traceback" not in process.log_text()


@pytest.fixture
async def agents(operator: OperatorProcess) -> AsyncIterator[Agents]:
    async with AsyncExitStack() as stack:
        yield Agents(operator, stack)


def rollout_spec(**fields: Any) -> dict[str, Any]:
    return {"strategy": "Progressive", **fields}


def apply_config(
    kubeconfig: Path, namespace: str, files: dict[str, Any], rollout: dict[str, Any] | None
) -> None:
    manifest = config_manifest("fleet", SELECTOR, files)
    if rollout is not None:
        manifest["spec"]["rollout"] = rollout
    kubectl_apply(kubeconfig, namespace, manifest)


def config_cr(kubeconfig: Path, namespace: str) -> dict[str, Any]:
    return get_object(kubeconfig, namespace, "opampagentconfigs", "fleet") or {}


def rollout_of(kubeconfig: Path, namespace: str) -> dict[str, Any]:
    return dict((config_cr(kubeconfig, namespace).get("status") or {}).get("rollout") or {})


async def wait_rollout(
    kubeconfig: Path, namespace: str, expected: dict[str, Any], within: float = 40
) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        state = rollout_of(kubeconfig, namespace)
        return state if all(state.get(k) == v for k, v in expected.items()) else None

    return await eventually(f"status.rollout to show {expected}", probe, within=within)


async def start_stable(
    agents: Agents,
    count: int,
    kubeconfig: Path,
    namespace: str,
    *,
    unhealthy: bool = False,
    silent: float | None = None,
) -> None:
    """`count` agents running OLD, fully rolled out (so it is the stable config)."""
    await agents.start(count, unhealthy_canary=unhealthy, silent_canary=silent)
    apply_config(kubeconfig, namespace, OLD, None)
    await agents.all_got(config_hash(OLD))

    async def stable() -> bool | None:
        status = config_cr(kubeconfig, namespace).get("status") or {}
        return (status.get("stableConfig") or {}).get("hash") == config_hash(OLD) or None

    await eventually("OLD recorded as the stable config", stable, within=30)


def event_reasons(kubeconfig: Path, namespace: str) -> list[str]:
    listed = json.loads(
        kubectl(
            kubeconfig, "-n", namespace, "get", "events", "-o", "json",
            "--field-selector", "involvedObject.kind=OpAMPAgentConfig,involvedObject.name=fleet",
        )
    )  # fmt: skip
    items = sorted(listed["items"], key=lambda e: e["metadata"]["name"])
    return [str(e["reason"]) for e in items]


# -- the tests ------------------------------------------------------------------------------------


async def test_progressive_rollout_to_20_agents_goes_step_by_step(
    agents: Agents, kubeconfig: Path, namespace: str
) -> None:
    await start_stable(agents, 20, kubeconfig, namespace)
    new = config_hash(NEW)
    apply_config(kubeconfig, namespace, NEW, rollout_spec(steps=[1, "25%"], healthyForSeconds=1))
    seen: list[tuple[int, int, str]] = []
    got_at_step: dict[int, set[str]] = {}
    rolling: list[dict[str, Any]] = []

    async def probe() -> bool | None:
        cr = config_cr(kubeconfig, namespace)
        state = dict((cr.get("status") or {}).get("rollout") or {})
        if state.get("configHash") != new:
            return None
        if state["phase"] == "Progressing" and condition(cr, "Reconciling").get("status") == "True":
            rolling.append(cr)
        entry = (int(state["step"]), int(state["updatedAgents"]), str(state["phase"]))
        if not seen or seen[-1] != entry:
            seen.append(entry)
        if state["phase"] == "Progressing":
            # Nobody outside the step's cohort ever runs ahead.
            got = agents.got(new)
            got_at_step.setdefault(entry[0], set()).update(got)
        return state["phase"] == "Complete" or None

    await eventually("the rollout to complete", probe, within=60, every=0.1)
    ordered = agents.ordered
    # Steps 1 (1 agent), 2 (25 % = 5 agents), 3 (the implicit 100 %), then Complete.
    steps = [(s, u) for s, u, phase in seen if phase == "Progressing"]
    assert [s for s, _ in steps] == sorted({s for s, _ in steps}) == [1, 2, 3], seen
    assert dict(steps) == {1: 1, 2: 5, 3: 20}, seen
    assert got_at_step[1] <= {ordered[0]}
    assert got_at_step[2] <= set(ordered[:5])
    await agents.all_got(new)
    # The canary got it first, the others after it.
    first = {i: agents.by_id[i].events_named("remote_config")[-1].get("ts") for i in ordered}
    assert min(first, key=lambda i: first[i]) == ordered[0]
    cr = config_cr(kubeconfig, namespace)
    assert cr["status"]["stableConfig"]["hash"] == new
    assert condition(cr, "Ready")["status"] == "True"
    assert cr["status"]["observedGeneration"] == cr["metadata"]["generation"]
    # What Flux and kpt read (the real kstatus library): InProgress while rolling, then Current.
    verdicts = await compute([rolling[-1], cr])
    assert [v.status for v in verdicts] == ["InProgress", "Current"]
    reasons = event_reasons(kubeconfig, namespace)
    assert reasons.count("RolloutStarted") == 1 and reasons.count("RolloutStep") == 2
    assert reasons.count("RolloutComplete") == 1
    table = kubectl(kubeconfig, "-n", namespace, "get", "oac", "fleet").splitlines()
    columns = dict(zip(table[0].split(), table[1].split(), strict=True))
    assert columns["STEP"] == "3" and columns["UPDATED"] == "20" and columns["FAILED"] == "0"


async def test_a_failing_config_pauses_at_the_first_step_with_only_the_canaries_affected(
    agents: Agents, kubeconfig: Path, namespace: str
) -> None:
    await start_stable(agents, 8, kubeconfig, namespace)
    bad = config_hash(BAD)
    apply_config(kubeconfig, namespace, BAD, rollout_spec(steps=[2, "50%"]))
    state = await wait_rollout(
        kubeconfig, namespace, {"configHash": bad, "phase": "Paused", "step": 1}
    )
    assert state["reason"] == "TooManyFailures" and state["failedAgents"] == 2
    canaries = set(agents.ordered[:2])
    assert {f["agent"] for f in state["failures"]} == {resource_name(i) for i in canaries}
    # Paused: the decider looks again and again, and nothing more happens.
    await rounds_pass("gitops_rollout", agents.operator.passes("gitops_rollout"), 2)
    assert agents.got(bad) == canaries
    assert all(agents.last(i)["status"] == "FAILED" for i in canaries)
    cr = config_cr(kubeconfig, namespace)
    assert condition(cr, "Stalled")["status"] == "True"
    assert condition(cr, "Stalled")["reason"] == "RolloutPaused"
    assert rollout_of(kubeconfig, namespace)["step"] == 1
    assert [v.status for v in await compute([cr])] == ["Failed"]  # kstatus
    assert "RolloutPaused" in event_reasons(kubeconfig, namespace)

    # Resume, the declarative way: the next step goes ahead (its agents fail too, so it
    # pauses again at step 2, with 4 of 8 agents affected).
    kubectl(kubeconfig, "-n", namespace, "annotate", "--overwrite", "oac", "fleet",
            "opamp.dev/resume-rollout=2026-03-01T12:00:00Z")  # fmt: skip
    state = await wait_rollout(kubeconfig, namespace, {"phase": "Paused", "step": 2})
    assert state["resumed"] == "2026-03-01T12:00:00Z" and state["acceptedFailures"] == 2
    assert agents.got(bad) == set(agents.ordered[:4])
    assert "RolloutResumed" in event_reasons(kubeconfig, namespace)


async def test_paused_by_spec_holds_the_step_and_unpausing_resumes(
    agents: Agents, kubeconfig: Path, namespace: str
) -> None:
    """spec.rollout.paused, with the kubectl patch commands of docs/gitops.md."""
    await start_stable(agents, 4, kubeconfig, namespace)
    new = config_hash(NEW)
    apply_config(kubeconfig, namespace, NEW, rollout_spec(steps=[1], paused=True))
    state = await wait_rollout(kubeconfig, namespace, {"configHash": new, "phase": "Paused"})
    assert state["reason"] == "PausedBySpec" and state["step"] == 1
    canary = agents.ordered[0]
    await eventually("the canary to process it", lambda: canary in agents.got(new), within=20)
    # Paused: the decider looks again and again, and nothing more happens.
    await rounds_pass("gitops_rollout", agents.operator.passes("gitops_rollout"), 2)
    assert agents.got(new) == {agents.ordered[0]}
    cr = config_cr(kubeconfig, namespace)
    assert condition(cr, "Stalled")["status"] == "False"
    assert [v.status for v in await compute([cr])] == ["InProgress"]  # kstatus
    kubectl(kubeconfig, "-n", namespace, "patch", "oac", "fleet", "--type", "merge",
            "-p", '{"spec":{"rollout":{"paused":false}}}')  # fmt: skip
    await wait_rollout(kubeconfig, namespace, {"configHash": new, "phase": "Complete"})
    await agents.all_got(new)
    assert "RolloutResumed" in event_reasons(kubeconfig, namespace)


async def test_an_unhealthy_canary_counts_as_a_failure(
    agents: Agents, kubeconfig: Path, namespace: str
) -> None:
    """It applies the config (APPLIED) but reports health.healthy=false: the rollout pauses."""
    await start_stable(agents, 4, kubeconfig, namespace, unhealthy=True)
    new = config_hash(NEW)
    apply_config(kubeconfig, namespace, NEW, rollout_spec(steps=[1], healthyForSeconds=1))
    state = await wait_rollout(kubeconfig, namespace, {"configHash": new, "phase": "Paused"})
    canary = agents.ordered[0]
    assert state["failures"] == [
        {"agent": resource_name(canary), "message": "unhealthy after applying"}
    ]
    assert agents.last(canary)["status"] == "APPLIED" and agents.got(new) == {canary}


async def test_a_canary_lost_after_applying_counts_as_a_failure(
    agents: Agents, kubeconfig: Path, namespace: str
) -> None:
    """It applies the config, then falls silent: Offline after the heartbeat timeout (3 s)."""
    await start_stable(agents, 4, kubeconfig, namespace, silent=15)
    new = config_hash(NEW)
    apply_config(kubeconfig, namespace, NEW, rollout_spec(steps=[1], healthyForSeconds=40))
    canary = agents.ordered[0]
    await agents.by_id[canary].wait_for_event("remote_config", timeout=14,
                                              where=lambda e: e.get("hash") == new)  # fmt: skip
    state = await wait_rollout(kubeconfig, namespace, {"configHash": new, "phase": "Paused"})
    assert state["failures"] == [
        {"agent": resource_name(canary), "message": "Offline (heartbeat_timeout) after applying"}
    ]
    assert agents.got(new) == {canary}


async def test_rollback_returns_the_canaries_to_the_previous_config(
    agents: Agents, kubeconfig: Path, namespace: str
) -> None:
    await start_stable(agents, 6, kubeconfig, namespace)
    old, bad = config_hash(OLD), config_hash(BAD)
    apply_config(kubeconfig, namespace, BAD, rollout_spec(steps=[1], onFailure="Rollback"))
    state = await wait_rollout(kubeconfig, namespace, {"configHash": bad, "phase": "RolledBack"})
    assert state["previousHash"] == old and state["updatedAgents"] == 0
    canary = agents.ordered[0]
    assert agents.got(bad) == {canary}

    async def canary_back() -> bool | None:
        last = agents.last(canary)
        return (last["hash"] == old and last["status"] == "APPLIED") or None

    await eventually(
        "the canary to be offered and apply the previous config", canary_back, within=30
    )
    cr = config_cr(kubeconfig, namespace)
    assert condition(cr, "Stalled")["reason"] == "RolledBack"
    assert condition(cr, "Stalled")["status"] == "True"
    assert [v.status for v in await compute([cr])] == ["Failed"]  # kstatus
    agent = get_object(kubeconfig, namespace, "opampagents", resource_name(canary)) or {}
    assert agent["status"]["desiredConfig"]["hash"] == old
    assert "RolloutRolledBack" in event_reasons(kubeconfig, namespace)


async def test_operator_restart_mid_rollout_continues_at_the_same_step(
    operator: OperatorProcess, agents: Agents, kubeconfig: Path, namespace: str
) -> None:
    await start_stable(agents, 6, kubeconfig, namespace)
    new = config_hash(NEW)
    apply_config(kubeconfig, namespace, NEW, rollout_spec(steps=[1, "50%"], pauseSeconds=8))
    before = await wait_rollout(kubeconfig, namespace, {"configHash": new, "step": 2})
    step_two = set(agents.ordered[:3])

    async def offered() -> bool | None:
        # The step is recorded, then offered: its agents' own reports come a little later
        # (under the full suite's load, after the kill: the test failed once on that).
        got = agents.got(new)
        assert got <= step_two, got
        return got == step_two or None

    await eventually("step 2's agents to process the new config", offered, within=6, every=0.1)
    await operator.kill()  # SIGKILL: no goodbye; every agent reconnects to the new process
    await operator.start()
    steps: list[int] = []

    async def probe() -> bool | None:
        state = rollout_of(kubeconfig, namespace)
        steps.append(int(state["step"]))
        assert state["startedAt"] == before["startedAt"]  # never restarted from zero
        if state["step"] == 2:
            assert agents.got(new) <= set(agents.ordered[:3])
        return state["phase"] == "Complete" or None

    await eventually("the rollout to complete after the restart", probe, within=60, every=0.2)
    assert steps == sorted(steps) and steps[0] >= 2, steps
    await agents.all_got(new)


async def test_two_replicas_decide_each_step_once(
    operator_factory: OperatorFactory, kube_api: k8s.ApiClient, kubeconfig: Path, namespace: str
) -> None:
    """Agents split over two operator processes; both evaluate the rollout, one write wins."""
    install_crd(kube_api)
    replicas = [operator_factory(replica_id=f"r{n}") for n in (1, 2)]
    for replica in replicas:
        await replica.start()
    async with AsyncExitStack() as stack:
        groups = [Agents(replica, stack) for replica in replicas]
        for group in groups:
            await group.start(4)
        everyone = Agents(replicas[0], stack)
        for group in groups:
            everyone.by_id.update(group.by_id)
        apply_config(kubeconfig, namespace, OLD, None)
        await everyone.all_got(config_hash(OLD))
        new = config_hash(NEW)
        apply_config(
            kubeconfig, namespace, NEW, rollout_spec(steps=[1, "50%"], healthyForSeconds=1)
        )
        await wait_rollout(kubeconfig, namespace, {"configHash": new, "phase": "Complete"}, 60)
        await everyone.all_got(new)
        for agent_id, agent in everyone.by_id.items():
            hashes = [e.get("hash") for e in agent.events_named("remote_config")]
            assert hashes.count(new) == 1, (agent_id, hashes)
        reasons = event_reasons(kubeconfig, namespace)
        assert reasons.count("RolloutStarted") == 1, reasons
        assert reasons.count("RolloutStep") == 2, reasons
        assert reasons.count("RolloutComplete") == 1, reasons
        for replica in replicas:
            assert "Traceback" not in replica.log_text()


# -- self-rollback ------------------------------------------------------------------------------


CAPABILITIES = (
    opamp_pb2.AgentCapabilities_ReportsStatus
    | opamp_pb2.AgentCapabilities_AcceptsRemoteConfig
    | opamp_pb2.AgentCapabilities_ReportsRemoteConfig
    | opamp_pb2.AgentCapabilities_ReportsHealth
)  # no ReportsHeartbeat (as the Collector): its open WebSocket keeps it Online


class SelfRollingBack:
    """One WebSocket session of a scripted agent that goes back to its previous config."""

    def __init__(self, ws: ClientConnection, uid: uuid.UUID) -> None:
        self.ws = ws
        self.uid = uid
        self.sequence = 0

    async def send(self, config_hash: bytes, status: int, error: str = "") -> None:
        message = AgentToServer(
            instance_uid=self.uid.bytes, sequence_num=self.sequence, capabilities=CAPABILITIES
        )
        self.sequence += 1
        attribute = message.agent_description.identifying_attributes.add(key="service.name")
        attribute.value.string_value = "rollout"
        message.health.healthy = True
        message.remote_config_status.last_remote_config_hash = config_hash
        message.remote_config_status.status = status  # type: ignore[assignment]
        message.remote_config_status.error_message = error
        await self.ws.send(encode_ws_frame(message.SerializeToString()))

    async def offered(self, within: float) -> opamp_pb2.AgentRemoteConfig | None:
        """The next remote config offered within `within` seconds, or None."""
        try:
            async with asyncio.timeout(within):
                while True:
                    frame = decode_ws_frame(await self.ws.recv(decode=False))
                    reply = parse_server_to_agent(frame)
                    if reply.HasField("remote_config"):
                        return reply.remote_config
        except TimeoutError:
            return None


async def test_a_self_rolled_back_agent_is_not_offered_the_config_again(
    operator: OperatorProcess, kubeconfig: Path, namespace: str
) -> None:
    old, new = bytes.fromhex(config_hash(OLD)), bytes.fromhex(config_hash(NEW))
    applied, failed = opamp_pb2.RemoteConfigStatuses_APPLIED, opamp_pb2.RemoteConfigStatuses_FAILED
    applying = opamp_pb2.RemoteConfigStatuses_APPLYING
    uid = uuid.uuid4()
    apply_config(kubeconfig, namespace, NEW, None)
    async with connect(operator.ws_url) as ws:
        agent = SelfRollingBack(ws, uid)
        await agent.send(old, applied)
        offer = await agent.offered(30)
        assert offer is not None and offer.config_hash == new
        await agent.send(new, applying)
        await agent.send(new, failed, "exporter debug: port 4317 in use")
        await agent.send(old, applied)  # it went back to A by itself

        async def rolled_back() -> dict[str, Any] | None:
            cr = get_object(kubeconfig, namespace, "opampagents", resource_name(str(uid))) or {}
            found = condition(cr, "RemoteConfigApplied") if cr else {}
            return found if found.get("reason") == "RolledBack" else None

        shown = await eventually("RemoteConfigApplied reason RolledBack", rolled_back, within=30)
        assert shown["status"] == "False"
        assert "port 4317 in use" in shown["message"]
    # A new session (reconnect), then a new operator process: B is not offered again.
    for restart in (False, True):
        if restart:
            await operator.terminate()
            await operator.start()
        async with connect(operator.ws_url) as ws:
            again = SelfRollingBack(ws, uid)
            await again.send(old, applied)
            assert await again.offered(4) is None, f"offered again (restart={restart})"
        assert await rolled_back() is not None

    async def counted() -> bool | None:
        status = config_cr(kubeconfig, namespace).get("status") or {}
        return status.get("failedAgents") == 1 or None

    await eventually("the config to count the agent as failed", counted, within=30)
