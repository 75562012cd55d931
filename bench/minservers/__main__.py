"""Run one minimal server: `python -m minservers VARIANT [--loop uvloop] [--port N]`.

Prints JSON lines on stdout: `listening` (with the port) once bound, `count` (messages
answered so far) at each SIGUSR1, `stopped` at SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import signal
from collections.abc import Awaitable, Callable

from .answer import Counter
from .http_servers import aiohttp_http_server, own_http_server
from .rfc6455 import own_ws_server
from .running import Running
from .ws_libs import aiohttp_ws_server, websockets_server

VARIANTS: dict[str, Callable[[str, int], Awaitable[Running]]] = {
    "ws-websockets": websockets_server,
    "ws-aiohttp": aiohttp_ws_server,
    "ws-own": own_ws_server,
    "http-aiohttp": aiohttp_http_server,
    "http-own": own_http_server,
}


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


async def serve(variant: str, host: str, port: int) -> None:
    running = await VARIANTS[variant](host, port)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, lambda: emit("count", messages=Counter.messages))
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    emit("listening", port=running.port, loop=type(loop).__module__)
    await stopping.wait()
    await running.stop()
    emit("stopped", messages=Counter.messages)


def main() -> None:
    parser = argparse.ArgumentParser(prog="minservers")
    parser.add_argument("variant", choices=sorted(VARIANTS))
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    coroutine = serve(args.variant, args.host, args.port)
    if args.loop == "uvloop":
        # Imported by name: uvloop is not a dependency (bench/run-framing finds it).
        importlib.import_module("uvloop").run(coroutine)
    else:
        asyncio.run(coroutine)


if __name__ == "__main__":
    main()
