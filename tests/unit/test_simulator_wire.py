"""What simulated agents send, and how they read replies (pure functions)."""

from __future__ import annotations

import random
import uuid

from opamp_operator.opamp.generated import opamp_pb2
from opamp_operator.opamp.generated.opamp_pb2 import (
    AgentConfigFile,
    AgentConfigMap,
    AgentRemoteConfig,
    AgentToServer,
    ConnectionSettingsOffers,
    OpAMPConnectionSettings,
    ServerToAgent,
)
from opamp_operator.opamp.messages import (
    AgentDescriptionView,
    capability_names,
    error_response,
    parse_agent_to_server,
)
from opamp_operator.simulator.wire import (
    CAPABILITIES,
    DEFAULT_CONFIG,
    Identity,
    config_status_message,
    disconnect_message,
    full_state_message,
    heartbeat_message,
    new_instance_uid,
    read_reply,
)

UID = bytes(range(16))


def roundtrip(message: AgentToServer) -> AgentToServer:
    return parse_agent_to_server(message.SerializeToString())


def test_instance_uids_are_uuid_v7_with_the_time_and_random_bits() -> None:
    rng = random.Random(1)
    unix_ms = 1_760_000_000_123
    uids = {new_instance_uid(unix_ms, rng) for _ in range(1000)}
    assert len(uids) == 1000
    for raw in uids:
        value = uuid.UUID(bytes=raw)
        assert len(raw) == 16
        assert value.version == 7
        assert value.variant == uuid.RFC_4122
        assert int.from_bytes(raw[:6], "big") == unix_ms


def test_capabilities_are_the_six_the_simulator_implements() -> None:
    assert capability_names(CAPABILITIES) == [
        "ReportsStatus",
        "AcceptsRemoteConfig",
        "ReportsEffectiveConfig",
        "ReportsHealth",
        "ReportsRemoteConfig",
        "ReportsHeartbeat",
    ]


def test_full_state_carries_description_health_and_config() -> None:
    identity = Identity(name_prefix="bench", groups=3, service_version="2.1", start_time_ns=42)
    message = roundtrip(full_state_message(identity, 7, UID, seq=1))
    assert message.instance_uid == UID
    assert message.sequence_num == 1
    assert message.capabilities == CAPABILITIES
    view = AgentDescriptionView.from_proto(message.agent_description)
    assert dict(view.identifying) == {
        "service.name": "bench-1",  # 7 % 3
        "service.version": "2.1",
        "service.instance.id": str(uuid.UUID(bytes=UID)),
    }
    assert dict(view.non_identifying) == {"host.name": "bench-host-00007", "os.type": "linux"}
    assert message.health.healthy
    assert message.health.start_time_unix_nano == 42
    assert message.effective_config.config_map == DEFAULT_CONFIG
    assert message.HasField("remote_config_status")
    assert message.remote_config_status.status == opamp_pb2.RemoteConfigStatuses_UNSET


def test_full_state_after_a_remote_config_reports_it_applied() -> None:
    applied = AgentConfigMap(config_map={"": AgentConfigFile(body=b"x: 1")})
    message = full_state_message(Identity(), 0, UID, 5, config_hash=b"h1", config=applied)
    assert message.effective_config.config_map == applied
    assert message.remote_config_status.last_remote_config_hash == b"h1"
    assert message.remote_config_status.status == opamp_pb2.RemoteConfigStatuses_APPLIED


def test_heartbeat_is_minimal_and_disconnect_says_goodbye() -> None:
    heartbeat = roundtrip(heartbeat_message(UID, 9))
    assert [f.name for f, _ in heartbeat.ListFields()] == [
        "instance_uid",
        "sequence_num",
        "capabilities",
    ]
    goodbye = roundtrip(disconnect_message(UID, 10))
    assert goodbye.HasField("agent_disconnect")
    assert goodbye.sequence_num == 10
    assert not goodbye.HasField("agent_description")


def test_config_status_message_has_no_description() -> None:
    applied = AgentConfigMap(config_map={"a": AgentConfigFile(body=b"y")})
    message = roundtrip(config_status_message(UID, 3, b"h", applied))
    assert not message.HasField("agent_description")
    assert message.remote_config_status.status == opamp_pb2.RemoteConfigStatuses_APPLIED
    assert message.effective_config.config_map == applied


def test_an_empty_reply_asks_for_nothing() -> None:
    reply = read_reply(ServerToAgent(instance_uid=UID))
    assert not reply.report_full_state
    assert reply.heartbeat_s is None
    assert reply.error is None
    assert reply.retry_after_s is None
    assert reply.remote_config is None
    assert reply.new_instance_uid is None


def test_report_full_state_flag() -> None:
    flags = int(opamp_pb2.ServerToAgentFlags_ReportFullState)
    assert read_reply(ServerToAgent(flags=flags)).report_full_state


def offer(seconds: int) -> ServerToAgent:
    return ServerToAgent(
        connection_settings=ConnectionSettingsOffers(
            opamp=OpAMPConnectionSettings(heartbeat_interval_seconds=seconds)
        )
    )


def test_heartbeat_offer_is_read_and_zero_means_off() -> None:
    assert read_reply(offer(15)).heartbeat_s == 15.0
    assert read_reply(offer(0)).heartbeat_s == 0.0
    # Connection settings without OpAMP settings offer nothing about heartbeats.
    no_opamp = ServerToAgent(connection_settings=ConnectionSettingsOffers(hash=b"h"))
    assert read_reply(no_opamp).heartbeat_s is None


def test_unavailable_with_retry_info() -> None:
    message = error_response(
        UID, opamp_pb2.ServerErrorResponseType_Unavailable, "busy", retry_after_ns=2_500_000_000
    )
    reply = read_reply(message)
    assert reply.error == "server_unavailable"
    assert reply.retry_after_s == 2.5
    bad = read_reply(error_response(UID, opamp_pb2.ServerErrorResponseType_BadRequest, "no"))
    assert bad.error == "server_bad_request"
    assert bad.retry_after_s is None


def test_remote_config_is_taken_only_when_new_and_present() -> None:
    config = AgentConfigMap(config_map={"": AgentConfigFile(body=b"z")})
    message = ServerToAgent(remote_config=AgentRemoteConfig(config=config, config_hash=b"h2"))
    reply = read_reply(message, current_config_hash=b"h1")
    assert reply.remote_config is not None
    assert reply.remote_config[0] == b"h2"
    assert reply.remote_config[1] == config
    assert read_reply(message, current_config_hash=b"h2").remote_config is None
    hash_only = ServerToAgent(remote_config=AgentRemoteConfig(config_hash=b"h3"))
    assert read_reply(hash_only).remote_config is None


def test_new_instance_uid_must_be_sixteen_bytes() -> None:
    good = ServerToAgent()
    good.agent_identification.new_instance_uid = b"\x01" * 16
    assert read_reply(good).new_instance_uid == b"\x01" * 16
    short = ServerToAgent()
    short.agent_identification.new_instance_uid = b"\x01" * 3
    assert read_reply(short).new_instance_uid is None
