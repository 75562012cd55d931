"""Connection settings offers: hashing, capability gating, progress, spec parsing (pure)."""

from __future__ import annotations

import uuid

import pytest

from opamp_operator.config import FleetSettings
from opamp_operator.fleet.clock import FakeClock
from opamp_operator.fleet.events import EventBus
from opamp_operator.fleet.offers import (
    REPORTS_OWN_LOGS,
    REPORTS_OWN_METRICS,
    DesiredSettings,
    SettingsState,
    Telemetry,
    settings_progress,
)
from opamp_operator.fleet.registry import Fleet
from opamp_operator.kube.gitops.connsettings import FleetSettings as Declared
from opamp_operator.kube.gitops.connsettings import (
    SettingsSpecError,
    build,
    choose,
    parse_settings,
)
from opamp_operator.kube.gitops.selectors import parse_selector
from opamp_operator.opamp.generated import opamp_pb2
from tests.unit.test_fleet_remote_config import PushingChannel

TOKEN = "Bearer t0ken"


def metrics(token: str = TOKEN) -> DesiredSettings:
    return DesiredSettings.of(
        {"own_metrics": Telemetry("https://otlp:4318", (("Authorization", token),))}
    )


def test_the_hash_follows_every_setting_and_the_repr_hides_header_values() -> None:
    assert metrics().hash == metrics().hash
    assert metrics("other").hash != metrics().hash
    assert DesiredSettings.of({}, 30).hash != DesiredSettings.of({}, 31).hash
    assert TOKEN not in repr(metrics()) + repr(metrics().telemetry)


def test_own_telemetry_is_offered_only_with_its_capability() -> None:
    desired = metrics()
    offered = desired.to_proto(REPORTS_OWN_METRICS, 30)
    assert offered.own_metrics.destination_endpoint == "https://otlp:4318"
    assert offered.own_metrics.headers.headers[0].value == TOKEN
    assert offered.hash == desired.hash
    assert offered.opamp.heartbeat_interval_seconds == 30
    assert not desired.to_proto(REPORTS_OWN_LOGS, 30).HasField("own_metrics")
    assert not desired.applies_to(REPORTS_OWN_LOGS)


@pytest.mark.parametrize(
    ("reported", "sent", "state"),
    [
        (None, False, SettingsState.PENDING),
        (None, True, SettingsState.APPLYING),
        ({"status": "APPLIED"}, True, SettingsState.APPLIED),
        ({"status": "FAILED", "errorMessage": "no"}, True, SettingsState.FAILED),
    ],
)
def test_progress_follows_what_the_agent_reports_for_the_desired_hash(
    reported: dict[str, str] | None, sent: bool, state: SettingsState
) -> None:
    desired = metrics()
    if reported is not None:
        reported = {**reported, "lastConnectionSettingsHash": desired.hash_hex}
    progress = settings_progress(
        desired, capabilities=REPORTS_OWN_METRICS, connected=True, reported=reported, sent=sent
    )
    assert progress.state is state
    unsupported = settings_progress(
        desired, capabilities=REPORTS_OWN_LOGS, connected=True, reported=None, sent=False
    )
    assert unsupported.state is SettingsState.UNSUPPORTED


SPEC = {
    "heartbeatIntervalSeconds": 15,
    "ownMetrics": {
        "endpoint": "https://otlp:4318",
        "headers": [{"name": "Authorization", "secretKeyRef": {"name": "s", "key": "k"}}],
    },
}


