"""Simulated agents over plain HTTP: each agent POSTs and reads the reply, on one shared pool.

OpAMP over HTTP is a poll: every request carries an AgentToServer and its
response a ServerToAgent. An agent "is connected" from its first good reply
until an exchange fails or it says goodbye.
"""

from __future__ import annotations

from typing import Final

import aiohttp

from opamp_operator.backoff import parse_retry_after
from opamp_operator.simulator.agent import AgentLogic, AgentState, Mode
from opamp_operator.simulator.wire import Reply

CONTENT_TYPE: Final = "application/x-protobuf"
_USER_AGENT: Final = "opamp-operator-simulator"


def new_session(logic: AgentLogic) -> aiohttp.ClientSession:
    """The one session every HTTP agent shares; the pool bounds open connections."""
    config = logic.config
    connector = aiohttp.TCPConnector(limit=config.http_connections, limit_per_host=0)
    # The total timeout includes waiting for a pooled connection, which can be
    # long when agents outnumber the pool; connecting itself is bounded separately.
    timeout = aiohttp.ClientTimeout(
        total=config.connect_timeout + max(config.heartbeat or 0.0, 30.0),
        sock_connect=config.connect_timeout,
    )
    headers = {"Content-Type": CONTENT_TYPE, "User-Agent": _USER_AGENT}
    if config.token is not None:
        headers["Authorization"] = f"Bearer {config.token}"
    # trust_env stays False: the target is loopback, never route it through a proxy.
    return aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers)


async def run_http_agent(
    logic: AgentLogic, agent: AgentState, session: aiohttp.ClientSession
) -> None:
    """Poll at the heartbeat interval until the run stops; back off on failures."""
    follow_up = False
    regular = False  # the coming wake-up is a scheduled poll (for lateness)
    while True:
        due = agent.not_before
        await logic.sleep_until(due)
        if agent.mode is Mode.CHURNING:
            agent.mode = Mode.RUNNING
            logic.stats.reconnects += 1
            regular = False
        elif agent.mode is not Mode.RUNNING:
            break
        if regular:
            logic.heartbeat_fired(agent, due)
        reply = await exchange(logic, agent, session, follow_up=follow_up)
        if agent.mode is not Mode.RUNNING:
            continue  # changed while the request was out; the loop top sorts it out
        follow_up = reply is not None and reply.error is None and logic.wants_follow_up(agent)
        if reply is None or follow_up:
            regular = False
            continue
        if not regular:  # first poll, a follow-up or a retry: the clock starts now
            logic.start_beating(agent)
        regular = True
        agent.not_before = max(agent.not_before, agent.next_beat)
    if agent.mode is Mode.SILENT:
        await logic.stopping.wait()  # nothing to hold open: just stop polling


async def exchange(
    logic: AgentLogic,
    agent: AgentState,
    session: aiohttp.ClientSession,
    *,
    follow_up: bool = False,
) -> Reply | None:
    """POST the agent's next message; apply the reply. None when the exchange failed."""
    body = logic.compose(agent, follow_up=follow_up)
    at = logic.now()
    outcome = await post(logic, agent, session, body)
    if outcome is None:
        return None
    logic.sent(agent, at)
    status, payload, retry_after = outcome
    if status != 200:
        logic.lost(agent)
        retry = parse_retry_after(retry_after, logic.wall())
        logic.failed(agent, f"http_{status}", retry_after=retry)
        return None
    reply = logic.received(agent, payload)
    if reply is None or reply.error == "server_unavailable":
        logic.lost(agent)
    return reply


async def post(
    logic: AgentLogic, agent: AgentState, session: aiohttp.ClientSession, body: bytes
) -> tuple[int, bytes, str | None] | None:
    """(status, body, Retry-After) of one POST; None after a transport failure (counted)."""
    try:
        async with session.post(logic.config.effective_url, data=body) as response:
            payload = await response.read()
            return response.status, payload, response.headers.get("Retry-After")
    except TimeoutError as exc:
        kind, detail = "timeout", str(exc)
    except aiohttp.ClientConnectorError as exc:
        refused = isinstance(exc.os_error, ConnectionRefusedError)
        kind, detail = ("connect_refused" if refused else "connect_error"), str(exc)
    except aiohttp.ServerDisconnectedError as exc:
        kind, detail = "server_disconnected", str(exc)
    except aiohttp.ClientError as exc:
        kind, detail = "http_client_error", f"{type(exc).__name__}: {exc}"
    logic.lost(agent)
    logic.failed(agent, kind, detail=detail)
    return None


async def goodbye(logic: AgentLogic, agent: AgentState, session: aiohttp.ClientSession) -> None:
    """POST an AgentDisconnect (called by the controller for churn and stop)."""
    at = logic.now()
    outcome = await post(logic, agent, session, logic.compose_disconnect(agent))
    if outcome is not None:
        logic.sent(agent, at, expect_reply=False)
    logic.lost(agent)
