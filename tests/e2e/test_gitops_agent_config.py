"""Remote config declared on an OpAMPAgent (`spec.remoteConfig`), applied with kubectl.

The whole operator with real agents that accept remote config: the opamp-go test agent over
WebSocket and HTTP, and the official Python client over HTTP. A file body containing REJECT
makes these agents report FAILED.
"""

from __future__ import annotations

import uuid
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
    get_object,
    install_crd,
    kubectl_apply,
    yaml_file,
)
from tests.support.goagent import GoAgent, ProcessEvent
from tests.support.opamp_clients import PythonAgent
from tests.support.operator_process import kubectl

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


@pytest.fixture
def config_crd(kube_api: k8s.ApiClient, opampagent_crd: str) -> str:
    return install_crd(kube_api)


def remote_config_event(expected_hash: str) -> Any:
    def match(event: ProcessEvent) -> bool:
        return event.get("hash") == expected_hash

    return match


def cr_state(cr: dict[str, Any] | None) -> dict[str, Any]:
    """What kstatus and a person look at, in one dict (for readable assertion failures)."""
    if cr is None:
        return {}
    status = cr.get("status", {})
    return {
        "generation": cr["metadata"].get("generation"),
        "observedGeneration": status.get("observedGeneration"),
        "applied": condition(cr, "RemoteConfigApplied"),
        "reconciling": condition(cr, "Reconciling").get("status"),
        "stalled": condition(cr, "Stalled").get("status"),
        "desired": status.get("desiredConfig"),
        "reported": status.get("remoteConfigStatus"),
        "reconnect": status.get("reconnect"),
    }


async def wait_cr(
    kubeconfig: Path, namespace: str, agent_id: str, what: str, check: Any, *, within: float = 30
) -> dict[str, Any]:
    name = resource_name(agent_id)

    async def probe() -> dict[str, Any] | None:
        state = cr_state(get_object(kubeconfig, namespace, "opampagents", name))
        return state if state and check(state) else None

    return await eventually(f"{name}: {what}", probe, within)


def applied_and_current(state: dict[str, Any], source: str, config: str) -> bool:
    return bool(
        state["applied"].get("status") == "True"
        and state["generation"] == state["observedGeneration"]
        and state["reconciling"] == "False"
        and state["stalled"] == "False"
        and state["desired"] == {"hash": config, "source": source}
    )


async def test_agent_spec_config_applied_over_websocket_and_http_and_rejection_fails(
    operator_factory: OperatorFactory, kubeconfig: Path, namespace: str, config_crd: str
) -> None:
    operator = operator_factory()
    await operator.start()
    ws_id, http_id, py_id = (str(uuid.uuid4()) for _ in range(3))
    async with GoAgent() as ws_agent, GoAgent() as http_agent, PythonAgent() as py_agent:
        await ws_agent.start(
            url=operator.ws_url, instance_uid=ws_id, heartbeat=1, accept_remote_config=True
        )
        await http_agent.start(
            url=operator.http_url, instance_uid=http_id, heartbeat=1, accept_remote_config=True
        )
        await py_agent.start(
            url=operator.http_url, instance_uid=py_id, heartbeat=1, apply_remote_config=True
        )
        for agent_id in (ws_id, http_id, py_id):
            await wait_cr(kubeconfig, namespace, agent_id, "CR created", lambda s: True)

        # Nothing declared: nothing sent, no remote config conditions.
        state = cr_state(get_object(kubeconfig, namespace, "opampagents", resource_name(ws_id)))
        assert state["applied"] == {} and state["desired"] is None
        assert not ws_agent.events_named("remote_config")

        good = yaml_file("receivers:\n  otlp: {}\n")
        expected = config_hash(good)
        for agent_id in (ws_id, http_id, py_id):
            kubectl_apply(kubeconfig, namespace, agent_manifest(resource_name(agent_id), good))
        for agent in (ws_agent, http_agent, py_agent):
            event = await agent.wait_for_event(
                "remote_config", timeout=30, where=remote_config_event(expected)
            )
            assert event.get("status") == "APPLIED"
            assert event.get("files") == ["collector.yaml"]
        for agent_id in (ws_id, http_id, py_id):
            source = f"OpAMPAgent/{resource_name(agent_id)}"
            state = await wait_cr(
                kubeconfig, namespace, agent_id, "RemoteConfigApplied True and current",
                lambda s, source=source: applied_and_current(s, source, expected),
            )  # fmt: skip
            assert state["applied"]["reason"] == "Applied"
            assert state["reported"]["status"] == "APPLIED"
            assert state["reported"]["lastRemoteConfigHash"] == expected
        # The Go agents report the config back as their effective config: no drift.
        cr = get_object(kubeconfig, namespace, "opampagents", resource_name(ws_id))
        assert cr is not None
        assert cr["status"]["effectiveConfigHash"] == expected[:16]

        bad = yaml_file("REJECT this one\n")
        rejected = config_hash(bad)
        for agent_id in (ws_id, http_id):
            kubectl_apply(kubeconfig, namespace, agent_manifest(resource_name(agent_id), bad))
        for agent in (ws_agent, http_agent):
            event = await agent.wait_for_event(
                "remote_config", timeout=30, where=remote_config_event(rejected)
            )
            assert event.get("status") == "FAILED"
        for agent_id in (ws_id, http_id):
            state = await wait_cr(
                kubeconfig, namespace, agent_id, "RemoteConfigApplied False (Failed)",
                lambda s: s["applied"].get("reason") == "Failed"
                and s["generation"] == s["observedGeneration"],
            )  # fmt: skip
            assert state["applied"]["status"] == "False"
            assert state["applied"]["message"] == "config body contains REJECT"
            assert state["stalled"] == "True" and state["reconciling"] == "False"
            assert state["desired"]["hash"] == rejected
        # The Python agent was left alone: still applied, still current.
        py_state = cr_state(get_object(kubeconfig, namespace, "opampagents", resource_name(py_id)))
        assert applied_and_current(py_state, f"OpAMPAgent/{resource_name(py_id)}", expected)

        # Back to a good config: the agent applies it and the condition recovers.
        kubectl_apply(kubeconfig, namespace, agent_manifest(resource_name(ws_id), good))
        await ws_agent.wait_for_event(
            "remote_config", timeout=30, where=lambda e: e.get("hash") == expected,
            start=len(ws_agent.events) - 1,
        )  # fmt: skip
        source = f"OpAMPAgent/{resource_name(ws_id)}"
        await wait_cr(
            kubeconfig, namespace, ws_id, "recovered",
            lambda s: applied_and_current(s, source, expected),
        )  # fmt: skip
    assert await operator.terminate() == 0
    assert "Traceback" not in operator.log_text()


