"""The open-files limit: raised to the hard limit at start; the agent connections it leaves."""

from __future__ import annotations

import resource
from collections.abc import Iterator

import pytest

from opamp_operator.fdlimit import RESERVED, connection_capacity, raise_open_files_limit


@pytest.fixture
def restored_limit() -> Iterator[tuple[int, int]]:
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        yield limits
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, limits)


def test_the_soft_limit_is_raised_to_the_hard_one(restored_limit: tuple[int, int]) -> None:
    _, hard = restored_limit
    if hard == resource.RLIM_INFINITY or hard < 512:
        pytest.skip(f"needs a finite hard limit of at least 512 (here {hard})")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    assert raise_open_files_limit() == hard
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)


def test_capacity_keeps_a_reserve_for_everything_but_agents() -> None:
    assert connection_capacity(None) is None
    assert connection_capacity(20_000) == 20_000 - RESERVED
    assert connection_capacity(1024) == 768  # a small limit keeps a quarter
    assert connection_capacity(1) == 1
