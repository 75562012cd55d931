"""The OpAMPAgent status of its connection settings offers (no header value, ever)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from opamp_operator.fleet.model import AgentSnapshot
from opamp_operator.fleet.offers import SettingsState
from opamp_operator.kube.shapes.agentstatus import make_condition

CONNECTION_SETTINGS_APPLIED: Final = "ConnectionSettingsApplied"
# ConnectionSettingsApplied per state: True when applied, Unknown on the way, else False.
_APPLIED_STATE = {
    SettingsState.APPLIED: "True",
    SettingsState.PENDING: "Unknown",
    SettingsState.APPLYING: "Unknown",
}


def connection_settings_status(snapshot: AgentSnapshot) -> dict[str, Any] | None:
    """`status.connectionSettings`: the hash offered, where it was declared, what the agent said."""
    if snapshot.desired_settings_hash is None and snapshot.connection_settings_status is None:
        return None
    return {
        "hash": snapshot.desired_settings_hash,
        "source": snapshot.desired_settings_source,
        "state": snapshot.settings_state.value,
        "reported": snapshot.connection_settings_status,
    }


def connection_settings_conditions(
    snapshot: AgentSnapshot,
    problem: str | None,
    previous: Mapping[str, Any] | None,
    *,
    generation: int | None,
    now: datetime,
) -> list[dict[str, Any]]:
    """ConnectionSettingsApplied, while settings are declared for the agent.

    `problem`: why declared settings are not offered (a bad spec, a missing Secret or key),
    as the GitOps controller says; never a header value.
    """
    if problem is not None:
        found = make_condition(
            previous, CONNECTION_SETTINGS_APPLIED, "False", "InvalidSpec", problem,
            generation=generation, since=now,
        )  # fmt: skip
        return [found]
    state = snapshot.settings_state
    if state is SettingsState.NONE:
        return []
    found = make_condition(
        previous, CONNECTION_SETTINGS_APPLIED, _APPLIED_STATE.get(state, "False"), state.value,
        snapshot.settings_message, generation=generation, since=now,
    )  # fmt: skip
    return [found]
