"""Our .proto agrees on the wire with the official OpAMP Python client's.

The client registers its own `opamp.proto` in the default descriptor pool, as do
our generated modules, so it only ever runs in a subprocess here. Each direction
serializes with one implementation and decodes with the other; the decoded text
format (field names, not numbers) must match, which fails when any field number,
type or enum value disagrees.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, text_format, unknown_fields

from opamp_operator.opamp.generated import anyvalue_pb2, opamp_pb2
from opamp_operator.opamp.generated.anyvalue_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opamp_operator.opamp.messages import parse_agent_to_server, parse_server_to_agent

# Runs in the subprocess. Commands arrive as one JSON object on stdin; the answer
# is one JSON object on stdout.
_OFFICIAL = textwrap.dedent(
    """
    import base64, json, sys
    from google.protobuf import descriptor_pb2, text_format
    from opentelemetry._opamp.proto import anyvalue_pb2 as av, opamp_pb2 as pb

    def kv(key, **value):
        return av.KeyValue(key=key, value=av.AnyValue(**value))

    def official_agent_to_server():
        return pb.AgentToServer(
            instance_uid=bytes(range(16)),
            sequence_num=2**64 - 1,
            capabilities=pb.AgentCapabilities_ReportsStatus
            | pb.AgentCapabilities_ReportsAvailableComponents,
            agent_description=pb.AgentDescription(
                identifying_attributes=[kv("service.name", string_value="svc")],
                non_identifying_attributes=[
                    kv("n", int_value=-5),
                    kv("l", array_value=av.ArrayValue(values=[av.AnyValue(double_value=0.5)])),
                ],
            ),
            health=pb.ComponentHealth(
                healthy=False,
                last_error="boom",
                status_time_unix_nano=2**64 - 2,
                component_health_map={"p": pb.ComponentHealth(healthy=True, status="ok")},
            ),
            remote_config_status=pb.RemoteConfigStatus(
                last_remote_config_hash=b"h", status=pb.RemoteConfigStatuses_FAILED,
                error_message="bad",
            ),
            package_statuses=pb.PackageStatuses(packages={"p": pb.PackageStatus(
                name="p", status=pb.PackageStatusEnum_Downloading,
                download_details=pb.PackageDownloadDetails(download_percent=12.5),
            )}),
            available_components=pb.AvailableComponents(
                hash=b"c",
                components={"receivers": pb.ComponentDetails(
                    metadata=[kv("code.namespace", string_value="x")],
                    sub_component_map={"otlp": pb.ComponentDetails()},
                )},
            ),
            agent_disconnect=pb.AgentDisconnect(),
            flags=pb.AgentToServerFlags_RequestInstanceUid,
        )

    def official_server_to_agent():
        return pb.ServerToAgent(
            instance_uid=bytes(range(16)),
            error_response=pb.ServerErrorResponse(
                type=pb.ServerErrorResponseType_Unavailable,
                error_message="later",
                retry_info=pb.RetryInfo(retry_after_nanoseconds=10**9),
            ),
            remote_config=pb.AgentRemoteConfig(
                config_hash=b"h",
                config=pb.AgentConfigMap(config_map={
                    "": pb.AgentConfigFile(body=b"a: 1", content_type="text/yaml"),
                }),
            ),
            connection_settings=pb.ConnectionSettingsOffers(
                hash=b"cs",
                opamp=pb.OpAMPConnectionSettings(
                    destination_endpoint="wss://h/v1/opamp",
                    heartbeat_interval_seconds=30,
                    headers=pb.Headers(headers=[pb.Header(key="Authorization", value="t")]),
                    certificate=pb.TLSCertificate(cert=b"c", private_key=b"k", ca_cert=b"ca"),
                ),
                own_logs=pb.TelemetryConnectionSettings(destination_endpoint="https://l"),
                other_connections={"x": pb.OtherConnectionSettings(other_settings={"a": "b"})},
            ),
            packages_available=pb.PackagesAvailable(
                all_packages_hash=b"all",
                packages={"p": pb.PackageAvailable(
                    type=pb.PackageType_Addon, version="1",
                    file=pb.DownloadableFile(download_url="https://d", headers=pb.Headers()),
                )},
            ),
            flags=pb.ServerToAgentFlags_ReportAvailableComponents,
            capabilities=pb.ServerCapabilities_AcceptsConnectionSettingsRequest,
            agent_identification=pb.AgentIdentification(new_instance_uid=b"u" * 16),
            command=pb.ServerToAgentCommand(type=pb.CommandType_Restart),
            custom_capabilities=pb.CustomCapabilities(capabilities=["io.x.y"]),
            custom_message=pb.CustomMessage(capability="io.x.y", type="t", data=b"d"),
        )

    def answer(message):
        return {
            "text": text_format.MessageToString(message),
            "data": base64.b64encode(message.SerializeToString()).decode(),
        }

    command = json.load(sys.stdin)
    if command["op"] == "descriptors":
        out = {}
        for module in (pb, av):
            proto = descriptor_pb2.FileDescriptorProto()
            module.DESCRIPTOR.CopyToProto(proto)
            out[proto.name] = base64.b64encode(proto.SerializeToString()).decode()
    elif command["op"] == "decode":
        message = getattr(pb, command["type"])()
        message.ParseFromString(base64.b64decode(command["data"]))
        out = answer(message)
    elif command["op"] == "encode":
        out = answer({"AgentToServer": official_agent_to_server,
                      "ServerToAgent": official_server_to_agent}[command["type"]]())
    json.dump(out, sys.stdout)
    """
)


def official(**command: str) -> dict[str, Any]:
    """Run one command against the official client in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", _OFFICIAL],
        input=json.dumps(command),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def b64decode(text: str) -> bytes:
    return base64.b64decode(text)


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode()


