"""How simulated agents react to server behaviour the reference peer never shows.

A small aiohttp server on 127.0.0.1 decodes the agents' real frames and
answers as each test scripts it: Unavailable with RetryInfo, 503 with
Retry-After, a heartbeat interval offer, ReportFullState, WebSocket pings, and
closing idle connections. It records when each message arrived (monotonic,
the same clock the simulator reports in).
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import WSMsgType, web

from opamp_operator.opamp.frames import decode_ws_frame, encode_ws_frame
from opamp_operator.opamp.generated import opamp_pb2
from opamp_operator.opamp.generated.opamp_pb2 import (
    AgentToServer,
    ConnectionSettingsOffers,
    OpAMPConnectionSettings,
    ServerToAgent,
)
from opamp_operator.opamp.messages import error_response, parse_agent_to_server
from opamp_operator.simulator import SimulationConfig, SimulationReport, run_simulation

pytestmark = pytest.mark.integration

#: (message, how many messages this agent sent before it) -> the reply.
Responder = Callable[[AgentToServer, int], ServerToAgent]


def plain(message: AgentToServer, count: int) -> ServerToAgent:
    return ServerToAgent(instance_uid=message.instance_uid)


@dataclass
class Arrival:
    at: float  # time.monotonic()
    transport: str
    message: AgentToServer


@dataclass
class ScriptedServer:
    respond: Responder = plain
    #: The first this-many requests / handshakes get 503 with Retry-After.
    reject_first: int = 0
    retry_after: str = "1"
    #: aiohttp's WebSocket ping interval (a missing pong closes the connection).
    ws_ping: float | None = None
    #: Close a WebSocket whose agent sent nothing for this long.
    idle_close: float | None = None
    arrivals: dict[str, list[Arrival]] = field(default_factory=lambda: defaultdict(list))
    #: uid -> when its WebSocket ended, and whether this server closed it.
    ended: dict[str, tuple[float, bool]] = field(default_factory=dict)
    rejected: int = 0
    port: int = 0

    def url(self, transport: str) -> str:
        return f"{transport}://127.0.0.1:{self.port}/v1/opamp"

    def _answer(self, payload: bytes, transport: str) -> bytes:
        message = parse_agent_to_server(payload)
        uid = str(uuid.UUID(bytes=message.instance_uid))
        seen = self.arrivals[uid]
        seen.append(Arrival(time.monotonic(), transport, message))
        return self.respond(message, len(seen) - 1).SerializeToString()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.rejected < self.reject_first:
            self.rejected += 1
            return web.Response(status=503, headers={"Retry-After": self.retry_after})
        if request.headers.get("Upgrade", "").lower() != "websocket":
            reply = self._answer(await request.read(), "http")
            return web.Response(body=reply, content_type="application/x-protobuf")
        ws = web.WebSocketResponse(heartbeat=self.ws_ping)
        await ws.prepare(request)
        uid, closed_here = "", False
        while True:
            try:
                msg = await ws.receive(timeout=self.idle_close)
            except TimeoutError:
                closed_here = True
                await ws.close()
                break
            if msg.type != WSMsgType.BINARY:
                closed_here = msg.type == WSMsgType.ERROR  # aiohttp: missed pong
                break
            payload = decode_ws_frame(msg.data)
            uid = str(uuid.UUID(bytes=parse_agent_to_server(payload).instance_uid))
            await ws.send_bytes(encode_ws_frame(self._answer(payload, "ws")))
        self.ended[uid] = (time.monotonic(), closed_here)
        return ws


Serve = Callable[[ScriptedServer], Awaitable[ScriptedServer]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start a ScriptedServer on 127.0.0.1 (a free port); stopped after the test."""
    runners: list[web.AppRunner] = []

    async def start(server: ScriptedServer) -> ScriptedServer:
        app = web.Application()
        app.router.add_route("*", "/v1/opamp", server.handle)
        runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        server.port = runner.addresses[0][1]
        return server

    yield start
    for runner in runners:
        await runner.cleanup()


def unavailable_first(message: AgentToServer, count: int) -> ServerToAgent:
    if count == 0:
        return error_response(
            message.instance_uid,
            opamp_pb2.ServerErrorResponseType_Unavailable,
            "warming up",
            retry_after_ns=1_000_000_000,
        )
    return plain(message, count)


@pytest.mark.parametrize("transport", ["ws", "http"])
async def test_unavailable_with_retry_info_is_waited_out(serve: Serve, transport: str) -> None:
    server = await serve(ScriptedServer(respond=unavailable_first))
    config = SimulationConfig(
        url=server.url(transport), agents=5, heartbeat=0.3, duration=2.5, ramp=0
    )
    report = await run_simulation(config)
    assert report.errors == {"server_unavailable": 5}
    assert report.peak_connected == 5
    assert report.reconnects == (5 if transport == "ws" else 0)  # ws: close, come back
    assert len(server.arrivals) == 5
    for arrivals in server.arrivals.values():
        waited = arrivals[1].at - arrivals[0].at
        assert 0.95 <= waited <= 1.5, f"retried after {waited:.2f}s, asked 1s"
        assert arrivals[1].message.HasField("agent_description")  # starts over in full


