"""Agents in the cluster authenticate with their Pod's ServiceAccount token, bound to that Pod.

The whole operator runs with `--agent-serviceaccount-tokens` against the test bed's
kube-apiserver, which signs ServiceAccount tokens. A real ServiceAccount and a real Pod
object (never scheduled: no kubelet here) are created in the API server, and a token for the
operator's audience bound to that Pod is requested with `kubectl create token
--bound-object-kind Pod`, as the kubelet requests the projected token of a running Pod. The
agents are the opamp-go test agent sending it as `Authorization: Bearer`, reporting the
Pod's uid (allowed, the CR names the ServiceAccount) or another uid (refused). What opamp-go
does not show (the status and body of a refused request, the close code) is checked with
scripted clients built from the specification's message definitions.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes import client as k8s
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from opamp_operator.kube.shapes.naming import resource_name
from opamp_operator.opamp.frames import encode_ws_frame
from opamp_operator.opamp.messages import AgentToServer, ServerToAgent
from tests.e2e.conftest import OperatorFactory
from tests.e2e.helpers import get_agent_cr
from tests.support.goagent import GoAgent
from tests.support.operator_process import OperatorProcess, kubectl, metric_value
from tests.support.pod_tokens import make_pod_with_account, pod_attributes, pod_token
from tests.support.polling import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


async def refusals(operator: OperatorProcess, reason: str, transport: str) -> float:
    scraped = await operator.metrics_text()
    labels = {"reason": reason, "transport": transport}
    return metric_value(scraped, "opamp_agent_credential_refusals_total", labels)


def described(uid: uuid.UUID, pod_uid: str) -> AgentToServer:
    message = AgentToServer(instance_uid=uid.bytes, sequence_num=0, capabilities=1)
    for key, value in (("service.name", "scripted"), ("k8s.pod.uid", pod_uid)):
        attribute = message.agent_description.identifying_attributes.add(key=key)
        attribute.value.string_value = value
    return message


async def post(url: str, token: str, message: AgentToServer) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/x-protobuf"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=message.SerializeToString(), headers=headers) as response,
    ):
        return response.status, await response.read()


async def test_pod_bound_token_admits_its_pods_agent_and_refuses_another_pods_claim(
    operator_factory: OperatorFactory, kubeconfig: Path, namespace: str, kube_api: k8s.ApiClient
) -> None:
    pods_ns, pod_uid = make_pod_with_account(kube_api)
    token = pod_token(kubeconfig, pods_ns)
    operator = operator_factory(extra_args=["--agent-serviceaccount-tokens", "true"])
    await operator.start()
    good, liar = uuid.uuid4(), uuid.uuid4()
    async with GoAgent() as agent, GoAgent() as impostor:
        # Its own Pod's uid, over WebSocket: Online, and the CR names the ServiceAccount.
        await agent.start(
            url=operator.ws_url, instance_uid=good, token=token, heartbeat=1,
            **pod_attributes(pod_uid, pods_ns),
        )  # fmt: skip

        async def online() -> dict[str, Any] | None:
            cr = get_agent_cr(kubeconfig, namespace, resource_name(str(good)))
            status = (cr or {}).get("status", {})
            return cr if status.get("phase") == "Online" and status.get("connection") else None

        cr = await eventually("the Pod's agent Online", online, within=30)
        assert cr["status"]["connection"]["serviceAccount"] == f"{pods_ns}/collector"
        status = await operator.get_json(f"/api/v1/agents/{good}/status")
        assert status["connection"]["serviceAccount"] == f"{pods_ns}/collector"
        wide = kubectl(kubeconfig, "-n", namespace, "get", "opampagents", "-o", "wide")
        assert "SERVICE ACCOUNT" in wide and f"{pods_ns}/collector" in wide

        # The same token with another Pod's uid, over plain HTTP: refused, never an agent.
        await impostor.start(
            url=operator.http_url, instance_uid=liar, token=token, heartbeat=1,
            **pod_attributes(str(uuid.uuid4()), pods_ns),
        )  # fmt: skip
        await eventually(
            "the impostor's refusal counted",
            lambda: refusals(operator, "pod_uid_mismatch", "http"),
            within=30,
        )
        assert get_agent_cr(kubeconfig, namespace, resource_name(str(liar))) is None
        listed = await operator.get_json("/api/v1/agents")
        assert [item["id"] for item in listed["items"]] == [str(good)]
        assert "refused an OpAMP agent (http)" in operator.log_text()
        assert f"as {pods_ns}/collector (Pod {pods_ns}/collector-0)" in operator.log_text()


async def test_refusals_say_why_and_other_tokens_get_401(
    operator_factory: OperatorFactory, kubeconfig: Path, kube_api: k8s.ApiClient
) -> None:
    """Scripted clients: opamp-go shows neither a refused POST's body nor the close code."""
    pods_ns, pod_uid = make_pod_with_account(kube_api)
    token = pod_token(kubeconfig, pods_ns)
    operator = operator_factory(extra_args=["--agent-serviceaccount-tokens", "true"])
    await operator.start()

    # HTTP: 403 with a ServerErrorResponse naming both uids.
    other = str(uuid.uuid4())
    status, body = await post(operator.http_url, token, described(uuid.uuid4(), other))
    assert status == 403
    error = ServerToAgent.FromString(body).error_response.error_message
    assert other in error and pod_uid in error

    # WebSocket: the upgrade succeeds (the token is good), the mismatching message is
    # answered by closing with 1008 and the reason.
    headers = {"Authorization": f"Bearer {token}"}
    async with connect(operator.ws_url, additional_headers=headers) as socket:
        await socket.send(encode_ws_frame(described(uuid.uuid4(), other).SerializeToString()))
        with pytest.raises(ConnectionClosed) as closed:
            await socket.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    assert other in closed.value.rcvd.reason
    assert await refusals(operator, "pod_uid_mismatch", "websocket") == 1

    # The matching claim is served (200, a reply for its uid).
    uid = uuid.uuid4()
    status, body = await post(operator.http_url, token, described(uid, pod_uid))
    assert status == 200 and ServerToAgent.FromString(body).instance_uid == uid.bytes

    # A token for another audience, no token, or garbage: 401 before the upgrade.
    wrong_audience = pod_token(kubeconfig, pods_ns, audience="someone-else")
    for presented in (wrong_audience, "not-a-token"):
        status, _ = await post(operator.http_url, presented, described(uuid.uuid4(), pod_uid))
        assert status == 401
        with pytest.raises(InvalidStatus) as refused:
            async with connect(
                operator.ws_url, additional_headers={"Authorization": f"Bearer {presented}"}
            ):
                pass
        assert refused.value.response.status_code == 401
    with pytest.raises(InvalidStatus) as refused:
        async with connect(operator.ws_url):
            pass
    assert refused.value.response.status_code == 401
    assert await refusals(operator, "token_rejected", "http") == 2


