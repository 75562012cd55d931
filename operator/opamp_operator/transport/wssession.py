"""What one AgentToServer does to its WebSocket session, once `wsmessage.read_message` let
it through: the rules both framings (websocket.py, ownws.py) apply, written once.

`SessionRules.apply` is synchronous and does no I/O but the channel's `close` (which never
blocks): the Pod binding, the fleet, the counts, how the agent is judged. What it returns
says what the framing must still do with its own I/O (websockets awaits, ownws writes in
place or runs a task). The common outcome is the reply itself (or None), so a message
costs no outcome object; only the rare ones come wrapped.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final, NamedTuple, Protocol

from opamp_operator import metrics
from opamp_operator.config import ListenerSettings
from opamp_operator.fleet.model import Reason, Transport
from opamp_operator.fleet.registry import Fleet
from opamp_operator.opamp.messages import AgentToServer, ServerToAgent

from .auth import PodBinding, Refused, note_refusal
from .describe import message_kind
from .rfc6455 import INTERNAL_ERROR, POLICY_VIOLATION
from .wschannel import WsChannel

log = logging.getLogger(__name__)

MESSAGES: Final = metrics.MessageMetrics(Transport.WEBSOCKET.value)


def push_buffer_limit(settings: ListenerSettings) -> int:
    """How many bytes may wait for a peer, unsent or unread, before a server-initiated push
    closes it as a slow consumer (1008, `slow_consumer`): two messages of the largest size.
    Its ping could take a minute to fail, while the fleet may push a large config to every
    agent at once."""
    return 2 * settings.max_message_bytes


class SessionState(Protocol):
    """What the rules read and keep per connection (`OpAMPConnection`, `OwnChannel`)."""

    binding: PodBinding | None  # the Pod its ServiceAccount token is bound to
    capabilities: int  # as last stated by the agent (0: not yet)
    # Judged by its heartbeats: ping only after this much quiet (None: every ping_interval).
    quiet_seconds: float | None
    heard_at: float  # loop time of the last OpAMP message the fleet took


class AskFullState(NamedTuple):
    """Send `request` (ReportFullState) instead of passing the message on: nothing tells
    which Pod the agent is in yet (`PodBinding.check`). Not a handled message."""

    request: ServerToAgent


class Opened(NamedTuple):
    """The message opened a session: await the ledger row before sending `reply`, which
    acknowledges the session (see fleet/ledger.py)."""

    reply: ServerToAgent | None


class Closed:
    """The rules closed the channel (a refused Pod binding, a failure in the fleet)."""

    __slots__ = ()


CLOSED: Final = Closed()

#: The reply to send now (None: none), or what else to do first (see the classes above).
Outcome = ServerToAgent | None | AskFullState | Opened | Closed


class SessionRules:
    """The per-message rules for one endpoint's WebSockets."""

    __slots__ = ("_fleet", "_heartbeat_timeout")

    def __init__(self, fleet: Fleet, heartbeat_timeout: float) -> None:
        self._fleet = fleet
        self._heartbeat_timeout = heartbeat_timeout  # keepalive.quiet_before_ping

    def apply(
        self,
        channel: WsChannel,
        state: SessionState,
        allowed: set[bytes] | None,
        message: AgentToServer,
    ) -> Outcome:
        """Apply `message` from `channel`; `allowed` is the channel's uid set, which an
        assigned uid joins (None: the upgrade named no uid)."""
        fleet = self._fleet
        binding = state.binding
        if binding is not None:
            checked = binding.check(message, fleet.description)
            if checked is not None:
                return _bound(channel, binding, checked)
        opened = fleet.sessions_opened
        try:
            reply = fleet.handle_message(channel, message)
        except Exception:
            log.exception("handling a message from %s failed", channel.remote_addr)
            channel.close(INTERNAL_ERROR, "internal error", Reason.CONNECTION_CLOSED)
            return CLOSED
        MESSAGES.received(message_kind(message))
        state.heard_at = asyncio.get_running_loop().time()
        stated = message.capabilities
        new_session = fleet.sessions_opened != opened
        if new_session or (stated and stated != state.capabilities):
            # A new session, or other capabilities: how this agent is judged may differ (many
            # agents state them in every message: not a fleet look-up per heartbeat).
            state.capabilities = stated or state.capabilities
            by_heartbeat = fleet.judged_by_heartbeat(channel)
            state.quiet_seconds = self._heartbeat_timeout if by_heartbeat else None
        if reply is not None and allowed is not None and reply.HasField("agent_identification"):
            # A duplicate told to switch uid speaks for the new one from now on.
            allowed.add(bytes(reply.agent_identification.new_instance_uid))
        return Opened(reply) if new_session else reply


def _bound(channel: WsChannel, binding: PodBinding, checked: Refused | ServerToAgent) -> Outcome:
    """The Pod binding's answer to a message not (yet) shown to belong to the token's Pod."""
    if isinstance(checked, Refused):
        who = binding.identity.describe()
        note_refusal(checked, Transport.WEBSOCKET.value, channel.remote_addr, who)
        channel.close(POLICY_VIOLATION, checked.detail, Reason.PROTOCOL_ERROR)
        return CLOSED
    return AskFullState(checked)
