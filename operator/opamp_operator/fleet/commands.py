"""Commands the server sends an agent (ServerToAgentCommand): today only Restart."""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from opamp_operator.opamp.generated import opamp_pb2
from opamp_operator.opamp.messages import ServerToAgent

ACCEPTS_RESTART: Final = int(opamp_pb2.AgentCapabilities_AcceptsRestartCommand)


class RestartResult(StrEnum):
    """What became of a restart request; stable strings (CR status, metric label, REST)."""

    SENT = "sent"  # pushed on the agent's WebSocket
    QUEUED = "queued"  # an HTTP agent gets it in the reply to its next poll
    NOT_SUPPORTED = "not_supported"  # the agent does not claim AcceptsRestartCommand
    NOT_CONNECTED = "not_connected"  # no live session here
    UNKNOWN_AGENT = "unknown_agent"  # this process does not know the agent

    @property
    def accepted(self) -> bool:
        return self in (RestartResult.SENT, RestartResult.QUEUED)


def restart_command(uid: bytes, capabilities: int) -> ServerToAgent:
    """A ServerToAgent carrying the Restart command and, as the spec allows, nothing else
    but instance_uid and capabilities (an agent ignores other fields next to a command)."""
    message = ServerToAgent(instance_uid=uid, capabilities=capabilities)
    message.command.type = opamp_pb2.CommandType_Restart
    return message


def explain(result: RestartResult, agent_id: str) -> str:
    """One sentence for the CR, the Event and the REST problem document."""
    texts = {
        RestartResult.SENT: "the Restart command was sent on the agent's WebSocket",
        RestartResult.QUEUED: "the Restart command goes out in the reply to the agent's next poll",
        RestartResult.NOT_SUPPORTED: "the agent does not claim the AcceptsRestartCommand "
        "capability, so it would ignore a Restart command; none was sent",
        RestartResult.NOT_CONNECTED: "the agent is not connected to this operator",
        RestartResult.UNKNOWN_AGENT: "no agent with this instance uid is known to this operator",
    }
    return f"agent {agent_id}: {texts[result]}"
