"""WebSocket servers on the two libraries: websockets (the operator's) and aiohttp.

Both loops yield once per message (`asyncio.sleep(0)`) as the operator's does
(transport/websocket.py `_receive`): a client sending as fast as it can must not hold the
loop, and the benchmark should charge each library the loop the operator would run on it.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import WSCloseCode, WSMsgType, web
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from .answer import answer_ws
from .running import MAX_MESSAGE_BYTES, PATH, Running, bound_port


async def websockets_server(host: str, port: int) -> Running:
    """Configured as the operator's connections are (transport/websocket.py `new_connection`):
    no compression, max_queue 4, the same max_size, no Server header. No pings: the operator
    does not ping agents while they heartbeat (`quiet_seconds`)."""
    server = await serve(
        _websockets_session, host, port,
        compression=None, max_size=MAX_MESSAGE_BYTES, max_queue=4,
        ping_interval=None, close_timeout=5.0, server_header=None,
        logger=logging.getLogger("websockets.quiet"),
    )  # fmt: skip

    async def stop() -> None:
        server.close()

    return Running(bound_port(server.server), stop)


async def _websockets_session(connection: ServerConnection) -> None:
    try:
        while True:
            data = await connection.recv(decode=False)
            await connection.send(answer_ws(data))
            await asyncio.sleep(0)
    except ConnectionClosed:
        pass


async def aiohttp_ws_server(host: str, port: int) -> Running:
    """aiohttp's low-level server (no router) with a WebSocketResponse per connection."""
    server = web.Server(_aiohttp_session, access_log=None)
    listening = await asyncio.get_running_loop().create_server(server, host, port)

    async def stop() -> None:
        listening.close()
        await server.shutdown(1.0)

    return Running(bound_port(listening), stop)


async def _aiohttp_session(request: web.BaseRequest) -> web.StreamResponse:
    if request.path != PATH:
        return web.Response(status=404)
    ws = web.WebSocketResponse(compress=False, max_msg_size=MAX_MESSAGE_BYTES, autoping=True)
    await ws.prepare(request)
    while True:
        msg = await ws.receive()
        if msg.type is WSMsgType.BINARY:
            await ws.send_bytes(answer_ws(msg.data))
            await asyncio.sleep(0)
        elif msg.type is WSMsgType.TEXT:
            await ws.close(code=WSCloseCode.UNSUPPORTED_DATA)
            break
        else:  # CLOSE, CLOSING, CLOSED, ERROR
            break
    return ws