def kv(key: str, **value: Any) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(**value))


def our_agent_to_server() -> opamp_pb2.AgentToServer:
    pb = opamp_pb2
    return pb.AgentToServer(
        instance_uid=bytes(range(16)),
        sequence_num=42,
        capabilities=pb.AgentCapabilities_ReportsStatus | pb.AgentCapabilities_ReportsHeartbeat,
        agent_description=pb.AgentDescription(
            identifying_attributes=[
                kv("service.name", string_value="io.opentelemetry.collector"),
                kv("raw", bytes_value=b"\x00\x01"),
            ],
            non_identifying_attributes=[
                kv("on", bool_value=True),
                kv(
                    "nested",
                    kvlist_value=KeyValueList(
                        values=[kv("inner", array_value=ArrayValue(values=[AnyValue()]))]
                    ),
                ),
            ],
        ),
        health=pb.ComponentHealth(
            healthy=True,
            start_time_unix_nano=1_700_000_000_000_000_000,
            component_health_map={"pipeline": pb.ComponentHealth(last_error="e")},
        ),
        effective_config=pb.EffectiveConfig(
            config_map=pb.AgentConfigMap(
                config_map={"collector.yaml": pb.AgentConfigFile(body=b"receivers: {}")}
            )
        ),
        remote_config_status=pb.RemoteConfigStatus(status=pb.RemoteConfigStatuses_APPLYING),
        package_statuses=pb.PackageStatuses(
            server_provided_all_packages_hash=b"all",
            packages={"p": pb.PackageStatus(name="p", agent_has_version="1", agent_has_hash=b"h")},
        ),
        connection_settings_request=pb.ConnectionSettingsRequest(
            opamp=pb.OpAMPConnectionSettingsRequest(
                certificate_request=pb.CertificateRequest(csr=b"-----BEGIN CSR")
            )
        ),
        custom_capabilities=pb.CustomCapabilities(capabilities=["io.example.cap/v1"]),
        custom_message=pb.CustomMessage(capability="io.example.cap/v1", type="t", data=b"\xff"),
        available_components=pb.AvailableComponents(hash=b"comp"),
        flags=pb.AgentToServerFlags_RequestInstanceUid,
    )


