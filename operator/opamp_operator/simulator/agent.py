"""One simulated agent's state, and the behaviour every transport shares.

`AgentState` is the only per-agent object (a slots dataclass of scalars and
two references), so a 20,000-agent fleet stays in a few megabytes.
`AgentLogic` holds what the agents share (settings, counters, random source,
clock) and decides what an agent sends next and what a reply changes; the
transport loops in `ws` and `http` only move bytes.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from opamp_operator.backoff import Backoff
from opamp_operator.opamp.errors import ProtocolError
from opamp_operator.opamp.generated.opamp_pb2 import AgentConfigMap, AgentToServer
from opamp_operator.opamp.messages import parse_server_to_agent
from opamp_operator.simulator.config import DEFAULT_HEARTBEAT_S, SimulationConfig
from opamp_operator.simulator.stats import Stats
from opamp_operator.simulator.wire import (
    Identity,
    Reply,
    config_status_message,
    disconnect_message,
    full_state_message,
    heartbeat_message,
    new_instance_uid,
    read_reply,
)

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

log = logging.getLogger("opamp_operator.simulator")

#: Distinct remote configs kept for sharing between agents; more are held per agent.
_SHARED_CONFIGS: Final = 64
#: A heartbeat this late (fraction of the interval) counts as late.
_LATE_FRACTION: Final = 0.25


class Mode(enum.Enum):
    RUNNING = "running"
    CHURNING = "churning"  # said goodbye; comes back at not_before
    SILENT = "silent"  # sends nothing more, connection left open
    STOPPING = "stopping"  # the run is over


@dataclass(slots=True, eq=False)
class AgentState:
    """Everything one simulated agent remembers."""

    index: int
    uid: bytes
    heartbeat: float  # seconds between heartbeats; 0: none (WebSocket)
    seq: int = 0
    mode: Mode = Mode.RUNNING
    connected: bool = False  # counted in Stats.connected
    need_full_state: bool = True
    report_config: bool = False  # a remote config was applied and not yet reported
    followed_up: bool = False  # the last message answered a reply right away
    failures: int = 0  # consecutive, for backoff
    not_before: float = 0.0  # monotonic: no connect or send before this
    sent_at: float = 0.0  # monotonic send time of the oldest unanswered message; 0: none
    last_sent: float = 0.0
    next_beat: float = 0.0  # monotonic time of the next regular message
    silent_at: float = 0.0
    closed_at: float = 0.0  # when the server closed a silent agent's connection
    config_hash: bytes = b""
    config: AgentConfigMap | None = None
    conn: ClientConnection | None = None


class AgentLogic:
    """What agents share, and the transport-neutral rules they follow."""

    def __init__(
        self,
        config: SimulationConfig,
        stats: Stats,
        rng: random.Random,
        monotonic: Callable[[], float],
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.stats = stats
        self.rng = rng
        self.now = monotonic  # must be the event loop's clock (asyncio deadlines use it)
        self.wall = wall
        self.identity = Identity(
            name_prefix=config.name_prefix,
            groups=config.groups,
            service_version=config.service_version,
            start_time_ns=int(wall() * 1e9),
        )
        self.backoff = Backoff(config.backoff_initial, config.backoff_max)
        self.stopping = asyncio.Event()
        self._configs: dict[bytes, AgentConfigMap] = {}

    # -- agents
    def new_agent(self, index: int) -> AgentState:
        uid = new_instance_uid(int(self.wall() * 1000), self.rng)
        return AgentState(
            index=index, uid=uid, heartbeat=self.config.heartbeat or DEFAULT_HEARTBEAT_S
        )

    def uid_text(self, agent: AgentState) -> str:
        return str(uuid.UUID(bytes=agent.uid))

    # -- sending
    def compose(self, agent: AgentState, *, follow_up: bool = False) -> bytes:
        """The next message for this agent, serialized; consumes a sequence number."""
        agent.seq += 1
        agent.followed_up = follow_up
        message: AgentToServer
        if agent.need_full_state:
            message = full_state_message(
                self.identity,
                agent.index,
                agent.uid,
                agent.seq,
                config_hash=agent.config_hash,
                config=agent.config,
            )
            agent.need_full_state = False
            agent.report_config = False
        elif agent.report_config:
            message = config_status_message(agent.uid, agent.seq, agent.config_hash, agent.config)
            agent.report_config = False
        else:
            message = heartbeat_message(agent.uid, agent.seq)
        return message.SerializeToString()

    def compose_disconnect(self, agent: AgentState) -> bytes:
        agent.seq += 1
        return disconnect_message(agent.uid, agent.seq).SerializeToString()

    def sent(self, agent: AgentState, at: float, *, expect_reply: bool = True) -> None:
        """Record that a message left at monotonic time `at`."""
        self.stats.messages_sent += 1
        agent.last_sent = at
        if expect_reply and not agent.sent_at:
            agent.sent_at = at

    def wants_follow_up(self, agent: AgentState) -> bool:
        """Answer a reply at once (full state, config status), but never twice in a row."""
        return (agent.need_full_state or agent.report_config) and not agent.followed_up

    def interval(self, agent: AgentState) -> float:
        """Seconds between regular messages; HTTP agents poll even when heartbeats are off."""
        return agent.heartbeat or DEFAULT_HEARTBEAT_S

    def start_beating(self, agent: AgentState) -> None:
        """Start the heartbeat clock one interval after the last message."""
        agent.next_beat = agent.last_sent + self.interval(agent)

    def heartbeat_due(self, agent: AgentState) -> float | None:
        """When the next WebSocket heartbeat is due (monotonic), or None when off."""
        return agent.next_beat if agent.heartbeat > 0 else None

    def heartbeat_fired(self, agent: AgentState, due: float) -> None:
        """Count a late heartbeat and schedule the next one.

        The schedule keeps its phase (due + interval, like a ticker) instead of
        counting from the actual send: otherwise every loop stall would bunch
        the agents it delayed together, for good.
        """
        now = self.now()
        interval = self.interval(agent)
        if now - due > _LATE_FRACTION * interval:
            self.stats.heartbeats_late += 1
        agent.next_beat = due + interval
        if agent.next_beat <= now:  # more than an interval behind: start afresh
            agent.next_beat = now + interval

    # -- receiving
    def received(self, agent: AgentState, payload: bytes) -> Reply | None:
        """Apply one ServerToAgent payload; None when it does not decode (counted)."""
        now = self.now()
        try:
            message = parse_server_to_agent(payload)
        except ProtocolError as exc:
            self.failed(agent, exc.reason, detail=str(exc), backoff=False)
            return None
        reply = read_reply(message, agent.config_hash)
        self.stats.replies_received += 1
        if agent.sent_at:
            self.stats.latency.record(now - agent.sent_at)
            agent.sent_at = 0.0
        if reply.error is not None:
            retry = reply.retry_after_s
            unavailable = reply.error == "server_unavailable"
            self.failed(agent, reply.error, retry_after=retry, backoff=unavailable)
            if unavailable:
                return reply
        self._apply(agent, reply, now)
        return reply

    def _apply(self, agent: AgentState, reply: Reply, now: float) -> None:
        if not agent.connected:
            agent.connected = True
            agent.failures = 0
            self.stats.agent_connected(now)
        if reply.report_full_state:
            agent.need_full_state = True
            self.stats.full_state_requests += 1
        offered = reply.heartbeat_s
        if offered is not None and self.config.heartbeat is None and offered != agent.heartbeat:
            agent.heartbeat = offered
            self.start_beating(agent)
        if reply.remote_config is not None:
            agent.config_hash, agent.config = reply.remote_config[0], self._share(reply)
            agent.report_config = True
        if reply.new_instance_uid is not None and reply.new_instance_uid != agent.uid:
            agent.uid = reply.new_instance_uid
            agent.need_full_state = True  # service.instance.id changed with it

    def _share(self, reply: Reply) -> AgentConfigMap:
        """One copy per distinct remote config, so a fleet-wide config costs memory once."""
        assert reply.remote_config is not None
        config_hash, offered = reply.remote_config
        shared = self._configs.get(config_hash)
        if shared is None:
            shared = AgentConfigMap()
            shared.CopyFrom(offered)  # detach from the parsed ServerToAgent
            if len(self._configs) < _SHARED_CONFIGS:
                self._configs[config_hash] = shared
        return shared

    # -- failures and connection state
    def failed(
        self,
        agent: AgentState,
        kind: str,
        *,
        detail: str = "",
        retry_after: float | None = None,
        backoff: bool = True,
    ) -> None:
        """Count an error; with `backoff`, hold the agent back before it tries again."""
        first = kind not in self.stats.errors
        self.stats.error(kind)
        if first:
            log.warning(
                "agent %s (%s): %s%s; further %s errors are only counted",
                self.uid_text(agent),
                self.config.effective_transport,
                kind,
                f" ({detail})" if detail else "",
                kind,
            )
        if backoff:
            agent.failures += 1
            delay = retry_after
            if delay is None:
                delay = self.backoff.delay(agent.failures, self.rng)
            agent.not_before = max(agent.not_before, self.now() + delay)

    def lost(self, agent: AgentState) -> None:
        """The connection is gone (or an HTTP exchange failed): next time, tell everything."""
        if agent.connected:
            agent.connected = False
            self.stats.agent_disconnected()
        agent.sent_at = 0.0
        agent.need_full_state = True

    def churn(self, agent: AgentState) -> None:
        """Mark the agent as leaving; it comes back after a jittered churn delay."""
        agent.mode = Mode.CHURNING
        delay = self.config.churn_delay * self.rng.uniform(0.5, 1.5)
        agent.not_before = self.now() + delay
        self.stats.churn_disconnects += 1

    def silence(self, agent: AgentState) -> None:
        """Stop the agent sending from now on; the connection stays open."""
        agent.mode = Mode.SILENT
        agent.silent_at = self.now()
        if self.config.silent_freeze and agent.conn is not None:
            # Stop reading too: pings go unanswered, as with a frozen process.
            agent.conn.transport.pause_reading()

    async def sleep_until(self, deadline: float) -> None:
        delay = deadline - self.now()
        if delay > 0:
            await asyncio.sleep(delay)
