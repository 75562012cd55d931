"""Pure helpers: decoding, instance uid, attributes, capabilities, error responses."""

from __future__ import annotations

import dataclasses
import math
import uuid
from typing import Any, cast

import pytest

from opamp_operator.opamp.errors import InvalidInstanceUid, MalformedMessage, ProtocolError
from opamp_operator.opamp.generated import opamp_pb2 as pb
from opamp_operator.opamp.generated.anyvalue_pb2 import (
    AnyValue,
    ArrayValue,
    KeyValue,
    KeyValueList,
)
from opamp_operator.opamp.messages import (
    AgentDescriptionView,
    any_value_to_python,
    capability_names,
    error_response,
    instance_uid_to_bytes,
    key_values_to_dict,
    parse_agent_to_server,
    parse_server_to_agent,
    server_capabilities,
    uid_text,
    validate_instance_uid,
)

UID = bytes.fromhex("0190a1b2c3d47e5f8a9b0c1d2e3f4a5b")


def kv(key: str, **value: Any) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(**value))


# --- decoding ---------------------------------------------------------------


def test_parse_agent_to_server_round_trip() -> None:
    sent = pb.AgentToServer(
        instance_uid=UID,
        sequence_num=7,
        capabilities=pb.AgentCapabilities_ReportsStatus | pb.AgentCapabilities_ReportsHeartbeat,
        health=pb.ComponentHealth(healthy=True, start_time_unix_nano=123),
        connection_settings_status=pb.ConnectionSettingsStatus(
            status=pb.ConnectionSettingsStatuses_APPLIED
        ),
    )
    got = parse_agent_to_server(sent.SerializeToString())
    assert got == sent
    assert got.sequence_num == 7
    assert got.health.healthy


def test_parse_empty_payload_is_a_default_message() -> None:
    assert parse_agent_to_server(b"") == pb.AgentToServer()


@pytest.mark.parametrize(
    "data",
    [
        b"\x0a\x10short",  # instance_uid claims 16 bytes, has 5
        b"\x0a",  # field tag without its length
        b"\x10\x80",  # sequence_num varint cut short
        b"\x07",  # field number 0
        b"\x1a\x02\xff\xff",  # agent_description with a broken sub-message
    ],
)
def test_parse_malformed_payload_raises(data: bytes) -> None:
    with pytest.raises(MalformedMessage, match="AgentToServer does not decode") as info:
        parse_agent_to_server(data)
    assert isinstance(info.value, ProtocolError)
    assert info.value.reason == "malformed_message"


def test_parse_server_to_agent_round_trip_and_malformed() -> None:
    sent = pb.ServerToAgent(instance_uid=UID, flags=pb.ServerToAgentFlags_ReportFullState)
    assert parse_server_to_agent(sent.SerializeToString()) == sent
    with pytest.raises(MalformedMessage):
        parse_server_to_agent(b"\x0a\x10short")


def test_unknown_fields_from_newer_agents_are_kept_not_rejected() -> None:
    # Field 99, varint 1: a future protocol addition must not break decoding.
    data = pb.AgentToServer(instance_uid=UID).SerializeToString() + b"\x98\x06\x01"
    got = parse_agent_to_server(data)
    assert got.instance_uid == UID
    assert got.SerializeToString() == data


# --- instance uid -----------------------------------------------------------


def test_validate_instance_uid_returns_canonical_lowercase_uuid() -> None:
    assert validate_instance_uid(UID) == "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
    # Any 16 bytes are accepted, whatever UUID version/variant bits they hold.
    assert validate_instance_uid(b"\xff" * 16) == "ffffffff-ffff-ffff-ffff-ffffffffffff"
    random_uid = uuid.uuid4()
    assert validate_instance_uid(random_uid.bytes) == str(random_uid)


@pytest.mark.parametrize("length", [0, 1, 15, 17, 36])
def test_validate_instance_uid_rejects_wrong_length(length: int) -> None:
    with pytest.raises(InvalidInstanceUid, match=f"got {length}") as info:
        validate_instance_uid(b"\x01" * length)
    assert info.value.reason == ("empty_instance_uid" if length == 0 else "invalid_instance_uid")