def test_our_agent_to_server_decodes_identically_in_the_official_client() -> None:
    sent = our_agent_to_server()
    got = official(op="decode", type="AgentToServer", data=b64encode(sent.SerializeToString()))
    assert got["text"] == text_format.MessageToString(sent)
    assert b64decode(got["data"]) == sent.SerializeToString()


def test_fields_newer_than_the_official_client_survive_it_as_unknown_fields() -> None:
    sent = opamp_pb2.AgentToServer(
        instance_uid=b"\x01" * 16,
        connection_settings_status=opamp_pb2.ConnectionSettingsStatus(
            status=opamp_pb2.ConnectionSettingsStatuses_FAILED, error_message="no"
        ),
    )
    got = official(op="decode", type="AgentToServer", data=b64encode(sent.SerializeToString()))
    # The client does not know field 15, keeps it as unknown bytes, and re-emits it.
    assert parse_agent_to_server(b64decode(got["data"])) == sent


@pytest.mark.parametrize("type_name", ["AgentToServer", "ServerToAgent"])
def test_official_messages_decode_identically_here(type_name: str) -> None:
    got = official(op="encode", type=type_name)
    data = b64decode(got["data"])
    parse = parse_agent_to_server if type_name == "AgentToServer" else parse_server_to_agent
    ours = parse(data)
    assert text_format.MessageToString(ours) == got["text"]
    assert ours.SerializeToString() == data
    # Text format omits unknown fields, so the equality above already fails if any
    # field number the client used were unknown here; check the top level directly too.
    assert len(unknown_fields.UnknownFieldSet(ours)) == 0


def _walk_messages(prefix: str, messages: Any) -> dict[str, descriptor_pb2.DescriptorProto]:
    found: dict[str, descriptor_pb2.DescriptorProto] = {}
    for message in messages:
        name = f"{prefix}.{message.name}"
        found[name] = message
        found.update(_walk_messages(name, message.nested_type))
    return found


def _ours(file_descriptor: Any) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    file_descriptor.CopyToProto(proto)
    return proto


def test_every_official_field_and_enum_value_exists_here_unchanged() -> None:
    official_files = {
        name: descriptor_pb2.FileDescriptorProto.FromString(b64decode(data))
        for name, data in official(op="descriptors").items()
    }
    ours_files = {
        "opamp.proto": _ours(opamp_pb2.DESCRIPTOR),
        "anyvalue.proto": _ours(anyvalue_pb2.DESCRIPTOR),
    }
    assert set(official_files) == set(ours_files)
    for name, theirs in official_files.items():
        ours = ours_files[name]
        assert ours.package == theirs.package
        our_messages = _walk_messages(ours.package, ours.message_type)
        for full_name, their_message in _walk_messages(theirs.package, theirs.message_type).items():
            assert full_name in our_messages, f"missing message {full_name}"
            our_fields = {f.name: f for f in our_messages[full_name].field}
            for their_field in their_message.field:
                our_field = our_fields.get(their_field.name)
                assert our_field is not None, f"missing field {full_name}.{their_field.name}"
                for attribute in ("number", "type", "label", "type_name", "oneof_index"):
                    assert getattr(our_field, attribute) == getattr(their_field, attribute), (
                        f"{full_name}.{their_field.name}.{attribute}"
                    )
        our_enums = {e.name: {v.name: v.number for v in e.value} for e in ours.enum_type}
        for their_enum in theirs.enum_type:
            assert their_enum.name in our_enums, f"missing enum {their_enum.name}"
            for value in their_enum.value:
                assert our_enums[their_enum.name].get(value.name) == value.number, value.name
