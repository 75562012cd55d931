"""A steady fleet costs the GitOps controller no pass over its agents (issue 15, steady CPU).

Connection settings are chosen again for the agents whose CR changed, for everyone when a
config changed, and every few seconds for everyone only while some settings read Secrets
(Secrets are read, not watched). Before, every agent was visited every 5 s whatever the
specs said, and each rollout round walked every agent even with no rollout declared: at
10,000 agents both showed in the steady profile. Pure logic: real Fleet, fake clock, no API.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Collection
from typing import Any

import pytest

from opamp_operator.config import FleetSettings, KubeSettings
from opamp_operator.fleet.clock import FakeClock
from opamp_operator.fleet.events import EventBus
from opamp_operator.fleet.registry import Fleet
from opamp_operator.kube.gitops import controller as gitops
from opamp_operator.kube.shapes.naming import resource_name


def agent_cr(agent_id: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": resource_name(agent_id), "uid": agent_id, "generation": 1,
                     "resourceVersion": "1", "labels": labels or {}},
        "spec": {}, "status": {"instanceUid": agent_id},
    }  # fmt: skip


def make_controller() -> tuple[gitops.GitOpsController, list[Collection[str] | None]]:
    fleet = Fleet(FleetSettings(), FakeClock(), EventBus())
    api: Any = type("NoApi", (), {"namespace": "ns"})()
    made = gitops.GitOpsController(fleet, KubeSettings(), api, FakeClock(), gate=object())  # type: ignore[arg-type]
    passes: list[Collection[str] | None] = []

    async def refresh(names: Collection[str] | None = None) -> None:
        passes.append(None if names is None else set(names))

    made.refresh_settings = refresh  # type: ignore[method-assign]
    return made, passes


async def test_settings_are_chosen_for_changed_agents_and_not_again_while_nothing_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gitops, "SECRET_REFRESH_SECONDS", 0.01)
    controller, passes = make_controller()
    ids = [str(uuid.uuid4()) for _ in range(3)]
    controller.replace_configs([])
    controller.replace_agents([agent_cr(a) for a in ids])
    task = asyncio.create_task(controller._settings_forever())
    try:
        await asyncio.sleep(0.1)  # ten timeouts of the periodic look
        assert passes == [None]  # the first pass takes everyone, then nothing uses Secrets
        controller.apply_agent("MODIFIED", agent_cr(ids[1], labels={"tier": "gold"}))
        await asyncio.sleep(0.1)
        assert passes == [None, {resource_name(ids[1])}]
        controller._secrets_in_use = True  # what a pass that read a Secret leaves behind
        await asyncio.sleep(0.1)
        assert len(passes) > 4 and all(names is None for names in passes[2:])
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_rollout_round_without_rollouts_walks_no_agent() -> None:
    controller, _ = make_controller()
    controller.replace_configs([])
    controller.replace_agents([agent_cr(str(uuid.uuid4())) for _ in range(3)])
    walks = 0
    selected = controller._selected_agents

    def counted() -> dict[str, list[Any]]:
        nonlocal walks
        walks += 1
        return selected()

    controller._selected_agents = counted  # type: ignore[method-assign]
    assert await controller.decide_rollouts(everything=True) == 0
    assert walks == 0