def test_a_spec_is_built_with_values_from_its_secrets_never_named_in_errors() -> None:
    spec = parse_settings(SPEC)
    assert spec is not None and spec.secrets == {"s"}
    desired = build(spec, "OpAMPAgent/a", {"s": {"k": TOKEN.encode()}})
    assert desired.telemetry["own_metrics"].headers == (("Authorization", TOKEN),)
    assert desired.heartbeat_interval_seconds == 15
    with pytest.raises(SettingsSpecError) as missing:
        build(spec, "x", {"s": None})
    assert missing.value.reason == "secret_not_found"
    with pytest.raises(SettingsSpecError) as no_key:
        build(spec, "x", {"s": {"other": TOKEN.encode()}})
    assert no_key.value.reason == "secret_key_missing" and TOKEN not in str(no_key.value)
    with pytest.raises(SettingsSpecError):
        parse_settings({"ownMetrics": {"endpoint": "e", "headers": [{"name": "inline"}]}})
    assert parse_settings(None) is None


def test_own_declaration_wins_then_the_top_ranked_fleet_one_and_a_tie_gives_none() -> None:
    spec = parse_settings(SPEC)
    assert spec is not None
    everyone = parse_selector({})
    fleet = [Declared("low", everyone, 0, spec), Declared("high", everyone, 5, spec)]
    assert choose({}, None, fleet) == (spec, "OpAMPAgentConfig/high")
    assert choose({}, spec, fleet) == (spec, "OpAMPAgent")
    tie = [Declared("a", everyone, 0, spec), Declared("b", everyone, 0, spec)]
    with pytest.raises(SettingsSpecError, match="a, b declare") as tied:
        choose({}, None, tie)
    assert tied.value.reason == "conflict"


# -- the fleet sends them ---------------------------------------------------------------

OWN = int(opamp_pb2.AgentCapabilities_ReportsStatus) | REPORTS_OWN_METRICS


def first(uid: bytes, capabilities: int, seq: int = 0) -> opamp_pb2.AgentToServer:
    return opamp_pb2.AgentToServer(instance_uid=uid, sequence_num=seq, capabilities=capabilities)


def test_the_fleet_pushes_once_per_session_and_again_when_the_agent_reports_another_hash() -> None:
    fleet = Fleet(FleetSettings(), FakeClock(), EventBus())
    uid = uuid.uuid4().bytes
    agent_id = str(uuid.UUID(bytes=uid))
    channel = PushingChannel()
    reply = fleet.handle_message(channel, first(uid, OWN))
    assert reply is not None and not reply.connection_settings.HasField("own_metrics")
    fleet.set_desired_settings(agent_id, metrics())
    assert [m.connection_settings.hash for m in channel.pushed] == [metrics().hash]
    again = fleet.handle_message(channel, first(uid, OWN, 1))
    assert again is not None and not again.HasField("connection_settings")  # sent already

    # A new session, the agent reporting the offered hash: nothing is sent again.
    status = first(uid, OWN, 0)
    status.connection_settings_status.last_connection_settings_hash = metrics().hash
    status.connection_settings_status.status = opamp_pb2.ConnectionSettingsStatuses_APPLIED
    fleet.channel_closed(channel)
    later = fleet.handle_message(PushingChannel(), status)
    assert later is not None and not later.connection_settings.HasField("own_metrics")
    assert fleet.get(agent_id) is not None

    # Another hash (a rotated token): sent, with the new value.
    rotated = metrics("rotated")
    channel = PushingChannel()
    fleet.handle_message(channel, first(uid, OWN, 0))
    fleet.set_desired_settings(agent_id, rotated)
    pushed = channel.pushed[-1].connection_settings
    assert pushed.hash == rotated.hash and pushed.own_metrics.headers.headers[0].value == "rotated"


def test_an_agent_without_the_capability_only_gets_the_heartbeat() -> None:
    fleet = Fleet(FleetSettings(), FakeClock(), EventBus())
    uid = uuid.uuid4().bytes
    fleet.set_desired_settings(str(uuid.UUID(bytes=uid)), metrics())
    reply = fleet.handle_message(
        PushingChannel(), first(uid, int(opamp_pb2.AgentCapabilities_ReportsStatus))
    )
    assert reply is not None
    assert reply.connection_settings.opamp.heartbeat_interval_seconds > 0
    assert not reply.connection_settings.HasField("own_metrics")
