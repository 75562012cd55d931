"""The whole operator as a child process on the test bed's real servers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests.support.operator_process import OperatorConfig, OperatorProcess

OperatorFactory = Callable[..., OperatorProcess]


@pytest.fixture
async def operator_factory(
    kubeconfig: Path, namespace: str, opampagent_crd: str, postgres_dsn: str, tmp_path: Path
) -> AsyncIterator[OperatorFactory]:
    """Make operator processes (not started) for this test's namespace and database."""
    made: list[OperatorProcess] = []

    def make(**overrides: object) -> OperatorProcess:
        dsn = str(overrides.pop("dsn", postgres_dsn))  # another server's database, if given
        config = OperatorConfig(kubeconfig, namespace, dsn, **overrides)  # type: ignore[arg-type]
        process = OperatorProcess(config, tmp_path / f"operator-{len(made)}.log")
        made.append(process)
        return process

    yield make
    for process in made:
        await process.cleanup()