def test_uid_text_is_the_uuid_text_form() -> None:
    for raw in (bytes(16), b"\xff" * 16, UID, *(uuid.uuid4().bytes for _ in range(200))):
        assert uid_text(raw) == str(uuid.UUID(bytes=raw))
        assert validate_instance_uid(raw) == str(uuid.UUID(bytes=raw))


def test_instance_uid_text_round_trip() -> None:
    text = validate_instance_uid(UID)
    assert instance_uid_to_bytes(text) == UID
    assert instance_uid_to_bytes(text.replace("-", "").upper()) == UID
    with pytest.raises(InvalidInstanceUid):
        instance_uid_to_bytes("not-a-uid")


# --- attributes -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (AnyValue(), None),
        (AnyValue(string_value=""), ""),
        (AnyValue(string_value="x"), "x"),
        (AnyValue(bool_value=False), False),
        (AnyValue(int_value=-(2**63)), -(2**63)),
        (AnyValue(double_value=1.5), 1.5),
        (AnyValue(bytes_value=b"\x00\xff"), b"\x00\xff"),
        (AnyValue(array_value=ArrayValue()), []),
        (AnyValue(kvlist_value=KeyValueList()), {}),
    ],
)
def test_any_value_scalars_and_empties(value: AnyValue, expected: object) -> None:
    result = any_value_to_python(value)
    assert result == expected
    assert type(result) is type(expected)


def test_any_value_nested() -> None:
    value = AnyValue(
        array_value=ArrayValue(
            values=[
                AnyValue(int_value=1),
                AnyValue(),
                AnyValue(
                    kvlist_value=KeyValueList(
                        values=[kv("a", string_value="b"), kv("c", array_value=ArrayValue())]
                    )
                ),
            ]
        )
    )
    assert any_value_to_python(value) == [1, None, {"a": "b", "c": []}]


def test_any_value_nan_survives() -> None:
    result = any_value_to_python(AnyValue(double_value=math.nan))
    assert isinstance(result, float)
    assert math.isnan(result)


def test_key_values_to_dict_last_duplicate_wins() -> None:
    pairs = [kv("k", string_value="first"), kv("other", int_value=2), kv("k", string_value="last")]
    assert key_values_to_dict(pairs) == {"k": "last", "other": 2}
    assert key_values_to_dict([]) == {}


def description() -> pb.AgentDescription:
    return pb.AgentDescription(
        identifying_attributes=[
            kv("service.name", string_value="io.opentelemetry.collector"),
            kv("service.version", string_value="0.120.0"),
            kv("service.namespace", string_value="obs"),
            kv("service.instance.id", string_value="abc"),
            kv("host.name", string_value="node-identifying"),
        ],
        non_identifying_attributes=[
            kv("host.name", string_value="node-non-identifying"),
            kv("os.type", string_value="linux"),
            kv("k8s.pod.uid", string_value="5f1c-uid"),
            kv("k8s.pod.name", string_value="collector-0"),
            kv("k8s.namespace.name", string_value="monitoring"),
            kv("replicas", int_value=3),
            kv("sampled", bool_value=True),
            kv("tags", array_value=ArrayValue(values=[AnyValue(string_value="a")])),
        ],
    )


def test_description_view_named_properties() -> None:
    view = AgentDescriptionView.from_proto(description())
    assert view.service_name == "io.opentelemetry.collector"
    assert view.service_version == "0.120.0"
    assert view.service_namespace == "obs"
    assert view.service_instance_id == "abc"
    assert view.host_name == "node-identifying"  # identifying attributes take precedence
    assert view.os_type == "linux"
    assert view.k8s_pod_uid == "5f1c-uid"
    assert view.k8s_pod_name == "collector-0"
    assert view.k8s_namespace_name == "monitoring"


def test_description_view_text_and_raw_attributes() -> None:
    view = AgentDescriptionView.from_proto(description())
    assert view.text("replicas") == "3"
    assert view.text("sampled") == "true"
    assert view.text("tags") is None  # not a scalar
    assert view.attribute("tags") == ["a"]
    assert view.text("missing") is None
    assert view.non_identifying["host.name"] == "node-non-identifying"


