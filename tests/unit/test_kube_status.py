"""The OpAMPAgent status builder, names and labels, the liveness verdicts (pure functions)."""

from __future__ import annotations

import re
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from opamp_operator.fleet.components import AvailableComponents
from opamp_operator.fleet.model import AgentPhase, AgentSnapshot, Liveness, SessionInfo, Transport
from opamp_operator.kube.liveness.judge import Thresholds, due_at, judge
from opamp_operator.kube.shapes.agentstatus import (
    build_status,
    disconnected_status,
    merge_patch,
    offline_since,
)
from opamp_operator.kube.shapes.agentstatus import (
    condition as find_condition,
)
from opamp_operator.kube.shapes.naming import (
    agent_id_from_name,
    agent_labels,
    label_value,
    resource_name,
)

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
LABEL = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    found = find_condition(status, kind)
    assert found is not None, f"no {kind} condition"
    return found


def snapshot(**changes: object) -> AgentSnapshot:
    base = AgentSnapshot(
        agent_id="0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
        phase=AgentPhase.ONLINE,
        phase_reason="connected",
        phase_since=T0,
        first_seen_at=T0,
        last_seen_at=T0,
        last_connected_at=T0,
        last_disconnected_at=None,
        disconnect_reason=None,
        session=SessionInfo("s1", Transport.HTTP, "10.0.0.7:5555", T0),
        liveness=Liveness.HEARTBEAT,
        identifying_attributes={"service.name": "checkout", "service.version": "2.0"},
        non_identifying_attributes={"host.name": "node-1", "cpu.count": 8, "tags": ["a", "b"]},
        capabilities=["ReportsStatus", "ReportsHealth"],
        health={"healthy": True, "status": "ok"},
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_the_service_account_an_agent_authenticated_as_is_in_its_connection() -> None:
    base = snapshot()
    assert base.session is not None
    session = replace(base.session, service_account="team-a/collector")
    status = build_status(replace(base, session=session), None, generation=1, replica="r", now=T0)
    assert status["connection"]["serviceAccount"] == "team-a/collector"


def test_online_agent_status() -> None:
    status = build_status(snapshot(), None, generation=3, replica="r-1", now=T0)
    assert status["phase"] == "Online"
    assert status["lastSeenAt"] == "2026-03-01T12:00:00Z"
    assert status["connection"] == {
        "transport": "http",
        "remoteAddr": "10.0.0.7:5555",
        "replica": "r-1",
        "liveness": "heartbeat",
        "serviceAccount": None,
    }
    assert status["agent"]["nonIdentifyingAttributes"] == {
        "host.name": "node-1", "cpu.count": "8", "tags": '["a", "b"]',
    }  # fmt: skip
    assert status["observedGeneration"] == 3
    kinds = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert kinds == {
        "Connected": ("True", "connected"),
        "Healthy": ("True", "reported_healthy"),
        "Ready": ("True", "online"),
    }
    assert all(c["observedGeneration"] == 3 for c in status["conditions"])


def test_available_components_show_as_a_summary_patched_only_on_change() -> None:
    held = AvailableComponents(b"\xab", b"raw", (("exporters", 2), ("receivers", 3)))
    status = build_status(
        snapshot(available_components=held), None, generation=1, replica="r", now=T0
    )
    summary = {"hash": "ab", "complete": True, "counts": {"exporters": 2, "receivers": 3}}
    assert status["availableComponents"] == {**summary, "total": 5}
    again = build_status(
        snapshot(available_components=held), status, generation=1, replica="r", now=T0
    )
    assert merge_patch(status, again) == {}  # the same set: nothing to write
    fewer = replace(held, counts=(("receivers", 3),))
    after = build_status(
        snapshot(available_components=fewer), status, generation=1, replica="r", now=T0
    )
    patch = merge_patch(status, after)
    assert patch == {"availableComponents": {"counts": {"exporters": None}, "total": 3}}
    assert (
        build_status(snapshot(), None, generation=1, replica="r", now=T0)["availableComponents"]
        is None
    )


def test_unchanged_condition_keeps_its_transition_time() -> None:
    first = build_status(snapshot(), None, generation=1, replica="r", now=T0)
    later = T0 + timedelta(minutes=5)
    same = build_status(snapshot(last_seen_at=later), first, generation=1, replica="r", now=later)
    assert same["conditions"] == first["conditions"]
    assert merge_patch(first, same) == {"lastSeenAt": "2026-03-01T12:05:00Z"}
    sick = snapshot(health={"healthy": False, "lastError": "disk full"}, last_seen_at=later)
    second = build_status(sick, first, generation=1, replica="r", now=later)
    assert condition(second, "Connected") == condition(first, "Connected")
    assert condition(second, "Healthy")["lastTransitionTime"] == "2026-03-01T12:05:00Z"
    assert condition(second, "Healthy")["message"] == "disk full"
    assert condition(second, "Ready")["reason"] == "unhealthy"


def test_offline_agent_uses_the_disconnect_time_and_reason() -> None:
    gone = T0 + timedelta(seconds=90)
    offline = snapshot(
        phase=AgentPhase.OFFLINE, phase_reason="heartbeat_timeout", phase_since=gone,
        session=None, last_disconnected_at=gone, disconnect_reason="heartbeat_timeout",
    )  # fmt: skip
    status = build_status(offline, None, generation=None, replica="r", now=gone + timedelta(5))
    assert status["connection"] is None
    connected = condition(status, "Connected")
    assert (connected["status"], connected["reason"]) == ("False", "heartbeat_timeout")
    assert connected["lastTransitionTime"] == "2026-03-01T12:01:30Z"
    assert "observedGeneration" not in connected
    assert condition(status, "Healthy")["status"] == "Unknown"
    assert offline_since(status) == gone


def test_merge_patch_removes_vanished_nested_keys_but_not_foreign_top_level_ones() -> None:
    before = {
        "phase": "Online", "health": {"healthy": True, "components": {"a": {}, "b": {}}},
        "somebodyElse": 1, "connection": {"transport": "http"},
    }  # fmt: skip
    after = {
        "phase": "Offline",
        "health": {"healthy": True, "components": {"a": {}}},
        "connection": None,
    }
    assert merge_patch(before, after) == {
        "phase": "Offline", "health": {"components": {"b": None}}, "connection": None,
    }  # fmt: skip
    assert merge_patch(after | {"connection": None}, after) == {}


def test_disconnected_status_from_a_cr_alone() -> None:
    online = build_status(snapshot(), None, generation=2, replica="dead", now=T0)
    now = T0 + timedelta(hours=1)
    offline = disconnected_status(
        online, AgentPhase.OFFLINE, "heartbeat_timeout", generation=2, now=now
    )
    assert offline["phase"] == "Offline"
    assert offline["connection"] is None
    assert offline["lastSeenAt"] == online["lastSeenAt"]
    assert offline["disconnectReason"] == "heartbeat_timeout"
    assert condition(offline, "Connected")["lastTransitionTime"] == "2026-03-01T13:00:00Z"
    error = disconnected_status(
        offline, AgentPhase.ERROR, "offline_too_long", generation=2, now=now + timedelta(minutes=5)
    )
    assert condition(error, "Connected") == condition(offline, "Connected")
    assert condition(error, "Ready")["reason"] == "offline_too_long"
    assert error["disconnectReason"] == "heartbeat_timeout"


def test_judge_offline_error_gc_and_known_agents() -> None:
    limits = Thresholds(timedelta(seconds=90), timedelta(seconds=300), timedelta(hours=1))
    online = build_status(snapshot(), None, generation=1, replica="x", now=T0)
    assert judge(online, T0, T0 + timedelta(seconds=89), limits, known_here=False) is None
    verdict = judge(online, T0, T0 + timedelta(seconds=90), limits, known_here=False)
    assert verdict is not None and (verdict.phase, verdict.reason) == (
        AgentPhase.OFFLINE,
        "heartbeat_timeout",
    )
    assert judge(online, T0, T0 + timedelta(days=1), limits, known_here=True) is None

    offline = disconnected_status(
        online, AgentPhase.OFFLINE, "heartbeat_timeout", generation=1, now=T0
    )
    assert judge(offline, T0, T0 + timedelta(seconds=299), limits, known_here=False) is None
    verdict = judge(offline, T0, T0 + timedelta(seconds=300), limits, known_here=False)
    assert verdict is not None and verdict.phase is AgentPhase.ERROR
    verdict = judge(offline, T0, T0 + timedelta(hours=1), limits, known_here=True)
    assert verdict is not None and verdict.phase is None  # GC applies to known agents too
    assert judge({}, T0, T0 + timedelta(seconds=90), limits, known_here=False) is not None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("checkout", "checkout"),
        ("payments api/v2", "payments_api_v2"),
        ("-._leading and trailing_.-", "leading_and_trailing"),
        ("日本", None),
        ("", None),
        (None, None),
    ],
)
def test_label_values(raw: str | None, expected: str | None) -> None:
    assert label_value(raw) == expected


