"""The kstatus table of docs/gitops.md, checked against the real kstatus library (issue 16 item 8).

The whole operator with opamp-go test agents brings each documented case about; the CRs the
operator wrote are fed, at that moment, to the kstatus library itself (a Go program built on
sigs.k8s.io/cli-utils/pkg/kstatus/status, tests/tools/kstatus), and its verdict must be the
one the table documents. Every row of the table must be checked.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from opamp_operator.kube.shapes.naming import resource_name
from tests.e2e.conftest import OperatorFactory
from tests.e2e.helpers import condition, eventually
from tests.support import kstatus
from tests.support.gitops import (
    agent_manifest,
    config_manifest,
    get_object,
    install_crd,
    kubectl_apply,
    yaml_file,
)
from tests.support.goagent import REPO_ROOT, GoAgent
from tests.support.operator_process import OperatorProcess, metric_value

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

DOC = REPO_ROOT / "docs" / "gitops.md"
POLL_S = 10.0  # the HTTP agent's polling interval: the window in which it has not applied yet
Check = Callable[[dict[str, Any]], bool]


def reason(cr: dict[str, Any], kind: str) -> str | None:
    return condition(cr, kind).get("reason")


def applied_reason(expected: str) -> Check:
    return lambda cr: reason(cr, "RemoteConfigApplied") == expected


def current_generation(cr: dict[str, Any]) -> bool:
    status = cr.get("status", {})
    return bool(cr["metadata"].get("generation") == status.get("observedGeneration"))


class Cases:
    """Brings cases about, and compares the library's verdict with the table for each."""

    def __init__(self, operator: OperatorProcess, kubeconfig: Path, namespace: str) -> None:
        self.operator = operator
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.table = kstatus.documented_verdicts(DOC)
        self.seen: dict[tuple[str, str], set[str]] = {}
        self.stack = AsyncExitStack()
        self.agents: dict[str, GoAgent] = {}

    async def agent(self, service: str, **options: Any) -> str:
        """Start a Go agent (WebSocket unless `http`); return its CR name."""
        agent = await self.stack.enter_async_context(GoAgent())
        agent_id = str(uuid.uuid4())
        url = self.operator.http_url if options.pop("http", False) else self.operator.ws_url
        options.setdefault("heartbeat", 1)
        await agent.start(url=url, instance_uid=agent_id, service_name=service, **options)
        self.agents[resource_name(agent_id)] = agent
        return resource_name(agent_id)

    async def check(self, kind: str, case: str, name: str, when: Check) -> dict[str, Any]:
        """Wait until `name` shows `case` (`when`), then ask the library about that object."""
        plural = "opampagents" if kind == "OpAMPAgent" else "opampagentconfigs"

        async def probe() -> dict[str, Any] | None:
            cr = get_object(self.kubeconfig, self.namespace, plural, name)
            return cr if cr is not None and "status" in cr and when(cr) else None

        cr = await eventually(f"{kind} {name}: case {case}", probe, 30)
        [verdict] = await kstatus.compute([cr])
        self.seen.setdefault((kind, case), set()).add(verdict.status)
        return cr

    def mismatches(self) -> dict[tuple[str, str], tuple[str | None, set[str]]]:
        """(documented, computed) for every case where they differ or one is missing."""
        keys = self.table.keys() | self.seen.keys()
        return {
            key: (self.table.get(key), self.seen.get(key, set()))
            for key in sorted(keys)
            if {self.table.get(key)} != self.seen.get(key)
        }


async def http_polls(operator: OperatorProcess) -> float:
    text = await operator.metrics_text()
    return metric_value(text, "opamp_messages_received_total", {"transport": "http"})


