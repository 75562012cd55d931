"""What an OpAMPAgent's status shows, computed from an agent snapshot (pure: no I/O, no clock).

Every builder takes the status the CR has now (`previous`) so that a condition whose status
did not change keeps its `lastTransitionTime`. Absent values are None, which a JSON merge
patch turns into "remove this field".
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

from opamp_operator.fleet.model import DEPARTURES, AgentPhase, AgentSnapshot

CONNECTED: Final = "Connected"
HEALTHY: Final = "Healthy"
READY: Final = "Ready"
RECONCILING: Final = "Reconciling"
STALLED: Final = "Stalled"

MAX_ATTRIBUTES: Final = 64  # per map; an agent's attributes must not bloat its CR
MAX_ATTRIBUTE_CHARS: Final = 512
_REASON_INVALID = re.compile(r"[^A-Za-z0-9_,:]")

Status = dict[str, Any]


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC to the second, as Kubernetes writes its own timestamps."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: object) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        return None


def build_status(
    snapshot: AgentSnapshot,
    previous: Mapping[str, Any] | None,
    *,
    generation: int | None,
    replica: str,
    now: datetime,
) -> Status:
    """The whole status the CR should show for `snapshot`."""
    session = snapshot.session
    connection = None
    if session is not None:
        connection = {
            "transport": session.transport.value,
            "remoteAddr": session.remote_addr,
            "replica": replica,
            "liveness": None if snapshot.liveness is None else snapshot.liveness.value,
            "serviceAccount": session.service_account,
        }
    status: Status = {
        "phase": snapshot.phase.value,
        "lastSeenAt": format_time(snapshot.last_seen_at),
        "lastConnectedAt": _time_or_none(snapshot.last_connected_at),
        "lastDisconnectedAt": _time_or_none(snapshot.last_disconnected_at),
        "disconnectReason": snapshot.disconnect_reason,
        "instanceUid": snapshot.agent_id,
        "agent": _agent(snapshot),
        "capabilities": list(snapshot.capabilities),
        "customCapabilities": list(snapshot.custom_capabilities) or None,
        "availableComponents": _components(snapshot),
        "health": snapshot.health,
        "effectiveConfigHash": snapshot.effective_config_hash,
        "remoteConfigStatus": snapshot.remote_config_status,
        "connection": connection,
        "observedGeneration": generation,
    }
    status["conditions"] = _conditions(snapshot, previous, generation, now)
    return status


def disconnected_status(
    previous: Mapping[str, Any],
    phase: AgentPhase,
    reason: str,
    *,
    generation: int | None,
    now: datetime,
) -> Status:
    """`previous` moved to Offline/Error by someone that holds no session for the agent.

    Used for CRs whose agent no live process knows (the process holding it died): only the
    CR itself tells what the agent looked like. Reconciling and Stalled stay as the holder
    last wrote them, except in Error (Stalled, see `kstatus_conditions`).
    """
    status: Status = {key: value for key, value in previous.items() if key != "conditions"}
    status["phase"] = phase.value
    status["connection"] = None
    status["observedGeneration"] = generation
    if _condition_status(previous, CONNECTED) != "False":
        status["lastDisconnectedAt"] = format_time(now)
        status["disconnectReason"] = reason
    since = parse_time(status.get("lastDisconnectedAt")) or now
    disconnect = str(status.get("disconnectReason") or reason)
    stale = "the agent is not connected; its last health report may be stale"
    conditions = [
        _condition(
            previous, CONNECTED, "False", disconnect,
            f"no live session since {format_time(since)}", generation=generation, since=since,
        ),
        _condition(
            previous, HEALTHY, "Unknown", "agent_offline", stale,
            generation=generation, since=now,
        ),
    ]  # fmt: skip
    if not departed(phase, reason):
        message = f"{phase.value}: {reason}"
        ready = _condition(
            previous, READY, "False", reason, message, generation=generation, since=now
        )
        conditions.append(ready)
    own = {CONNECTED, HEALTHY, READY}
    if phase is AgentPhase.ERROR:
        own |= {RECONCILING, STALLED}
        conditions += kstatus_conditions(
            phase, reason, None, previous, generation=generation, now=now
        )
    # Conditions about other things (remote config) stay as the holder last wrote them.
    conditions += [dict(c) for c in _conditions_of(previous) if c.get("type") not in own]
    status["conditions"] = conditions
    return status


def departed(phase: AgentPhase, reason: str) -> bool:
    """Offline on purpose (a goodbye, its Pod deleted): kstatus Current, no Ready condition.

    Like a Deployment scaled to zero: a Flux Kustomization that declares the agent's
    `spec.remoteConfig` must not wait for an agent that left on purpose (the config is
    delivered when it returns).
    """
    return phase is AgentPhase.OFFLINE and reason in DEPARTURES


@dataclass(frozen=True, slots=True)
class Progress:
    """How far one part of the status (the remote config) is, for kstatus."""

    verdict: Literal["reconciling", "stalled", "done"]
    reason: str
    message: str


def kstatus_conditions(
    phase: AgentPhase,
    phase_reason: str,
    config: Progress | None,
    previous: Mapping[str, Any] | None,
    *,
    generation: int | None,
    now: datetime,
) -> list[dict[str, Any]]:
    """Reconciling and Stalled of an OpAMPAgent from its phase and remote config.

    Never both True (kstatus takes the first of them it meets). Error is terminal until the
    agent returns: Stalled. A config on its way keeps it Reconciling, unless the agent left
    on purpose (it gets the config when it returns).
    """
    if phase is AgentPhase.ERROR:
        message = f"Error: {phase_reason}: offline longer than allowed; fine again once it returns"
        verdict = Progress("stalled", phase_reason, message)
    elif config is None or (config.verdict == "reconciling" and departed(phase, phase_reason)):
        message = "nothing under way" if config is None else config.message
        verdict = Progress("done", "", message)
    else:
        verdict = config
    reconciling, stalled = verdict.verdict == "reconciling", verdict.verdict == "stalled"
    return [
        _condition(
            previous, RECONCILING, str(reconciling), verdict.reason if reconciling
            else "NotReconciling", verdict.message, generation=generation, since=now,
        ),
        _condition(
            previous, STALLED, str(stalled), verdict.reason if stalled else "NotStalled",
            verdict.message, generation=generation, since=now,
        ),
    ]  # fmt: skip


def offline_since(status: Mapping[str, Any]) -> datetime | None:
    """When the CR's agent stopped being connected, as the CR tells it."""
    for condition in _conditions_of(status):
        if condition.get("type") == CONNECTED and condition.get("status") == "False":
            return parse_time(condition.get("lastTransitionTime"))
    return parse_time(status.get("lastDisconnectedAt"))


