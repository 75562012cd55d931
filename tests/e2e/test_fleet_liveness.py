"""Issue 16 with the whole operator: what a user sees in CRs, Events, REST, logs, metrics.

Liveness rule per agent (status.connection.liveness and REST connection.liveness), a
goodbye staying Offline with Normal Events (also judged by a restarted operator that
holds no session for it) while a lost agent turns Error, and the once-per-agent warning
for an agent sending slower than the heartbeat timeout.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from opamp_operator.kube.shapes.naming import resource_name
from tests.e2e.conftest import OperatorFactory
from tests.e2e.helpers import eventually, get_agent_cr
from tests.support.goagent import GoAgent
from tests.support.operator_process import kubectl, metric_value

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

TIMEOUT = 3.0  # the operator's heartbeat timeout in these tests (OperatorConfig default)


def _status(kubeconfig: Path, namespace: str, agent_id: str) -> dict[str, Any]:
    cr = get_agent_cr(kubeconfig, namespace, resource_name(agent_id))
    return {} if cr is None else dict(cr.get("status") or {})


def _events(kubeconfig: Path, namespace: str, agent_id: str) -> list[tuple[str, str]]:
    about = f"involvedObject.name={resource_name(agent_id)}"
    out = kubectl(kubeconfig, "-n", namespace, "get", "events", "-o", "json",
                  "--field-selector", about)  # fmt: skip
    return [(item["type"], item["reason"]) for item in json.loads(out)["items"]]


async def test_the_liveness_rule_shows_in_the_cr_and_rest_and_a_silent_agent_stays_online(
    operator_factory: OperatorFactory, kubeconfig: Path, namespace: str
) -> None:
    operator = operator_factory(extra_args=["--ping-interval", "0.5", "--ping-timeout", "0.5"])
    await operator.start()
    quiet_id, http_id = str(uuid.uuid4()), str(uuid.uuid4())
    async with GoAgent() as quiet, GoAgent() as poller:
        await quiet.start(
            url=operator.ws_url, instance_uid=quiet_id, heartbeat=0,
            extra_args=["--no-reports-heartbeat"],
        )  # fmt: skip
        await poller.start(url=operator.http_url, instance_uid=http_id, heartbeat=1)

        def rules() -> tuple[str, str] | None:
            a, b = _status(kubeconfig, namespace, quiet_id), _status(kubeconfig, namespace, http_id)
            found = ((a.get("connection") or {}).get("liveness"),
                     (b.get("connection") or {}).get("liveness"))  # fmt: skip
            return found if all(found) else None

        async def probe() -> tuple[str, str] | None:
            return await asyncio.to_thread(rules)

        assert await eventually("liveness in both CRs", probe, within=15) == (
            "connection",
            "heartbeat",
        )
        await asyncio.sleep(3 * TIMEOUT)  # silent for three heartbeat timeouts
        status = await asyncio.to_thread(_status, kubeconfig, namespace, quiet_id)
        assert status["phase"] == "Online", status
        rest = await operator.get_json(f"/api/v1/agents/{quiet_id}/status")
        assert rest["phase"] == "Online" and rest["connection"]["liveness"] == "connection"
        rest = await operator.get_json(f"/api/v1/agents/{http_id}/status")
        assert rest["connection"]["liveness"] == "heartbeat"
        assert "heartbeat_timeout" not in [r for _, r in _events(kubeconfig, namespace, quiet_id)]


async def test_a_goodbye_stays_offline_with_normal_events_and_a_lost_agent_turns_error(
    operator_factory: OperatorFactory, kubeconfig: Path, namespace: str
) -> None:
    error_after = 2.0
    operator = operator_factory(
        error_after_offline=error_after, extra_args=["--liveness-check-interval", "0.5"]
    )
    await operator.start()
    polite_id, lost_id = str(uuid.uuid4()), str(uuid.uuid4())
    async with GoAgent() as polite, GoAgent() as lost:
        await polite.start(url=operator.ws_url, instance_uid=polite_id, heartbeat=1)
        await lost.start(url=operator.ws_url, instance_uid=lost_id, heartbeat=1, no_disconnect=True)

        def both_online() -> bool:
            return all(
                _status(kubeconfig, namespace, i).get("phase") == "Online"
                for i in (polite_id, lost_id)
            )

        async def online_probe() -> bool:
            return await asyncio.to_thread(both_online)

        await eventually("both agents Online", online_probe, within=15)
        assert await polite.stop() == 0  # client.Stop: AgentDisconnect
        await lost.stop()  # --no-disconnect: the process exits, the connection just drops

        async def lost_in_error() -> bool:
            status = await asyncio.to_thread(_status, kubeconfig, namespace, lost_id)
            return status.get("phase") == "Error"

        await eventually("the lost agent in Error", lost_in_error, within=error_after + 8)
        await asyncio.sleep(1.0)  # the polite one went Offline at the same time
        status = await asyncio.to_thread(_status, kubeconfig, namespace, polite_id)
        assert (status["phase"], status["disconnectReason"]) == ("Offline", "agent_disconnect")
        events = await asyncio.to_thread(_events, kubeconfig, namespace, polite_id)
        assert ("Normal", "agent_disconnect") in events, events
        assert all(kind == "Normal" for kind, _ in events), events
        lost_events = await asyncio.to_thread(_events, kubeconfig, namespace, lost_id)
        assert ("Warning", "offline_too_long") in lost_events, lost_events
        # offline_total - departed leaves the agents lost without a goodbye: the lost one.
        scraped = await operator.metrics_text()
        assert metric_value(scraped, "opamp_agents_offline_total") == 2
        assert metric_value(scraped, "opamp_agents_departed") == 1

    # A restarted operator holds no session for it: the CR judge must not escalate either.
    await operator.terminate()
    again = operator_factory(
        error_after_offline=error_after, extra_args=["--liveness-check-interval", "0.5"]
    )
    await again.start()
    await asyncio.sleep(error_after + 3)
    status = await asyncio.to_thread(_status, kubeconfig, namespace, polite_id)
    assert status["phase"] == "Offline", status
    metrics = await again.metrics_text()
    assert metric_value(metrics, "opamp_kube_liveness_transitions_total", {"phase": "Error"}) == 0


async def test_an_agent_slower_than_the_timeout_is_reported_once(
    operator_factory: OperatorFactory,
) -> None:
    operator = operator_factory(heartbeat_interval=1.0, heartbeat_timeout=2.0)
    await operator.start()
    assert "settings: heartbeat timeout (2s) is at most 30s" in operator.log_text()
    agent_id = str(uuid.uuid4())
    async with GoAgent() as agent:
        # Without ReportsHeartbeat opamp-go ignores the offered interval and polls every
        # 3.5 s, as the Collector's opamp extension does every 30 s.
        await agent.start(
            url=operator.http_url, instance_uid=agent_id, heartbeat=3.5,
            extra_args=["--no-reports-heartbeat"],
        )  # fmt: skip

        async def warned() -> bool:
            return f"agent {agent_id} sends every" in operator.log_text()

        await eventually("the slow-agent warning", warned, within=15)
        await asyncio.sleep(8)  # two more slow polls: no second line
        assert operator.log_text().count(f"agent {agent_id} sends every") == 1
        metrics = await operator.metrics_text()
        assert metric_value(metrics, "opamp_agents_slower_than_timeout_total") == 1
