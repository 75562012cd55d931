"""Simulated agents over WebSocket: one coroutine per agent, no extra tasks.

An agent waits for the server's next message with a deadline at its next
heartbeat (asyncio.timeout_at, which needs no helper task), so a connection
costs one task and one websockets connection. The run's controller acts on a
connected agent directly (goodbye, close, pause reading) instead of waking it.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from opamp_operator.backoff import parse_retry_after
from opamp_operator.opamp.errors import FrameError
from opamp_operator.opamp.frames import decode_ws_frame, encode_ws_frame
from opamp_operator.simulator.agent import AgentLogic, AgentState, Mode

#: Largest server message accepted (a big remote config fits).
_MAX_MESSAGE_BYTES: Final = 4 * 1024 * 1024
#: Seconds to wait for the server's close frame.
_CLOSE_TIMEOUT_S: Final = 2.0
_USER_AGENT: Final = "opamp-operator-simulator"


def connect_options(logic: AgentLogic) -> dict[str, Any]:
    """Arguments for websockets' connect(), tuned for thousands of idle connections."""
    headers = {}
    if logic.config.token is not None:
        headers["Authorization"] = f"Bearer {logic.config.token}"
    return {
        "additional_headers": headers,
        "user_agent_header": _USER_AGENT,
        "compression": None,  # deflate costs ~100 KiB of zlib state per connection
        "proxy": None,  # the target is loopback; never route it through a proxy
        "open_timeout": logic.config.connect_timeout,
        "ping_interval": None,  # OpAMP heartbeats are the liveness signal
        "close_timeout": _CLOSE_TIMEOUT_S,
        "max_size": _MAX_MESSAGE_BYTES,
        "max_queue": 4,
    }


async def run_ws_agent(logic: AgentLogic, agent: AgentState) -> None:
    """Connect, report, heartbeat; reconnect with backoff until the run stops."""
    options = connect_options(logic)
    first = True
    while True:
        await logic.sleep_until(agent.not_before)
        if agent.mode is Mode.CHURNING:
            agent.mode = Mode.RUNNING
        elif agent.mode is not Mode.RUNNING:
            return
        if not first:
            logic.stats.reconnects += 1
        first = False
        await _connection(logic, agent, options)
        if agent.mode in (Mode.SILENT, Mode.STOPPING):
            return  # a silent agent never comes back; a stopped run is over


async def _connection(logic: AgentLogic, agent: AgentState, options: dict[str, Any]) -> None:
    """One connection from dial to close; every failure is counted and backed off."""
    try:
        async with connect(logic.config.effective_url, **options) as ws:
            agent.conn = ws
            await _session(logic, agent, ws)
    except InvalidStatus as exc:
        response = exc.response
        retry = parse_retry_after(response.headers.get("Retry-After"), logic.wall())
        logic.failed(agent, f"ws_http_{response.status_code}", detail=str(exc), retry_after=retry)
    except ConnectionClosed as exc:
        _closed(logic, agent, exc)
    except InvalidHandshake as exc:
        logic.failed(agent, "ws_handshake", detail=str(exc))
    except ConnectionRefusedError as exc:
        logic.failed(agent, "connect_refused", detail=str(exc))
    except TimeoutError as exc:
        logic.failed(agent, "connect_timeout", detail=str(exc))
    except OSError as exc:
        logic.failed(agent, "connect_error", detail=f"{type(exc).__name__}: {exc}")
    finally:
        agent.conn = None
        logic.lost(agent)


def _closed(logic: AgentLogic, agent: AgentState, exc: ConnectionClosed) -> None:
    if agent.mode is Mode.SILENT:
        if not logic.stopping.is_set():
            agent.closed_at = logic.now()
        return
    if agent.mode is not Mode.RUNNING:
        return  # we closed it: churn or the end of the run
    by_server = exc.rcvd is not None
    kind = "closed_by_server" if by_server else "connection_lost"
    logic.failed(agent, kind, detail=str(exc))


async def _session(logic: AgentLogic, agent: AgentState, ws: ClientConnection) -> None:
    agent.need_full_state = True  # a new connection starts with everything
    await send(logic, agent, ws)
    logic.start_beating(agent)
    while agent.mode is Mode.RUNNING:
        due = logic.heartbeat_due(agent)
        try:
            async with asyncio.timeout_at(due):
                frame = await ws.recv(decode=False)
        except TimeoutError:
            if agent.mode is Mode.RUNNING and due is not None:
                logic.heartbeat_fired(agent, due)
                await send(logic, agent, ws)
            continue
        try:
            payload = decode_ws_frame(frame)
        except FrameError as exc:
            logic.failed(agent, exc.reason, detail=str(exc), backoff=False)
            continue
        reply = logic.received(agent, payload)
        if reply is not None and reply.error == "server_unavailable":
            return  # closing now; received() set when to come back
        if agent.mode is Mode.RUNNING and logic.wants_follow_up(agent):
            await send(logic, agent, ws, follow_up=True)
    if agent.mode is Mode.SILENT:
        await _stay_silent(logic, agent, ws)


async def _stay_silent(logic: AgentLogic, agent: AgentState, ws: ClientConnection) -> None:
    """Send nothing more. Unless frozen, keep reading so WebSocket pings still get pongs."""
    if logic.config.silent_freeze:
        await logic.stopping.wait()
        return
    while True:
        await ws.recv(decode=False)  # dropped: a silent agent does not act on anything


async def send(
    logic: AgentLogic, agent: AgentState, ws: ClientConnection, *, follow_up: bool = False
) -> None:
    payload = logic.compose(agent, follow_up=follow_up)
    at = logic.now()
    await ws.send(encode_ws_frame(payload))
    logic.sent(agent, at)


async def goodbye(logic: AgentLogic, agent: AgentState, ws: ClientConnection) -> None:
    """AgentDisconnect, then a clean close (called by the controller for churn and stop)."""
    try:
        payload = logic.compose_disconnect(agent)
        at = logic.now()
        await ws.send(encode_ws_frame(payload))
        logic.sent(agent, at, expect_reply=False)
        await ws.close()
    except ConnectionClosed:
        pass  # already gone: the agent's own loop counts that
