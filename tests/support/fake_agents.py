"""A fake transport channel and real AgentToServer messages, for tests that drive a Fleet."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from opamp_operator.fleet.model import Transport
from opamp_operator.opamp.generated import opamp_pb2
from opamp_operator.opamp.generated.anyvalue_pb2 import AnyValue, KeyValue
from opamp_operator.opamp.messages import AgentToServer


@dataclass(eq=False)
class FakeChannel:
    """A transport connection that records what the fleet asked of it."""

    transport: Transport = Transport.WEBSOCKET
    remote_addr: str = "127.0.0.1:50000"
    close_requests: list[str] = field(default_factory=list)

    def request_close(self, reason: str) -> None:
        self.close_requests.append(reason)


def new_agent_id() -> str:
    return str(uuid.uuid4())


def hello(
    agent_id: str,
    sequence_num: int = 0,
    service: str = "otelcol",
    *,
    host_name: str = "node-1",
    healthy: bool | None = True,
    reports_heartbeat: bool = True,
) -> AgentToServer:
    """A first message: description, capabilities and (unless None) health, as agents send.

    It claims ReportsHeartbeat unless told not to (then, over WebSocket, the connection
    judges its liveness, not the heartbeat timeout)."""
    capabilities = int(opamp_pb2.AgentCapabilities_ReportsStatus) | int(
        opamp_pb2.AgentCapabilities_ReportsHealth
    )
    if reports_heartbeat:
        capabilities |= int(opamp_pb2.AgentCapabilities_ReportsHeartbeat)
    message = AgentToServer(
        instance_uid=uuid.UUID(agent_id).bytes,
        sequence_num=sequence_num,
        capabilities=capabilities,
    )
    description = message.agent_description
    description.identifying_attributes.append(
        KeyValue(key="service.name", value=AnyValue(string_value=service))
    )
    description.identifying_attributes.append(
        KeyValue(key="service.instance.id", value=AnyValue(bytes_value=b"\x00\xffid"))
    )
    description.non_identifying_attributes.append(
        KeyValue(key="host.name", value=AnyValue(string_value=host_name))
    )
    if healthy is not None:
        message.health.healthy = healthy
        message.health.status = "StatusOK" if healthy else "StatusError"
    return message


def heartbeat(agent_id: str, sequence_num: int) -> AgentToServer:
    return AgentToServer(instance_uid=uuid.UUID(agent_id).bytes, sequence_num=sequence_num)
