"""A Fleet fed by fake channels with real AgentToServer messages (REST API tests and bench)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from opamp_operator.api.auth import AuthDecision, AuthUnavailable
from opamp_operator.api.server import ApiServer
from opamp_operator.config import ApiSettings, FleetSettings
from opamp_operator.fleet.clock import FakeClock
from opamp_operator.fleet.events import EventBus
from opamp_operator.fleet.registry import Fleet
from opamp_operator.opamp.messages import AgentToServer
from tests.support.fake_agents import FakeChannel, heartbeat, hello, new_agent_id

__all__ = [
    "FakeAuthorizer",
    "FakeChannel",
    "api_settings",
    "disconnect",
    "heartbeat",
    "hello",
    "make_fleet",
    "new_agent_id",
    "serving",
    "visit",
]


def make_fleet(
    clock: FakeClock | None = None, settings: FleetSettings | None = None
) -> tuple[Fleet, FakeClock, EventBus]:
    clock = clock or FakeClock()
    bus = EventBus()
    settings = settings or FleetSettings(registrations_per_second=1e9, registration_burst=10**9)
    return Fleet(settings, clock, bus), clock, bus


def disconnect(agent_id: str, sequence_num: int) -> AgentToServer:
    message = heartbeat(agent_id, sequence_num)
    message.agent_disconnect.SetInParent()
    return message


class FakeAuthorizer:
    """Answers from a table of token -> verbs allowed; unknown tokens get 401."""

    def __init__(self, grants: dict[str, set[str]]) -> None:
        self.grants = grants
        self.calls: list[tuple[str, str]] = []
        self.unavailable = False

    async def authorize(self, token: str, verb: str) -> AuthDecision:
        self.calls.append((token, verb))
        if self.unavailable:
            raise AuthUnavailable("kube-apiserver unreachable")
        if token not in self.grants:
            return AuthDecision(401, None, "unknown token")
        if verb not in self.grants[token]:
            return AuthDecision(403, "someone", f"may not {verb}")
        return AuthDecision(200, "someone", "")


@asynccontextmanager
async def serving(server: ApiServer) -> AsyncIterator[aiohttp.ClientSession]:
    """Start `server` on a free loopback port; yield a client session pointed at it."""
    await server.start()
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{server.port}") as session:
            yield session
    finally:
        await server.stop()


def api_settings(**overrides: Any) -> ApiSettings:
    return ApiSettings(**{"host": "127.0.0.1", "port": 0, **overrides})


def visit(fleet: Fleet, agent_id: str, clock: FakeClock | None = None, stay: float = 0) -> None:
    """An agent connects over a WebSocket, stays `stay` seconds, and says goodbye."""
    channel = FakeChannel()
    fleet.handle_message(channel, hello(agent_id))
    if clock is not None:
        clock.advance(stay)
    fleet.handle_message(channel, disconnect(agent_id, 1))