def test_long_label_values_stay_valid_and_distinct() -> None:
    a, b = "x" * 70 + "-a", "x" * 70 + "-b"
    la, lb = label_value(a), label_value(b)
    assert la is not None and lb is not None
    assert la != lb
    assert len(la) <= 63 and LABEL.match(la) and LABEL.match(lb)
    assert label_value("." * 80 + "y" * 80) == label_value("." * 80 + "y" * 80)


def test_names_round_trip_and_are_dns_1123() -> None:
    uid = str(uuid.uuid4())
    name = resource_name(uid.upper())
    assert DNS1123.match(name) and len(name) <= 63
    assert agent_id_from_name(name) == uid
    assert agent_id_from_name("something-else") is None
    assert agent_id_from_name("agent-not-a-uuid") is None


def test_labels_leave_out_what_the_agent_does_not_report() -> None:
    labels = agent_labels(snapshot(identifying_attributes={}, non_identifying_attributes={}))
    assert labels == {
        "app.kubernetes.io/managed-by": "opamp-operator",
        "opamp.dev/instance-uid": "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
    }


@pytest.mark.parametrize("gc", [None, timedelta(hours=1)])
def test_due_at_is_the_first_moment_judge_decides(gc: timedelta | None) -> None:
    limits = Thresholds(timedelta(seconds=90), timedelta(seconds=300), gc)
    online = build_status(snapshot(), None, generation=1, replica="x", now=T0)
    offline = disconnected_status(
        online, AgentPhase.OFFLINE, "heartbeat_timeout", generation=1, now=T0
    )
    error = disconnected_status(offline, AgentPhase.ERROR, "offline_too_long", generation=1, now=T0)
    for status in (online, offline, error, {}):
        due = due_at(status, T0, limits)
        if due is None:
            assert judge(status, T0, T0 + timedelta(days=30), limits, known_here=False) is None
            continue
        assert judge(status, T0, due - timedelta(seconds=1), limits, known_here=False) is None
        assert judge(status, T0, due, limits, known_here=False) is not None
