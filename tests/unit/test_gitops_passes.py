"""The GitOps controller's loops count their passes (`opamp_loop_passes_total`): the e2e tests
wait for them where something must not happen, instead of sleeping."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from opamp_operator.config import FleetSettings, KubeSettings
from opamp_operator.fleet.clock import SystemClock
from opamp_operator.fleet.events import EventBus
from opamp_operator.fleet.registry import Fleet
from opamp_operator.kube.api.resources import KubeApi
from opamp_operator.kube.gitops.controller import GitOpsController
from tests.support.polling import grows, in_process_passes


def _controller() -> GitOpsController:
    fleet = Fleet(FleetSettings(), SystemClock(), EventBus())
    api = cast(KubeApi, object())  # the loops below make no API call: no agent, no config
    controller = GitOpsController(
        fleet, KubeSettings(namespace="n"), api, SystemClock(), status_interval_seconds=0.01
    )
    controller.replace_agents([])  # both informers listed: ready
    controller.replace_configs([])
    return controller


def _agent(labels: dict[str, str]) -> dict[str, Any]:
    name = "agent-0f1e2d3c-4b5a-4968-8776-655443322110"
    return {"metadata": {"name": name, "generation": 1, "labels": labels}, "status": {}}


async def test_the_resolver_counts_a_pass_for_each_change_that_wakes_it() -> None:
    controller = _controller()
    task = asyncio.create_task(controller._resolve_forever())
    try:
        passes = in_process_passes("gitops_resolver")
        await grows("the resolver's pass after the listings", passes, within=2)
        start = await passes()
        await asyncio.sleep(0.05)
        assert await passes() == start  # nothing woke it: no pass
        controller.apply_agent("ADDED", _agent({"team": "a"}))
        await grows("a pass for the new agent", passes, within=2)
        controller.apply_agent("MODIFIED", _agent({"team": "b"}))  # a label changed
        await grows("a pass for the label change", passes, within=2)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_the_rollout_loop_counts_every_pass() -> None:
    controller = _controller()
    task = asyncio.create_task(controller._write_counts_forever())
    try:
        await grows("rollout passes", in_process_passes("gitops_rollout"), 3, within=2)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
