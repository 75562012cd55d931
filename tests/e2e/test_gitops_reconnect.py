"""Reconnect the GitOps way: `opamp.dev/reconnect-requested-at` acts once per value."""

from __future__ import annotations

import asyncio
import uuid
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from opamp_operator.kube.shapes.naming import resource_name
from tests.e2e.conftest import OperatorFactory
from tests.e2e.helpers import label_applied
from tests.support.gitops import get_object, install_crd
from tests.support.goagent import GoAgent
from tests.support.operator_process import OperatorProcess, kubectl
from tests.support.polling import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

ANNOTATION = "opamp.dev/reconnect-requested-at"


@pytest.fixture
def config_crd(kube_api: k8s.ApiClient, opampagent_crd: str) -> str:
    return install_crd(kube_api)


def annotate(kubeconfig: Path, namespace: str, name: str, value: str) -> None:
    kubectl(
        kubeconfig, "-n", namespace, "annotate", "--overwrite", "opampagent", name,
        f"{ANNOTATION}={value}",
    )  # fmt: skip


def status_of(kubeconfig: Path, namespace: str, name: str) -> dict[str, Any]:
    cr = get_object(kubeconfig, namespace, "opampagents", name) or {}
    return dict(cr.get("status") or {})


def requests_logged(operator: OperatorProcess, name: str) -> int:
    """Reconnects the operator asked of `name`'s agent, by its log (the line is written as
    it asks, in both processes of the test: they share the log file)."""
    return operator.log_text().count(f"OpAMPAgent {name}: reconnect requested by annotation")


def _phase_is(kubeconfig: Path, namespace: str, name: str, phase: str) -> bool:
    return status_of(kubeconfig, namespace, name).get("phase") == phase


async def recorded(kubeconfig: Path, namespace: str, name: str, value: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        reconnect = status_of(kubeconfig, namespace, name).get("reconnect") or {}
        return reconnect if reconnect.get("requestedAt") == value else None

    return await eventually(f"{name} to record reconnect {value}", probe, within=30)


async def test_annotation_reconnects_once_per_value_even_across_restarts(
    operator_factory: OperatorFactory, kubeconfig: Path, namespace: str, config_crd: str
) -> None:
    operator = operator_factory()
    await operator.start()
    ws_id, http_id, gone_id = (str(uuid.uuid4()) for _ in range(3))
    ws_name, http_name, gone_name = map(resource_name, (ws_id, http_id, gone_id))
    async with GoAgent() as ws, GoAgent() as http, GoAgent() as gone:
        await ws.start(url=operator.ws_url, instance_uid=ws_id, heartbeat=1)
        await http.start(url=operator.http_url, instance_uid=http_id, heartbeat=1)
        await gone.start(url=operator.ws_url, instance_uid=gone_id, heartbeat=1)
        for name in (ws_name, http_name, gone_name):
            await eventually(
                f"{name} Online",
                partial(_phase_is, kubeconfig, namespace, name, "Online"),
                within=30,
            )

        # WebSocket: the connection is closed, the agent connects again; once.
        await ws.wait_for_event("connected")
        annotate(kubeconfig, namespace, ws_name, "2026-01-01T00:00:00Z")
        result = await recorded(kubeconfig, namespace, ws_name, "2026-01-01T00:00:00Z")
        assert result["result"] == "reconnect_requested" and result["replica"] == "e2e"
        await ws.wait_for_event("connected", start=ws.events_named("connected")[0].index + 1)
        # Other changes to the CR (its record's write, a label) do not repeat it: once the
        # controller applied the label, it had acted on them already or never will.
        await label_applied(operator, kubeconfig, namespace, ws_name, "team=a")
        assert requests_logged(operator, ws_name) == 1
        assert len(ws.events_named("connected")) == 2
        # A new value: once more.
        annotate(kubeconfig, namespace, ws_name, "second")
        await recorded(kubeconfig, namespace, ws_name, "second")
        await eventually(
            "a third connection", lambda: len(ws.events_named("connected")) == 3, within=30
        )

        # HTTP: there is no connection to close; the session ends and the next poll opens
        # a new one.
        before = status_of(kubeconfig, namespace, http_name)["lastConnectedAt"]
        await asyncio.sleep(1.1)  # lastConnectedAt has a resolution of one second
        annotate(kubeconfig, namespace, http_name, "http-1")
        result = await recorded(kubeconfig, namespace, http_name, "http-1")
        assert result["result"] == "reconnect_requested"
        await eventually(
            "a new HTTP session",
            lambda: (
                status_of(kubeconfig, namespace, http_name).get("lastConnectedAt", before) > before
            ),
            within=30,
        )

        # An agent that is not connected: recorded as such, nothing else.
        await gone.stop()
        await eventually(
            f"{gone_name} not Online",
            lambda: status_of(kubeconfig, namespace, gone_name).get("phase") != "Online",
            within=30,
        )
        annotate(kubeconfig, namespace, gone_name, "while-away")
        result = await recorded(kubeconfig, namespace, gone_name, "while-away")
        assert result["result"] == "agent_not_connected"

        # A restart: the agent reconnects to the new process by itself, and the annotation
        # (already handled) does not make it reconnect again.
        assert await operator.terminate() == 0
        connects = len(ws.events_named("connected"))
        connected_at = status_of(kubeconfig, namespace, ws_name)["lastConnectedAt"]
        await operator.start()
        await eventually(
            "reconnected after the restart",
            lambda: len(ws.events_named("connected")) == connects + 1,
            within=30,
        )
        await eventually(  # the new session's write: an event the controller sees too
            "the new session in the CR",
            lambda: status_of(kubeconfig, namespace, ws_name)["lastConnectedAt"] != connected_at,
            within=30,
        )
        await label_applied(operator, kubeconfig, namespace, ws_name, "team=b")
        assert requests_logged(operator, ws_name) == 2  # "2026-01-01T00:00:00Z" and "second"
        assert len(ws.events_named("connected")) == connects + 1
        assert (status_of(kubeconfig, namespace, ws_name).get("reconnect") or {}).get(
            "requestedAt"
        ) == "second"
    assert await operator.terminate() == 0
    assert "Traceback" not in operator.log_text()