def condition(status: Mapping[str, Any], kind: str) -> dict[str, Any] | None:
    """The condition of type `kind` in `status`, if any."""
    for item in _conditions_of(status):
        if item.get("type") == kind:
            return dict(item)
    return None


def merge_patch(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """The RFC 7386 merge patch that turns `before` into `after` for the keys of `after`.

    Keys only in `before` are kept at the top level (they may belong to someone else) but
    removed inside nested maps we own (health components, attributes). None removes a key.
    """
    return _diff(before, after, drop_missing=False)


# -- internals -------------------------------------------------------------------------


def _diff(
    before: Mapping[str, Any], after: Mapping[str, Any], drop_missing: bool
) -> dict[str, Any]:
    patch: dict[str, Any] = {}
    if drop_missing:
        for key in before.keys() - after.keys():
            patch[key] = None
    for key, value in after.items():
        old = before.get(key)
        if value is None:
            if old is not None:
                patch[key] = None
        elif isinstance(value, Mapping) and isinstance(old, Mapping):
            nested = _diff(old, value, drop_missing=True)
            if nested:
                patch[key] = nested
        elif _prune(value) != old:
            patch[key] = _prune(value)
    return patch


def _prune(value: Any) -> Any:
    """`value` without None entries in maps (they mean nothing in a freshly written map)."""
    if isinstance(value, Mapping):
        return {k: _prune(v) for k, v in value.items() if v is not None}
    return value


def _agent(snapshot: AgentSnapshot) -> dict[str, Any]:
    service_namespace = snapshot.identifying_attributes.get("service.namespace")
    return {
        "serviceName": snapshot.service_name,
        "serviceVersion": snapshot.service_version,
        "serviceNamespace": None if service_namespace is None else str(service_namespace),
        "hostName": snapshot.host_name,
        "identifyingAttributes": _string_map(snapshot.identifying_attributes),
        "nonIdentifyingAttributes": _string_map(snapshot.non_identifying_attributes),
    }


def _components(snapshot: AgentSnapshot) -> dict[str, Any] | None:
    """Counts by kind and the hash only: the full list is in the REST API and PostgreSQL."""
    held = snapshot.available_components
    return None if held is None else held.summary()


def _string_map(attributes: Mapping[str, Any]) -> dict[str, str]:
    """Attribute values as text (the CRD says map of string), bounded in count and size."""
    result: dict[str, str] = {}
    for key in sorted(attributes)[:MAX_ATTRIBUTES]:
        value = attributes[key]
        if isinstance(value, str):
            text = value
        elif isinstance(value, bytes):
            text = value.hex()
        elif isinstance(value, bool | int | float) or value is None:
            text = json.dumps(value)
        else:
            text = json.dumps(value, sort_keys=True, default=str)
        result[key] = text[:MAX_ATTRIBUTE_CHARS]
    return result


def _conditions(
    snapshot: AgentSnapshot,
    previous: Mapping[str, Any] | None,
    generation: int | None,
    now: datetime,
) -> list[dict[str, Any]]:
    session = snapshot.session
    if session is not None:
        connected = _condition(
            previous, CONNECTED, "True", snapshot.phase_reason,
            f"connected over {session.transport.value} from {session.remote_addr}",
            generation=generation, since=session.connected_at,
        )  # fmt: skip
    else:
        since = snapshot.last_disconnected_at or snapshot.phase_since
        reason = snapshot.disconnect_reason or snapshot.phase_reason
        connected = _condition(
            previous, CONNECTED, "False", reason,
            f"not connected since {format_time(since)}", generation=generation, since=since,
        )  # fmt: skip
    healthy = _healthy(snapshot, previous, generation, now)
    if departed(snapshot.phase, snapshot.phase_reason):
        return [connected, healthy]
    return [connected, healthy, _ready(snapshot, healthy["status"], previous, generation, now)]


def _healthy(
    snapshot: AgentSnapshot,
    previous: Mapping[str, Any] | None,
    generation: int | None,
    now: datetime,
) -> dict[str, Any]:
    health = snapshot.health
    if health is None:
        state, reason, message = "Unknown", "not_reported", "the agent has not reported health"
    elif snapshot.session is None:
        state, reason = "Unknown", "agent_offline"
        message = f"the agent is not connected; it last reported healthy={health.get('healthy')}"
    elif health.get("healthy"):
        state, reason = "True", "reported_healthy"
        message = str(health.get("status") or "the agent reports healthy")
    else:
        state, reason = "False", "reported_unhealthy"
        message = str(health.get("lastError") or health.get("status") or "unhealthy")
    return _condition(previous, HEALTHY, state, reason, message, generation=generation, since=now)


def _ready(
    snapshot: AgentSnapshot,
    healthy: str,
    previous: Mapping[str, Any] | None,
    generation: int | None,
    now: datetime,
) -> dict[str, Any]:
    config_status = (snapshot.remote_config_status or {}).get("status")
    if snapshot.phase is not AgentPhase.ONLINE or snapshot.session is None:
        reason = snapshot.phase_reason
        state, message = "False", f"{snapshot.phase.value}: {snapshot.phase_reason}"
    elif healthy == "False":
        state, reason, message = "False", "unhealthy", "Online but reports unhealthy"
    elif config_status == "FAILED":
        state, reason = "False", "remote_config_failed"
        message = str((snapshot.remote_config_status or {}).get("errorMessage") or reason)
    else:
        state, reason, message = "True", "online", "Online and not reporting problems"
    return _condition(previous, READY, state, reason, message, generation=generation, since=now)


def _condition(
    previous: Mapping[str, Any] | None,
    kind: str,
    state: str,
    reason: str,
    message: str,
    *,
    generation: int | None,
    since: datetime,
) -> dict[str, Any]:
    before = condition(previous or {}, kind)
    unchanged = before is not None and before.get("status") == state
    transition = before.get("lastTransitionTime") if unchanged and before else None
    result: dict[str, Any] = {
        "type": kind,
        "status": state,
        "reason": _reason(reason),
        "message": message[:1024],
        "lastTransitionTime": transition or format_time(since),
    }
    if generation is not None:
        result["observedGeneration"] = generation
    return result


def make_condition(
    previous: Mapping[str, Any] | None,
    kind: str,
    state: str,
    reason: str,
    message: str,
    *,
    generation: int | None,
    since: datetime,
) -> dict[str, Any]:
    """A condition entry that keeps `previous`'s lastTransitionTime while its status holds."""
    return _condition(previous, kind, state, reason, message, generation=generation, since=since)


def _condition_status(status: Mapping[str, Any], kind: str) -> str | None:
    found = condition(status, kind)
    return None if found is None else str(found.get("status"))


def _conditions_of(status: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    items = status.get("conditions")
    return [item for item in items if isinstance(item, Mapping)] if isinstance(items, list) else []


def _reason(text: str) -> str:
    """A reason the Condition schema accepts: a letter first, then [A-Za-z0-9_,:]."""
    cleaned = _REASON_INVALID.sub("_", text).rstrip(",:") or "unknown"
    return cleaned if cleaned[0].isalpha() else f"r_{cleaned}"


def _time_or_none(moment: datetime | None) -> str | None:
    return None if moment is None else format_time(moment)