async def test_after_an_operator_restart_an_http_agent_is_asked_to_describe_itself_first(
    operator_factory: OperatorFactory, kubeconfig: Path, namespace: str, kube_api: k8s.ApiClient
) -> None:
    """The new process holds no description: the agent's bare polls cannot be bound to its
    Pod, so they are answered with ReportFullState until opamp-go sends its description."""
    pods_ns, pod_uid = make_pod_with_account(kube_api)
    token = pod_token(kubeconfig, pods_ns)
    operator = operator_factory(extra_args=["--agent-serviceaccount-tokens", "true"])
    await operator.start()
    uid = uuid.uuid4()
    async with GoAgent() as agent:
        await agent.start(
            url=operator.http_url, instance_uid=uid, token=token, heartbeat=0.5,
            **pod_attributes(pod_uid, pods_ns),
        )  # fmt: skip

        async def online_here() -> Any:
            try:
                status = await operator.get_json(f"/api/v1/agents/{uid}/status")
            except (AssertionError, aiohttp.ClientError):
                return None
            return status if status["phase"] == "Online" else None

        await eventually("the HTTP agent Online", online_here, within=30)
        before = await eventually("its CR", lambda: connected_at(kubeconfig, namespace, uid))
        await operator.terminate()
        await operator.start()
        await eventually("the HTTP agent Online in the new process", online_here, within=30)
        status = await online_here()
        assert status["description"]["identifyingAttributes"]["k8s.pod.uid"] == pod_uid

        async def reconnected() -> dict[str, Any] | None:
            cr = get_agent_cr(kubeconfig, namespace, resource_name(str(uid)))
            at = (cr or {}).get("status", {}).get("lastConnectedAt")
            return cr if cr is not None and at is not None and at > before else None

        cr = await eventually("the CR written by the new process", reconnected, within=30)
        assert cr["status"]["connection"]["serviceAccount"] == f"{pods_ns}/collector"
        assert await refusals(operator, "pod_uid_mismatch", "http") == 0


def connected_at(kubeconfig: Path, namespace: str, uid: uuid.UUID) -> str | None:
    cr = get_agent_cr(kubeconfig, namespace, resource_name(str(uid)))
    at = (cr or {}).get("status", {}).get("lastConnectedAt")
    return None if at is None else str(at)