async def test_every_documented_kstatus_verdict_is_what_the_library_computes(
    operator_factory: OperatorFactory, kubeconfig: Path, namespace: str, kube_api: k8s.ApiClient
) -> None:
    install_crd(kube_api)
    # The HTTP agent's polls must not time it out; Error comes 10 s after a loss.
    operator = operator_factory(heartbeat_timeout=3 * POLL_S, error_after_offline=10.0)
    await operator.start()
    cases = Cases(operator, kubeconfig, namespace)
    assert len(cases.table) >= 15, "the table in docs/gitops.md was not found"
    good, bad = yaml_file("exporters:\n  debug: {}\n"), yaml_file("REJECT\n")
    ready = "Ready"
    async with cases.stack:
        plain = await cases.agent("ks-plain", accept_remote_config=True)
        await cases.check("OpAMPAgent", "online", plain,
                          lambda cr: condition(cr, ready).get("status") == "True")  # fmt: skip
        kubectl_apply(kubeconfig, namespace, agent_manifest(plain, good))
        await cases.check("OpAMPAgent", "applied", plain,
                          lambda cr: current_generation(cr)
                          and reason(cr, "RemoteConfigApplied") == "Applied")  # fmt: skip

        unsupported = await cases.agent("ks-unsupported")
        unhealthy = await cases.agent("ks-unhealthy", unhealthy=True)
        failing = await cases.agent("ks-bad", accept_remote_config=True)
        tied = await cases.agent("ks-tie", accept_remote_config=True)
        lost = await cases.agent("ks-lost", no_disconnect=True)
        await cases.check("OpAMPAgent", "unhealthy", unhealthy,
                          lambda cr: reason(cr, ready) == "unhealthy")  # fmt: skip
        kubectl_apply(kubeconfig, namespace, agent_manifest(unsupported, good))
        await cases.check("OpAMPAgent", "not-supported", unsupported,
                          applied_reason("NotSupported"))  # fmt: skip
        bad_selector = {"matchLabels": {"opamp.dev/service-name": "ks-bad"}}
        kubectl_apply(kubeconfig, namespace, config_manifest("ks-bad", bad_selector, bad))
        await cases.check("OpAMPAgent", "failed", failing,
                          applied_reason("Failed"))  # fmt: skip
        await cases.check("OpAMPAgentConfig", "config-failed", "ks-bad",
                          lambda cr: cr["status"].get("failedAgents") == 1)  # fmt: skip
        tie_selector = {"matchLabels": {"opamp.dev/service-name": "ks-tie"}}
        for name in ("ks-tie-1", "ks-tie-2"):
            kubectl_apply(kubeconfig, namespace, config_manifest(name, tie_selector, good))
        await cases.check("OpAMPAgent", "conflict", tied,
                          applied_reason("Conflict"))  # fmt: skip
        await cases.check("OpAMPAgentConfig", "config-conflict", "ks-tie-2",
                          lambda cr: current_generation(cr)
                          and cr["status"].get("conflictingAgents") == 1)  # fmt: skip

        # Lost without a goodbye: Offline at once (connection closed), Error 10 s later.
        await cases.check("OpAMPAgent", "online", lost,
                          lambda cr: cr["status"].get("phase") == "Online")  # fmt: skip
        await cases.agents[lost].kill()
        await cases.check("OpAMPAgent", "offline", lost,
                          lambda cr: cr["status"].get("phase") == "Offline")  # fmt: skip

        await poll_then_depart(cases, good)

        await cases.check("OpAMPAgent", "error", lost,
                          lambda cr: cr["status"].get("phase") == "Error")  # fmt: skip
    assert cases.mismatches() == {}, "documented (docs/gitops.md) vs computed by kstatus"
    assert await operator.terminate() == 0
    assert "Traceback" not in operator.log_text()


async def _polled_since(operator: OperatorProcess, polls: float) -> bool:
    return await http_polls(operator) > polls


async def poll_then_depart(cases: Cases, good: dict[str, Any]) -> None:
    """pending, config-applying, config-applied, departed and config-offline, in that order."""
    # An HTTP agent polling every 10 s: right after a poll, a new config waits for the next.
    poller = await cases.agent("ks-poll", http=True, heartbeat=POLL_S,
                               accept_remote_config=True, http_disconnect=True)  # fmt: skip
    await cases.check("OpAMPAgent", "online", poller,
                      lambda cr: cr["status"].get("phase") == "Online")  # fmt: skip
    polls = await http_polls(cases.operator)
    await eventually("the next poll", lambda: _polled_since(cases.operator, polls), POLL_S + 5)
    poll_selector = {"matchLabels": {"opamp.dev/service-name": "ks-poll"}}
    kubectl_apply(
        cases.kubeconfig, cases.namespace, config_manifest("ks-poll", poll_selector, good)
    )
    await cases.check("OpAMPAgent", "pending", poller,
                      lambda cr: condition(cr, "RemoteConfigApplied").get("status")
                      == "Unknown")  # fmt: skip
    await cases.check("OpAMPAgentConfig", "config-applying", "ks-poll",
                      lambda cr: current_generation(cr)
                      and condition(cr, "Reconciling").get("status") == "True")  # fmt: skip
    await cases.check("OpAMPAgentConfig", "config-applied", "ks-poll",
                      lambda cr: cr["status"].get("appliedAgents") == 1)  # fmt: skip

    # It says goodbye (a scale-down); then its config changes while it is away.
    await cases.agents[poller].stop()
    await cases.check("OpAMPAgent", "departed", poller,
                      lambda cr: reason(cr, "Connected") == "agent_disconnect")  # fmt: skip
    changed = yaml_file("exporters:\n  debug: {verbosity: detailed}\n")
    kubectl_apply(
        cases.kubeconfig, cases.namespace, config_manifest("ks-poll", poll_selector, changed)
    )
    await cases.check("OpAMPAgentConfig", "config-offline", "ks-poll",
                      lambda cr: current_generation(cr)
                      and cr["status"].get("pendingAgents") == 1)  # fmt: skip
    departed = await cases.check(
        "OpAMPAgent", "departed", poller,
        lambda cr: reason(cr, "RemoteConfigApplied") == "Pending",
    )  # fmt: skip
    assert departed["status"]["phase"] == "Offline"
