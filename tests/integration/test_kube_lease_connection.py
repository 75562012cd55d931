"""The replica Lease on a connection of its own, against the test bed's kube-apiserver.

The CR client's connections can all be busy for seconds at a time (a ramp of thousands of
CR writes on a slow API server); a Lease renewal queued behind them can miss the Lease
duration and get the replica taken for lost. Here every connection of the CR client is held
by a watch the server keeps open for a few seconds: a renewal on the CR client's pool waits
for it, the keeper's own connection does not.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from opamp_operator.config import KubeSettings
from opamp_operator.fleet.clock import SystemClock
from opamp_operator.kube.api.leases import LeaseApi
from opamp_operator.kube.api.resources import KubeApi
from opamp_operator.kube.leases.keeper import LeaseKeeper, renewal_timeout

pytestmark = pytest.mark.integration

HOLD_SECONDS = 6  # how long the server keeps each held request open


@pytest.fixture
async def busy_api(kubeconfig: Path, namespace: str) -> AsyncIterator[KubeApi]:
    """The CR client with every one of its connections held by a request for HOLD_SECONDS."""
    settings = KubeSettings(namespace=namespace, kubeconfig=kubeconfig)
    api = await KubeApi.connect(settings)
    watch = f"/api/v1/namespaces/{namespace}/configmaps?watch=true&timeoutSeconds={HOLD_SECONDS}"
    held = [asyncio.create_task(api.session.get(watch)) for _ in range(settings.api_threads)]
    await asyncio.sleep(0.5)  # each has its connection and its request on the server
    try:
        yield api
    finally:
        await asyncio.gather(*held, return_exceptions=True)
        await api.close()


async def timed_start(keeper: LeaseKeeper) -> float:
    started = time.monotonic()
    await keeper.start()
    assert keeper.current, "the renewal failed"
    return time.monotonic() - started


async def test_a_renewal_does_not_wait_for_the_cr_clients_connections(
    busy_api: KubeApi, namespace: str
) -> None:
    def settings(replica: str) -> KubeSettings:
        return KubeSettings(namespace=namespace, replica_id=replica)

    own = settings("r-own")
    api = LeaseApi.own_connection(busy_api.session.credentials, namespace, renewal_timeout(own))
    try:
        own_seconds = await timed_start(LeaseKeeper(api, own, SystemClock()))
    finally:
        await api.close()
    # The same renewal on the CR client's pool (the wiring before): it waits for a held one.
    shared = LeaseKeeper(LeaseApi(busy_api.session, namespace), settings("r-shared"), SystemClock())
    shared_seconds = await timed_start(shared)
    assert own_seconds < 1.5, f"own connection: {own_seconds:.2f}s"
    assert shared_seconds > HOLD_SECONDS - 2, f"shared pool: {shared_seconds:.2f}s"
