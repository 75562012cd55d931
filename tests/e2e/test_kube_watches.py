"""One watch per kind per replica (issue 14): counted by the API server itself.

The kube-apiserver's own gauge `apiserver_longrunning_requests{verb="WATCH"}` counts the
watch requests it serves by resource; the operator's `opamp_kube_watches_open` says the
same from its side. One operator process must hold exactly one watch of OpAMPAgents (Kopf
no longer watches them beside the shared informer) and one of OpAMPAgentConfigs.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from kubernetes import client as k8s

from tests.e2e.conftest import OperatorFactory
from tests.support.gitops import install_crd
from tests.support.operator_process import kubectl, metric_value
from tests.support.polling import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

KINDS = ("opampagents", "opampagentconfigs")


def _served_watches(kubeconfig: Path) -> dict[str, float]:
    text = kubectl(kubeconfig, "get", "--raw", "/metrics")
    return {
        kind: metric_value(
            text, "apiserver_longrunning_requests", {"verb": "WATCH", "resource": kind}
        )
        for kind in KINDS
    }


@pytest.fixture
def config_crd(kube_api: k8s.ApiClient, opampagent_crd: str) -> str:
    return install_crd(kube_api)


async def test_one_watch_per_kind_as_the_api_server_counts_them(
    operator_factory: OperatorFactory, kubeconfig: Path, config_crd: str
) -> None:
    before = await asyncio.to_thread(_served_watches, kubeconfig)  # other tests' leftovers
    operator = operator_factory()
    await operator.start()

    async def ours() -> dict[str, float] | None:
        text = await operator.metrics_text()
        found = {k: metric_value(text, "opamp_kube_watches_open", {"resource": k}) for k in KINDS}
        return found if all(found.values()) else None

    assert await eventually("the operator's watches open", ours, within=20) == dict.fromkeys(
        KINDS, 1.0
    )
    # Kopf's own start-up is done: its watchers start after login and its start-up handlers,
    # on its own discovery, with nothing we can read to say they have; 2 s is ample.
    await asyncio.sleep(2.0)
    after = await asyncio.to_thread(_served_watches, kubeconfig)
    assert {k: after[k] - before[k] for k in KINDS} == dict.fromkeys(KINDS, 1.0), (before, after)
    assert await ours() == dict.fromkeys(KINDS, 1.0)
