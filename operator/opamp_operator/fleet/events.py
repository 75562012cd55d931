"""Transition events and the bus that fans them out to subscribers (store, kube, metrics).

Publishing never blocks the OpAMP hot path: each subscriber has its own bounded queue; when
one is full the event is dropped for that subscriber only, counted, logged, and the
subscription is flagged so the subscriber can resynchronise from the registry.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime

from .model import AgentPhase, Transport

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SessionOpened:
    agent_id: str
    session_id: str
    transport: Transport
    remote_addr: str
    at: datetime


@dataclass(frozen=True, slots=True)
class SessionClosed:
    agent_id: str
    session_id: str
    transport: Transport
    remote_addr: str
    connected_at: datetime
    at: datetime
    reason: str

    @property
    def duration_seconds(self) -> float:
        return max(0.0, (self.at - self.connected_at).total_seconds())


@dataclass(frozen=True, slots=True)
class PhaseChanged:
    agent_id: str
    previous: AgentPhase | None
    current: AgentPhase
    reason: str
    at: datetime
    # The agent's last message before the change: for a heartbeat timeout, `at` minus this
    # is how long the fleet took to notice the silence (timeout + how late it fired).
    last_seen_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class AgentChanged:
    """Something an agent reports changed (description, health, config...): not a heartbeat."""

    agent_id: str
    at: datetime
    fields: frozenset[str]


@dataclass(frozen=True, slots=True)
class AgentForgotten:
    """The fleet dropped a long-gone agent from memory (its CR and stored rows stay)."""

    agent_id: str
    at: datetime


FleetEvent = SessionOpened | SessionClosed | PhaseChanged | AgentChanged | AgentForgotten


class Subscription:
    """One subscriber's bounded queue of events."""

    def __init__(self, name: str, maxsize: int) -> None:
        self.name = name
        self._queue: asyncio.Queue[FleetEvent] = asyncio.Queue(maxsize=maxsize)
        self.dropped = 0
        self.needs_resync = False

    def offer(self, event: FleetEvent) -> bool:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            self.needs_resync = True
            return False
        return True

    async def get(self) -> FleetEvent:
        return await self._queue.get()

    def get_nowait(self) -> FleetEvent | None:
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None

    def depth(self) -> int:
        return self._queue.qsize()


class EventBus:
    def __init__(self) -> None:
        self._subscriptions: list[Subscription] = []

    def subscribe(self, name: str, maxsize: int = 100_000) -> Subscription:
        subscription = Subscription(name, maxsize)
        self._subscriptions.append(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.remove(subscription)

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        return tuple(self._subscriptions)

    def publish(self, event: FleetEvent) -> None:
        for subscription in self._subscriptions:
            if not subscription.offer(event) and subscription.dropped in (1, 10, 100, 1000):
                log.error(
                    "event queue of %s is full: dropped %d events so far (latest %s for %s)",
                    subscription.name,
                    subscription.dropped,
                    type(event).__name__,
                    event.agent_id,
                )