@pytest.mark.parametrize("transport", ["ws", "http"])
async def test_503_with_retry_after_is_waited_out(serve: Serve, transport: str) -> None:
    server = await serve(ScriptedServer(reject_first=4, retry_after="1"))
    config = SimulationConfig(
        url=server.url(transport), agents=4, heartbeat=0.5, duration=2.0, ramp=0
    )
    report = await run_simulation(config)
    kind = "ws_http_503" if transport == "ws" else "http_503"
    assert report.errors == {kind: 4}
    assert report.peak_connected == 4
    for arrivals in server.arrivals.values():
        assert arrivals[0].at - report.started_monotonic >= 0.95


def offer_one_second(message: AgentToServer, count: int) -> ServerToAgent:
    reply = plain(message, count)
    reply.connection_settings.CopyFrom(
        ConnectionSettingsOffers(opamp=OpAMPConnectionSettings(heartbeat_interval_seconds=1))
    )
    return reply


@pytest.mark.parametrize("transport", ["ws", "http"])
async def test_the_offered_heartbeat_interval_is_followed(serve: Serve, transport: str) -> None:
    server = await serve(ScriptedServer(respond=offer_one_second))
    # No --heartbeat: without the offer the agents would wait 30 s.
    config = SimulationConfig(url=server.url(transport), agents=3, duration=2.6, ramp=0)
    report = await run_simulation(config)
    assert report.errors == {}
    for arrivals in server.arrivals.values():
        beats = [a for a in arrivals if not a.message.HasField("agent_disconnect")]
        assert len(beats) == 3  # at 0, 1 and 2 s
        gaps = [b.at - a.at for a, b in itertools.pairwise(beats)]
        assert all(0.95 <= gap <= 1.3 for gap in gaps), gaps


def full_state_on_second(message: AgentToServer, count: int) -> ServerToAgent:
    reply = plain(message, count)
    if count == 1:
        reply.flags = int(opamp_pb2.ServerToAgentFlags_ReportFullState)
    return reply


@pytest.mark.parametrize("transport", ["ws", "http"])
async def test_report_full_state_gets_an_immediate_full_report(
    serve: Serve, transport: str
) -> None:
    server = await serve(ScriptedServer(respond=full_state_on_second))
    config = SimulationConfig(
        url=server.url(transport), agents=4, heartbeat=0.5, duration=1.8, ramp=0
    )
    report = await run_simulation(config)
    assert report.full_state_requests == 4
    for arrivals in server.arrivals.values():
        described = [a.message.HasField("agent_description") for a in arrivals]
        assert described[:4] == [True, False, True, False]
        assert arrivals[2].at - arrivals[1].at < 0.2  # answered at once, not at the heartbeat


async def silent_run(
    server: ScriptedServer, *, freeze: bool, duration: float = 2.5
) -> tuple[SimulationReport, float]:
    config = SimulationConfig(
        url=server.url("ws"), agents=4, heartbeat=0.2, duration=duration, ramp=0,
        silent_count=2, silent_after=0.5, silent_freeze=freeze, seed=4,
    )  # fmt: skip
    report = await run_simulation(config)
    return report, report.started_monotonic + duration


async def test_quiet_silent_agents_still_answer_pings(serve: Serve) -> None:
    server = await serve(ScriptedServer(ws_ping=0.3))
    report, load_end = await silent_run(server, freeze=False)
    assert len(report.silent) == 2
    for uid, (at, closed_here) in server.ended.items():
        assert at >= load_end and not closed_here, f"server dropped {uid}: pongs stopped"


async def test_frozen_silent_agents_miss_pings_and_get_dropped(serve: Serve) -> None:
    server = await serve(ScriptedServer(ws_ping=0.3))
    report, load_end = await silent_run(server, freeze=True)
    silent = {s.instance_uid: s for s in report.silent}
    assert len(silent) == 2
    for uid, (at, closed_here) in server.ended.items():
        if uid in silent:
            assert closed_here and at < load_end, f"frozen agent {uid} kept answering pings"
            assert at - silent[uid].went_silent_monotonic < 1.0
        else:
            assert at >= load_end and not closed_here


async def test_a_server_closing_a_silent_agent_is_reported(serve: Serve) -> None:
    server = await serve(ScriptedServer(idle_close=0.6))
    report, load_end = await silent_run(server, freeze=False)
    assert len(report.silent) == 2
    for record in report.silent:
        closed = record.server_closed_monotonic
        assert closed is not None and record.last_message_monotonic is not None
        idle = closed - record.last_message_monotonic
        assert 0.55 <= idle <= 1.0, f"closed {idle:.2f}s after its last message"
        assert closed < load_end
    assert report.errors == {}  # an idle close of a silent agent is expected, not an error
    assert report.reconnects == 0  # and a silent agent never comes back
