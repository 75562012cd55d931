"""The fleet: every agent this process knows, its session, phase and deadlines.

Transports call `handle_message` and `channel_closed`; a timer calls `check_deadlines`.
Each change is published on the `EventBus` as a plain event; nothing here does I/O.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime

from opamp_operator.config import FleetSettings
from opamp_operator.opamp.errors import InvalidInstanceUid
from opamp_operator.opamp.generated import opamp_pb2
from opamp_operator.opamp.messages import (
    AgentDescriptionView,
    AgentToServer,
    ServerToAgent,
    error_response,
    server_capabilities,
    uid_text,
    validate_instance_uid,
)

from .channel import AuthenticatedChannel, Channel, PushChannel
from .clock import Clock
from .commands import ACCEPTS_RESTART, RestartResult, restart_command
from .components import REPORT_AVAILABLE_COMPONENTS, REPORTS_AVAILABLE_COMPONENTS
from .deadlines import DeadlineScheduler
from .events import (
    AgentChanged,
    AgentForgotten,
    EventBus,
    PhaseChanged,
    SessionClosed,
    SessionOpened,
)
from .identity import DuplicateUid, identity_of, is_duplicate, new_instance_uid
from .limits import Rejection, TokenBucket
from .model import DEPARTURES, AgentPhase, AgentSnapshot, Liveness, Reason, SessionInfo, Transport
from .offers import DesiredSettings, default_offers
from .record import AgentRecord, LiveSession, apply_components, apply_report, is_full_report
from .remoteconfig import ACCEPTS_REMOTE_CONFIG, DesiredConfig

log = logging.getLogger(__name__)

SERVER_CAPABILITIES = server_capabilities()
_FULL_STATE = opamp_pb2.ServerToAgentFlags_ReportFullState
_MEMORY_FACTOR = 2  # agents kept in memory, Online or not, per allowed Online agent
_SLOW_WINDOW = 4.0  # timeouts within which a timed-out agent's return counts as slow
_MAX_REASSIGNED = 16  # duplicates remembered per uid (clones of one image)
# How a restarting agent's session ends; other reasons (shutdown, pod deleted) win.
_RESTART_ENDINGS = frozenset(
    {Reason.AGENT_DISCONNECT, Reason.CONNECTION_CLOSED, Reason.HEARTBEAT_TIMEOUT}
)


class Fleet:
    def __init__(
        self,
        settings: FleetSettings,
        clock: Clock,
        events: EventBus,
        *,
        on_rejected: Callable[[str], None] | None = None,
        on_slow_agent: Callable[[], None] | None = None,
        on_duplicate: Callable[[DuplicateUid], None] | None = None,
        on_bad_input: Callable[[str, str], None] | None = None,
        on_components_requested: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.events = events
        # Called with the rejection kind for every refused new agent (the app counts it in
        # a metric): rejections are no fleet event, so no subscriber queue fills in a flood.
        self._on_rejected = on_rejected
        # Called once per agent whose messages come further apart than the timeout.
        self._on_slow_agent = on_slow_agent
        # Called for every duplicate instance uid found (the app counts it and posts an Event).
        self._on_duplicate = on_duplicate
        # Called with (transport, reason) for reported data refused as too large or invalid
        # (the app counts it in opamp_bad_input_total); the rest of the message is applied.
        self._on_bad_input = on_bad_input
        self._on_components_requested = on_components_requested
        self._agents: dict[str, AgentRecord] = {}
        self._by_channel: dict[Channel, str] = {}  # long-lived channels (WebSockets) only
        # WebSockets of duplicates told to switch: the old uid -> the assigned one, until the
        # agent uses it (messages in flight still carry the old uid).
        self._aliases: dict[Channel, tuple[str, str]] = {}
        # Invariant: exactly the Online agents have a heartbeat deadline (the agent cap
        # counts them). For agents judged by their connection it is only a refresh time.
        self._heartbeats = DeadlineScheduler()  # Online agents: when they time out
        self._offline = DeadlineScheduler()  # Offline agents (lost, not departed): Error
        self._forget = DeadlineScheduler()  # Offline/Error agents: dropped from memory
        self._registrations = TokenBucket(
            settings.registrations_per_second, settings.registration_burst, clock.monotonic()
        )
        self._seen: dict[str, datetime] = {}  # since the last `drain_seen`
        # Remote config per agent id, also for agents not (yet) known here; as many entries
        # as the configuration source (the Kubernetes mirror) declares, one per agent.
        self._desired: dict[str, DesiredConfig] = {}
        # Agents that rolled themselves back from their desired config: (hash, error). Kept
        # with the desired config (not the record) so that a forgotten and returning agent, or
        # a restart (the GitOps controller restores it from the CR), is not offered it again.
        self._rolled_back: dict[str, tuple[bytes, str]] = {}
        # Connection settings per agent id, kept like `_desired` (see fleet/offers.py).
        self._settings: dict[str, DesiredSettings] = {}
        # Set by `begin_shutdown`: from then on no deadline fires, so every session that is
        # still open ends as operator_shutdown, however long its socket takes to close.
        self._shutting_down = False
        # Sessions opened since start: a transport compares it around `handle_message` to
        # learn that a message opened a session (see fleet/ledger.py).
        self.sessions_opened = 0
        self.sessions_closed = 0  # ended since start (the collector policy counts churn by it)
        self.rejected_registrations = 0

    # -- reading -----------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._agents)

    def active(self) -> int:
        """Agents Online (a live session, or an HTTP agent within its timeout): the cap."""
        return len(self._heartbeats)

    def get(self, agent_id: str) -> AgentSnapshot | None:
        record = self._agents.get(agent_id)
        return record.snapshot() if record else None

    def description(self, agent_id: str) -> AgentDescriptionView | None:
        """The description the agent last reported here (None: unknown or never described)."""
        record = self._agents.get(agent_id)
        return record.description if record else None

    def snapshots(self) -> list[AgentSnapshot]:
        return [record.snapshot() for record in self._agents.values()]

    def counts(self) -> dict[tuple[AgentPhase, Transport | None], int]:
        """Agents by phase and by the transport of their live session (None: no session)."""
        counts: dict[tuple[AgentPhase, Transport | None], int] = {}
        for record in self._agents.values():
            transport = record.session.info.transport if record.session else None
            key = (record.phase or AgentPhase.OFFLINE, transport)
            counts[key] = counts.get(key, 0) + 1
        return counts

    def departed(self) -> int:
        """Agents Offline after a goodbye (AgentDisconnect, Pod deleted): gone on purpose."""
        return sum(
            1
            for record in self._agents.values()
            if record.phase is AgentPhase.OFFLINE and record.phase_reason in DEPARTURES
        )

    def drain_seen(self) -> dict[str, datetime]:
        """Agent id -> last message time, for agents heard from since the last call."""
        seen, self._seen = self._seen, {}
        return seen

    def next_deadline(self) -> float | None:
        """Monotonic time of the next heartbeat or offline deadline, if any."""
        schedulers = (self._heartbeats, self._offline, self._forget)
        due = [d for d in (s.next_due() for s in schedulers) if d is not None]
        return min(due) if due else None

    # -- messages from agents ----------------------------------------------------

    def handle_message(self, channel: Channel, message: AgentToServer) -> ServerToAgent | None:
        """Apply one AgentToServer; return the reply (None after an AgentDisconnect)."""
        uid = bytes(message.instance_uid)
        agent_id = self._channel_agent(channel, uid)
        if agent_id is None:
            try:
                agent_id = validate_instance_uid(uid)
            except InvalidInstanceUid as error:
                return error_response(uid, opamp_pb2.ServerErrorResponseType_BadRequest, str(error))
        alias = self._aliases.get(channel)
        if alias is not None and alias[0] == agent_id:
            original = self._agents.get(agent_id)
            if original is not None:
                return self._serve_duplicate(original, alias[1], channel, message)
            del self._aliases[channel]  # the original was forgotten: nothing to tell apart
        record = self._agents.get(agent_id)
        if record is None:
            rejection = self._admit()
            if rejection is not None:
                return self._reject(message, rejection)
            record = self._register(agent_id, bytes(message.instance_uid))
        elif self._duplicate(record, channel, message):
            return self._split_duplicate(record, channel, message)
        return self._serve(record, channel, message)

    def judged_by_heartbeat(self, channel: Channel) -> bool:
        """Whether the agent `channel` carries is judged by its heartbeats (not by its
        connection); False for a channel not (or no longer) carrying a session."""
        agent_id = self._by_channel.get(channel)
        record = self._agents.get(agent_id) if agent_id is not None else None
        return record is not None and record.liveness() is Liveness.HEARTBEAT

    def _channel_agent(self, channel: Channel, uid: bytes) -> str | None:
        """The id of the agent whose session `channel` carries, if `uid` is its uid.

        Every message of a WebSocket session carries the same uid: this saves formatting
        its text form per message. None: not known here; validate and format it.
        """
        agent_id = self._by_channel.get(channel)
        if agent_id is None:
            return None
        record = self._agents.get(agent_id)
        return agent_id if record is not None and record.uid_bytes == uid else None

    def _serve(
        self, record: AgentRecord, channel: Channel, message: AgentToServer
    ) -> ServerToAgent | None:
        """Apply `message` to `record` (whatever uid it carried) and build the reply."""
        reply = ServerToAgent(instance_uid=record.uid_bytes, capabilities=SERVER_CAPABILITIES)
        opened = self._bind_session(record, channel)
        if self._needs_full_state(record, message):
            reply.flags |= _FULL_STATE
        record.sequence_num = int(message.sequence_num)
        self._note_interval(record)
        progress = record.config_progress() if record.desired is not None else None
        offered = record.settings_progress() if record.desired_settings is not None else None
        changed = apply_report(record, message)
        if message.HasField("available_components"):
            changed |= self._take_components(record, channel, message)
        if offered is not None and record.settings_progress() != offered:
            changed |= {"connection_settings"}
        if record.rolled_back is not None:
            self._rolled_back[record.agent_id] = record.rolled_back
        if progress is not None and record.config_progress() != progress:
            changed |= {"remote_config"}
        if changed:
            self.events.publish(AgentChanged(record.agent_id, self.clock.now(), changed))
        self._heartbeat(record, Reason.CONNECTED if opened else Reason.HEARTBEAT_RESUMED)
        if message.HasField("agent_disconnect"):
            self._end_session(record, Reason.AGENT_DISCONNECT)
            return None
        if record.pending_restart:
            return self._deliver_restart(record)
        self._add_pending(record, reply)
        self._add_remote_config(record, message, reply)
        self._ask_components(record, reply)
        return reply

    def channel_closed(self, channel: Channel, reason: str = Reason.CONNECTION_CLOSED) -> None:
        """The transport lost `channel`; end the session it carried, if still current."""
        self._aliases.pop(channel, None)
        agent_id = self._by_channel.pop(channel, None)
        record = self._agents.get(agent_id) if agent_id else None
        if record is not None and record.session is not None and record.session.channel is channel:
            self._end_session(record, reason)

    def request_reconnect(self, agent_id: str) -> bool:
        """Ask a connected agent to reconnect; False when it is not connected here."""
        record = self._agents.get(agent_id)
        if record is None or record.session is None:
            return False
        if record.session.info.transport is Transport.WEBSOCKET:
            record.session.channel.request_close(Reason.RECONNECT_REQUESTED)
        else:
            record.pending_reconnect = True
        return True

    def request_restart(self, agent_id: str) -> RestartResult:
        """Send a connected agent that accepts it the Restart command (ServerToAgentCommand).

        A WebSocket agent gets it at once, an HTTP agent in the reply to its next poll. The
        session that ends next (within the heartbeat timeout) ends as `restart_requested`.
        """
        record = self._agents.get(agent_id)
        if record is None:
            return RestartResult.UNKNOWN_AGENT
        if record.session is None:
            return RestartResult.NOT_CONNECTED
        if not record.capabilities & ACCEPTS_RESTART:
            return RestartResult.NOT_SUPPORTED
        channel = record.session.channel
        command = restart_command(record.uid_bytes, SERVER_CAPABILITIES)
        if isinstance(channel, PushChannel) and channel.offer(command):
            record.restart_sent_at = self.clock.monotonic()
            return RestartResult.SENT
        record.pending_restart = True
        return RestartResult.QUEUED

    def set_desired_config(self, agent_id: str, config: DesiredConfig | None) -> None:
        """Set (None: forget) the remote config `agent_id` should run; sends it when it can.

        Kept for agents not connected or not known yet. A connected WebSocket agent gets it
        at once, an HTTP agent with its next reply; either only if it accepts remote config
        and does not report this config's hash already. Forgetting sends nothing: the agent
        keeps what it runs.
        """
        previous = self._desired.get(agent_id)
        if config is None:
            self._desired.pop(agent_id, None)
        else:
            self._desired[agent_id] = config
        rolled_back = self._rolled_back.get(agent_id)
        if rolled_back is not None and (config is None or config.hash != rolled_back[0]):
            del self._rolled_back[agent_id]  # another config: this one may be offered
            rolled_back = None
        record = self._agents.get(agent_id)
        if record is None:
            return
        record.desired = config
        record.rolled_back = rolled_back
        new_hash = _hash_of(previous) != _hash_of(config)
        if new_hash or _source_of(previous) != _source_of(config):
            self._publish_changed(record, "desired_config")
        if new_hash:
            self._offer_remote_config(record)

    def desired_config(self, agent_id: str) -> DesiredConfig | None:
        return self._desired.get(agent_id)

    def set_desired_settings(self, agent_id: str, settings: DesiredSettings | None) -> None:
        """Set (None: forget) the connection settings offered to `agent_id`; sends them when
        it can (a WebSocket agent at once, an HTTP agent with its next reply)."""
        previous = self._settings.get(agent_id)
        if settings is None:
            self._settings.pop(agent_id, None)
        else:
            self._settings[agent_id] = settings
        record = self._agents.get(agent_id)
        if record is None:
            return
        record.desired_settings = settings
        if _identity_of(previous) == _identity_of(settings):
            return
        self._publish_changed(record, "desired_settings")
        channel = record.session.channel if record.session is not None else None
        if isinstance(channel, PushChannel) and self._wants_settings(record):
            assert settings is not None
            push = ServerToAgent(instance_uid=record.uid_bytes, capabilities=SERVER_CAPABILITIES)
            push.connection_settings.CopyFrom(self._offers(settings, record))
            if channel.offer(push):
                record.settings_sent_hash = settings.hash

    def desired_settings(self, agent_id: str) -> DesiredSettings | None:
        return self._settings.get(agent_id)

    def note_rolled_back(self, agent_id: str, config_hash: bytes, error: str) -> None:
        """The agent rolled itself back from `config_hash` (as its CR says after a restart).

        It is not offered that config again until its desired config changes to another one.
        """
        entry = (config_hash, error)
        if self._rolled_back.get(agent_id) == entry:
            return
        self._rolled_back[agent_id] = entry
        record = self._agents.get(agent_id)
        if record is not None and record.rolled_back != entry:
            record.rolled_back = entry
            if record.session is not None:  # only the replica holding it rewrites its CR
                self._publish_changed(record, "remote_config")

    def rolled_back(self, agent_id: str) -> tuple[bytes, str] | None:
        return self._rolled_back.get(agent_id)

    def mark_offline(self, agent_id: str, reason: str) -> bool:
        """End an Online agent's session now for `reason` (e.g. its pod is gone); Offline.

        The transport is asked to close the connection too (an HTTP agent's next poll opens
        a new session). False when the agent is unknown or not Online.
        """
        record = self._agents.get(agent_id)
        if record is None or record.phase is not AgentPhase.ONLINE:
            return False
        if record.session is not None:
            record.session.channel.request_close(reason)
        self._end_session(record, reason)
        return True

    def request_full_state(self, agent_id: str) -> None:
        record = self._agents.get(agent_id)
        if record is not None:
            record.pending_full_state = True

    def begin_shutdown(self) -> None:
        """Stop judging deadlines: the process is ending every session (see `shutdown`).

        While the listener closes the WebSockets (a frozen peer holds its close handshake
        for seconds), an HTTP agent cannot poll any more; without this its heartbeat would
        time out first, and its session would end `heartbeat_timeout`.
        """
        self._shutting_down = True

    def shutdown(self) -> list[Channel]:
        """End every session with `operator_shutdown`; return the channels to close."""
        self._shutting_down = True
        channels: list[Channel] = []
        for record in self._agents.values():
            if record.session is not None:
                channels.append(record.session.channel)
                self._end_session(record, Reason.OPERATOR_SHUTDOWN)
        return channels

    # -- deadlines ----------------------------------------------------------------

    def check_deadlines(self) -> int:
        """Move timed-out agents Online -> Offline, long-offline ones -> Error, and forget
        agents gone longer than the retention."""
        if self._shutting_down:
            return 0
        now = self.clock.monotonic()
        fired = 0
        for agent_id in self._heartbeats.pop_due(now):
            record = self._agents.get(agent_id)
            if record is not None and record.phase is AgentPhase.ONLINE:
                if record.liveness() is Liveness.CONNECTION:
                    # Its WebSocket is still open, so pings are answered (the keep-alive
                    # closes it otherwise): alive. Refresh lastSeen so that the CR and
                    # the store, which other replicas judge by, do not call it silent.
                    self._touch(record)
                    continue
                if record.session is not None:
                    record.session.channel.request_close(Reason.HEARTBEAT_TIMEOUT)
                self._end_session(record, Reason.HEARTBEAT_TIMEOUT)
                fired += 1
        for agent_id in self._offline.pop_due(now):
            record = self._agents.get(agent_id)
            if record is not None and record.phase is AgentPhase.OFFLINE:
                self._set_phase(record, AgentPhase.ERROR, Reason.OFFLINE_TOO_LONG)
                fired += 1
        for agent_id in self._forget.pop_due(now):
            fired += self._drop(agent_id)
        return fired

    # -- internals ----------------------------------------------------------------

    def _admit(self) -> Rejection | None:
        if self.active() >= self.settings.max_agents:
            return Rejection("agent_limit", "agent limit reached", 60.0)
        if len(self._agents) >= _MEMORY_FACTOR * self.settings.max_agents:
            # Bounded memory when agents come and go faster than the retention forgets
            # them (new instance uids at every restart): the longest gone goes first.
            oldest = self._forget.pop_earliest()
            if oldest is not None:
                self._drop(oldest)
        wait = self._registrations.take(self.clock.monotonic())
        return Rejection("rate_limit", "too many new agents per second", wait) if wait > 0 else None

    def _reject(self, message: AgentToServer, rejection: Rejection) -> ServerToAgent:
        self.rejected_registrations += 1
        if self._on_rejected is not None:
            self._on_rejected(rejection.kind)
        return error_response(
            bytes(message.instance_uid),
            opamp_pb2.ServerErrorResponseType_Unavailable,
            rejection.reason,
            retry_after_ns=int(rejection.retry_after_seconds * 1e9),
        )

    def _duplicate(self, record: AgentRecord, channel: Channel, message: AgentToServer) -> bool:
        """`message` comes from a second live agent using `record`'s uid (identity.py's rule)."""
        session = record.session
        if session is None or session.channel is channel:
            return False
        if not message.HasField("agent_description"):
            return False
        newcomer = AgentDescriptionView.from_proto(message.agent_description)
        return is_duplicate(identity_of(record.description), identity_of(newcomer))

    def _split_duplicate(
        self, original: AgentRecord, channel: Channel, message: AgentToServer
    ) -> ServerToAgent | None:
        """Give the newcomer its own uid and record; the agent holding the uid keeps it."""
        newcomer = identity_of(AgentDescriptionView.from_proto(message.agent_description)) or ()
        assigned = original.reassigned.get(newcomer)
        if assigned is None or assigned not in self._agents:
            rejection = self._admit()
            if rejection is not None:
                return self._reject(message, rejection)
            uid = new_instance_uid()
            assigned = uid_text(uid)
            self._register(assigned, uid)
            if len(original.reassigned) < _MAX_REASSIGNED:
                original.reassigned[newcomer] = assigned
            found = DuplicateUid(
                original.agent_id, assigned, channel.transport.value, channel.remote_addr,
                identity_of(original.description) or (), newcomer, self.clock.now(),
            )  # fmt: skip
            log.warning("duplicate instance uid: %s", found.describe())
            if self._on_duplicate is not None:
                self._on_duplicate(found)
        return self._serve_duplicate(original, assigned, channel, message)

    def _serve_duplicate(
        self, original: AgentRecord, assigned: str, channel: Channel, message: AgentToServer
    ) -> ServerToAgent | None:
        """Apply a message carrying `original`'s uid to the newcomer's record `assigned`,
        and tell the agent (again) to use its new uid from now on."""
        record = self._agents.get(assigned)
        if record is None:  # forgotten meanwhile: start over as a duplicate
            self._aliases.pop(channel, None)
            return self._split_duplicate(original, channel, message)
        if channel.transport is Transport.WEBSOCKET:
            self._aliases[channel] = (original.agent_id, assigned)
        reply = self._serve(record, channel, message)
        if reply is None or reply.HasField("command"):
            return reply
        reply.instance_uid = original.uid_bytes  # addressed to the uid the agent still uses
        reply.agent_identification.new_instance_uid = record.uid_bytes
        return reply

    def _deliver_restart(self, record: AgentRecord) -> ServerToAgent:
        """The queued Restart command, alone in the reply (the spec's rule for commands)."""
        record.pending_restart = False
        record.restart_sent_at = self.clock.monotonic()
        if record.session is not None and record.session.info.transport is Transport.HTTP:
            # As for a reconnect: no connection to watch, so the session ends now and the
            # restarted agent's next poll opens a new one.
            self._end_session(record, Reason.RESTART_REQUESTED)
        return restart_command(record.uid_bytes, SERVER_CAPABILITIES)

    def _register(self, agent_id: str, uid: bytes) -> AgentRecord:
        now = self.clock.now()
        record = AgentRecord(agent_id, uid, None, Reason.CONNECTED, now, now, now)
        record.desired = self._desired.get(agent_id)
        record.rolled_back = self._rolled_back.get(agent_id)
        record.desired_settings = self._settings.get(agent_id)
        self._agents[agent_id] = record
        return record

    def _bind_session(self, record: AgentRecord, channel: Channel) -> bool:
        """Attach `channel` as the agent's session; True when a new session started."""
        session = record.session
        if session is not None and _same_connection(session, channel):
            return False
        if session is not None:
            session.channel.request_close(Reason.SUPERSEDED)
            self._end_session(record, Reason.SUPERSEDED)
        now = self.clock.now()
        account = channel.service_account if isinstance(channel, AuthenticatedChannel) else None
        info = SessionInfo(str(uuid.uuid4()), channel.transport, channel.remote_addr, now, account)
        record.session = LiveSession(info, channel)
        if channel.transport is Transport.WEBSOCKET:
            self._by_channel[channel] = record.agent_id
        record.last_connected_at = now
        self.sessions_opened += 1
        record.offered_settings = False
        record.config_sent_hash = None
        record.components_asked = None
        record.settings_sent_hash = None
        self.events.publish(
            SessionOpened(record.agent_id, info.session_id, info.transport, info.remote_addr, now)
        )
        return True

    def _needs_full_state(self, record: AgentRecord, message: AgentToServer) -> bool:
        # A sequence gap (unless the message is a full report, as a client restarting
        # from 0 sends), or an agent we hold no description for (new to this process,
        # e.g. after a restart), must report everything again.
        gap = record.sequence_num is not None and message.sequence_num != record.sequence_num + 1
        blind = record.description is None and not message.HasField("agent_description")
        return (gap and not is_full_report(message)) or blind

    def _note_interval(self, record: AgentRecord) -> None:
        """Log once per agent whose messages come further apart than the timeout."""
        now = self.clock.monotonic()
        previous, record.last_message_monotonic = record.last_message_monotonic, now
        timeout = self.settings.heartbeat_timeout_seconds
        if (
            previous is None
            or record.warned_slow
            or record.phase_reason != Reason.HEARTBEAT_TIMEOUT
        ):
            return
        interval = now - previous
        # Back within a few timeouts after timing out: it sends slower than the timeout
        # (a longer absence is an outage, not an interval).
        if timeout < interval <= _SLOW_WINDOW * timeout:
            record.warned_slow = True
            log.warning(
                "agent %s sends every ~%.0fs, longer than the heartbeat timeout (%gs): its "
                "sessions time out between messages; raise --heartbeat-timeout",
                record.agent_id, interval, timeout,
            )  # fmt: skip
            if self._on_slow_agent is not None:
                self._on_slow_agent()

    def _heartbeat(self, record: AgentRecord, reason: Reason) -> None:
        self._touch(record)
        if record.phase is not AgentPhase.ONLINE:
            self._offline.cancel(record.agent_id)
            self._forget.cancel(record.agent_id)
            self._set_phase(record, AgentPhase.ONLINE, reason)

    def _touch(self, record: AgentRecord) -> None:
        """The agent is alive now: lastSeen, and the next heartbeat deadline."""
        now = self.clock.now()
        record.last_seen_at = now
        self._seen[record.agent_id] = now
        deadline = self.clock.monotonic() + self.settings.heartbeat_timeout_seconds
        self._heartbeats.set(record.agent_id, deadline)

    def _drop(self, agent_id: str) -> int:
        """Forget an agent gone longer than the retention (its CR and rows stay)."""
        record = self._agents.get(agent_id)
        if record is None or record.phase is AgentPhase.ONLINE:
            return 0
        del self._agents[agent_id]
        self._offline.cancel(agent_id)
        self._seen.pop(agent_id, None)
        self.events.publish(AgentForgotten(agent_id, self.clock.now()))
        return 1

    def _add_pending(self, record: AgentRecord, reply: ServerToAgent) -> None:
        if self._wants_settings(record):
            assert record.desired_settings is not None
            reply.connection_settings.CopyFrom(self._offers(record.desired_settings, record))
            record.settings_sent_hash = record.desired_settings.hash
            record.offered_settings = True
            self._publish_changed(record, "connection_settings")
        elif not record.offered_settings:
            interval = int(self.settings.heartbeat_interval_seconds)
            reply.connection_settings.CopyFrom(default_offers(interval))
            record.offered_settings = True
        if record.pending_full_state:
            reply.flags |= _FULL_STATE
            record.pending_full_state = False
        if record.pending_reconnect:
            # Plain HTTP has no connection to drop: the session ends now and the agent's
            # next poll opens a new one.
            record.pending_reconnect = False
            self._end_session(record, Reason.RECONNECT_REQUESTED)

    def _take_components(
        self, record: AgentRecord, channel: Channel, message: AgentToServer
    ) -> frozenset[str]:
        """Apply the message's AvailableComponents; count and log a refused one."""
        changed, refused = apply_components(record, message.available_components)
        if refused is None:
            return frozenset({"available_components"}) if changed else frozenset()
        log.warning(
            "agent %s (%s from %s): available components not kept: %s (%s)",
            record.agent_id, channel.transport.value, channel.remote_addr, refused.detail,
            refused.reason,
        )  # fmt: skip
        if self._on_bad_input is not None:
            self._on_bad_input(channel.transport.value, refused.reason)
        # Asking again in this session would only bring the same refused map back.
        record.components_asked = bytes(message.available_components.hash)
        # A map too large to keep still brings its hash: what we held is stale now.
        return frozenset({"available_components"}) if changed else frozenset()

    def _ask_components(self, record: AgentRecord, reply: ServerToAgent) -> None:
        """ReportAvailableComponents when we hold only the hash: once per hash a session."""
        held = record.available_components
        if held is None or held.complete or record.components_asked == held.hash:
            return
        if record.capabilities & REPORTS_AVAILABLE_COMPONENTS:
            reply.flags |= REPORT_AVAILABLE_COMPONENTS
            record.components_asked = held.hash
            if self._on_components_requested is not None:
                self._on_components_requested()

    def _wants_settings(self, record: AgentRecord) -> bool:
        """The agent should be sent its connection settings (not sent yet in this session,
        and it does not report their hash already)."""
        desired = record.desired_settings
        if desired is None or record.session is None or record.settings_sent_hash == desired.hash:
            return False
        if not record.capabilities or not desired.applies_to(record.capabilities):
            return False
        reported = (record.connection_settings_status or {}).get("lastConnectionSettingsHash")
        return reported != desired.hash_hex

    def _offers(
        self, settings: DesiredSettings, record: AgentRecord
    ) -> opamp_pb2.ConnectionSettingsOffers:
        return settings.to_proto(record.capabilities, int(self.settings.heartbeat_interval_seconds))

    def _wants_config(self, record: AgentRecord) -> bool:
        """The agent should be sent its desired config (not sent yet in this session)."""
        desired = record.desired
        if desired is None or record.session is None or record.config_sent_hash == desired.hash:
            return False
        if record.rolled_back_from_desired() is not None:
            return False  # it went back from this config by itself: do not insist
        if not record.capabilities & ACCEPTS_REMOTE_CONFIG:
            return False
        reported = (record.remote_config_status or {}).get("lastRemoteConfigHash")
        return reported != desired.hash_hex

    def _add_remote_config(
        self, record: AgentRecord, message: AgentToServer, reply: ServerToAgent
    ) -> None:
        asked_full = bool(reply.flags & _FULL_STATE)
        if asked_full and not message.HasField("remote_config_status"):
            # It may run this config already: wait for the full report to tell.
            return
        if self._wants_config(record):
            assert record.desired is not None
            reply.remote_config.CopyFrom(record.desired.to_proto())
            record.config_sent_hash = record.desired.hash
            self._publish_changed(record, "remote_config")

    def _offer_remote_config(self, record: AgentRecord) -> None:
        """Push the desired config to a connected agent now; others get it in their next reply."""
        session = record.session
        if session is None or not self._wants_config(record):
            return
        assert record.desired is not None
        channel = session.channel
        if isinstance(channel, PushChannel):
            push = ServerToAgent(instance_uid=record.uid_bytes, capabilities=SERVER_CAPABILITIES)
            push.remote_config.CopyFrom(record.desired.to_proto())
            if channel.offer(push):
                record.config_sent_hash = record.desired.hash
                self._publish_changed(record, "remote_config")

    def _publish_changed(self, record: AgentRecord, what: str) -> None:
        self.events.publish(AgentChanged(record.agent_id, self.clock.now(), frozenset({what})))

    def _end_session(self, record: AgentRecord, reason: str) -> None:
        reason = self._restart_reason(record, reason)
        session = record.session
        if session is not None:
            record.session = None
            self.sessions_closed += 1
            self._by_channel.pop(session.channel, None)
            now = self.clock.now()
            record.last_disconnected_at = now
            record.disconnect_reason = reason
            info = session.info
            closed = SessionClosed(
                record.agent_id, info.session_id, info.transport, info.remote_addr,
                info.connected_at, now, reason,
            )  # fmt: skip
            self.events.publish(closed)
        if reason != Reason.SUPERSEDED:
            self._go_offline(record, reason)

    def _restart_reason(self, record: AgentRecord, reason: str) -> str:
        """`restart_requested` for the way a session ends soon after a Restart command (the
        agent says goodbye, drops the connection or goes silent while it restarts)."""
        sent, record.restart_sent_at = record.restart_sent_at, None
        if sent is None or reason not in _RESTART_ENDINGS:
            return reason
        if self.clock.monotonic() - sent > self.settings.heartbeat_timeout_seconds:
            return reason
        return Reason.RESTART_REQUESTED

    def _go_offline(self, record: AgentRecord, reason: str) -> None:
        self._heartbeats.cancel(record.agent_id)
        if record.phase is AgentPhase.ONLINE:
            self._set_phase(record, AgentPhase.OFFLINE, reason)
            now = self.clock.monotonic()
            if reason not in DEPARTURES:  # a goodbye stays Offline, never Error
                self._offline.set(record.agent_id, now + self.settings.error_after_offline_seconds)
            self._forget.set(record.agent_id, now + self.settings.forget_after_seconds)

    def _set_phase(self, record: AgentRecord, phase: AgentPhase, reason: str) -> None:
        previous, now = record.phase, self.clock.now()
        record.phase, record.phase_reason, record.phase_since = phase, reason, now
        self.events.publish(
            PhaseChanged(record.agent_id, previous, phase, reason, now, record.last_seen_at)
        )


def _hash_of(config: DesiredConfig | None) -> bytes | None:
    return None if config is None else config.hash


def _identity_of(settings: DesiredSettings | None) -> tuple[bytes, str] | None:
    return None if settings is None else (settings.hash, settings.source)


def _source_of(config: DesiredConfig | None) -> str | None:
    return None if config is None else config.source


def _same_connection(session: LiveSession, channel: Channel) -> bool:
    if session.channel is channel:
        return True
    # Every HTTP poll is a new request; the agent's HTTP session spans them.
    return session.info.transport is Transport.HTTP and channel.transport is Transport.HTTP