def test_description_view_of_empty_description() -> None:
    view = AgentDescriptionView.from_proto(pb.AgentDescription())
    assert view == AgentDescriptionView()
    assert view.service_name is None
    assert view.k8s_pod_uid is None


def test_description_view_is_immutable_and_detached_from_input() -> None:
    source = {"service.name": "a"}
    view = AgentDescriptionView(identifying=source)
    source["service.name"] = "changed"
    assert view.service_name == "a"
    with pytest.raises(TypeError):
        view.identifying["service.name"] = "b"  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        view.identifying = {}  # type: ignore[misc]


# --- capabilities -----------------------------------------------------------


def test_capability_names_known_bits_in_order() -> None:
    flags = (
        pb.AgentCapabilities_ReportsHeartbeat
        | pb.AgentCapabilities_ReportsStatus
        | pb.AgentCapabilities_AcceptsRemoteConfig
        | pb.AgentCapabilities_ReportsConnectionSettingsStatus
    )
    assert capability_names(flags) == [
        "ReportsStatus",
        "AcceptsRemoteConfig",
        "ReportsHeartbeat",
        "ReportsConnectionSettingsStatus",
    ]


def test_capability_names_covers_every_enum_value() -> None:
    every = 0
    for _name, value in pb.AgentCapabilities.items():
        every |= value
    names = capability_names(every)
    assert len(names) == len(pb.AgentCapabilities.items()) - 1  # all but Unspecified
    assert not any(name.startswith("Unknown") for name in names)


def test_capability_names_reports_unknown_bits() -> None:
    assert capability_names(0) == []
    assert capability_names(1 | (1 << 16) | (1 << 63)) == [
        "ReportsStatus",
        "Unknown(0x10000)",
        "Unknown(0x8000000000000000)",
    ]
    with pytest.raises(ValueError, match="negative"):
        capability_names(-1)


def test_server_capabilities_default() -> None:
    flags = server_capabilities()
    assert flags == (
        pb.ServerCapabilities_AcceptsStatus
        | pb.ServerCapabilities_OffersRemoteConfig
        | pb.ServerCapabilities_AcceptsEffectiveConfig
        | pb.ServerCapabilities_OffersConnectionSettings
    )
    assert not flags & pb.ServerCapabilities_OffersPackages


def test_server_capabilities_switches() -> None:
    minimal = server_capabilities(offers_remote_config=False, offers_connection_settings=False)
    assert minimal == (
        pb.ServerCapabilities_AcceptsStatus | pb.ServerCapabilities_AcceptsEffectiveConfig
    )
    with_csr = server_capabilities(accepts_connection_settings_request=True)
    assert with_csr & pb.ServerCapabilities_AcceptsConnectionSettingsRequest


# --- error responses --------------------------------------------------------


def test_error_response_carries_only_the_error() -> None:
    message = error_response(UID, pb.ServerErrorResponseType_BadRequest, "bad uid")
    assert message.instance_uid == UID
    assert message.error_response.type == pb.ServerErrorResponseType_BadRequest
    assert message.error_response.error_message == "bad uid"
    assert message.error_response.WhichOneof("Details") is None
    assert [field.name for field, _ in message.ListFields()] == [
        "instance_uid",
        "error_response",
    ]


@pytest.mark.parametrize("retry_ns", [0, 5_000_000_000, (1 << 64) - 1])
def test_error_response_unavailable_with_retry(retry_ns: int) -> None:
    message = error_response(UID, pb.ServerErrorResponseType_Unavailable, "busy", retry_ns)
    decoded = parse_server_to_agent(message.SerializeToString())
    assert decoded.error_response.WhichOneof("Details") == "retry_info"
    assert decoded.error_response.retry_info.retry_after_nanoseconds == retry_ns


def test_error_response_rejects_misuse() -> None:
    with pytest.raises(ValueError, match="only meaningful with Unavailable"):
        error_response(UID, pb.ServerErrorResponseType_BadRequest, "x", 10)
    with pytest.raises(ValueError, match="uint64"):
        error_response(UID, pb.ServerErrorResponseType_Unavailable, "x", -1)
    with pytest.raises(ValueError, match="unknown ServerErrorResponseType"):
        error_response(UID, cast("pb.ServerErrorResponseType.ValueType", 42), "x")
