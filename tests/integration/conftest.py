"""Kubernetes fixtures for integration tests: the OpAMPAgent CRD installed, a mirror client.

Only kube fixtures live here (tests/conftest.py has the test bed itself).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from opamp_operator.config import KubeSettings
from opamp_operator.kube.api.resources import KubeApi


@pytest.fixture
async def mirror_api(
    kubeconfig: Path, namespace: str, opampagent_crd: str
) -> AsyncIterator[KubeApi]:
    """The mirror's own async client (admin credentials), on a fresh namespace."""
    api = await KubeApi.connect(KubeSettings(namespace=namespace, kubeconfig=kubeconfig))
    try:
        yield api
    finally:
        await api.close()