async def test_reconnecting_agent_gets_the_desired_config_only_if_its_hash_differs(
    operator_factory: OperatorFactory, kubeconfig: Path, namespace: str, config_crd: str
) -> None:
    """Declared before the agent ever connected; a new agent process (same uid) reports no
    hash and gets it again; a reconnect of the same process reports it and gets nothing."""
    operator = operator_factory()
    await operator.start()
    agent_id = str(uuid.uuid4())
    good = yaml_file("exporters:\n  debug: {}\n")
    expected = config_hash(good)
    kubectl_apply(kubeconfig, namespace, agent_manifest(resource_name(agent_id), good))
    async with GoAgent() as first:
        await first.start(
            url=operator.ws_url, instance_uid=agent_id, heartbeat=1, accept_remote_config=True
        )
        event = await first.wait_for_event("remote_config", timeout=30)
        assert event.get("hash") == expected and event.get("status") == "APPLIED"
        source = f"OpAMPAgent/{resource_name(agent_id)}"
        await wait_cr(
            kubeconfig, namespace, agent_id, "applied",
            lambda s: applied_and_current(s, source, expected),
        )  # fmt: skip
        # A WebSocket reconnect of the same process: it reports the hash; nothing is sent.
        mark = len(first.events)
        kubectl(
            kubeconfig, "-n", namespace, "annotate", "opampagent", resource_name(agent_id),
            "opamp.dev/reconnect-requested-at=first",
        )  # fmt: skip
        await first.wait_for_event("connected", timeout=30, start=mark)
        await first.wait_for_event("message", timeout=30, start=mark)
        state = await wait_cr(
            kubeconfig, namespace, agent_id, "reconnect recorded",
            lambda s: (s["reconnect"] or {}).get("requestedAt") == "first",
        )  # fmt: skip
        assert state["reconnect"]["result"] == "reconnect_requested"
        messages = first.events_named("message", start=mark)
        assert messages and not any(m.get("remote_config") for m in messages)
        await first.stop()
    async with GoAgent() as second:
        await second.start(
            url=operator.ws_url, instance_uid=agent_id, heartbeat=1, accept_remote_config=True
        )
        event = await second.wait_for_event("remote_config", timeout=30)
        assert event.get("hash") == expected and event.get("status") == "APPLIED"
    assert await operator.terminate() == 0
    assert "Traceback" not in operator.log_text()
