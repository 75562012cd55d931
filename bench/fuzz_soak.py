"""Long fuzzing runs, for minutes or hours (the test suite runs the bounded version).

1. Properties: tests/unit/test_fuzz_handlers.py (messages built from the AgentToServer
   descriptor through the fleet and every view of it; the decode paths), in rounds of
   FUZZ_EXAMPLES examples with a new hypothesis seed each round, until half the time is up.
2. Wire: the real OpAMP listener over a real fleet, in this process, on loopback, fed
   mutated and random input over real sockets: WebSocket frames (valid, bit-flipped,
   truncated, spliced, random, text, oversized), HTTP bodies (random, mutated, bad gzip,
   wrong content types) and request heads of random bytes. Every 50 actions a well-behaved
   WebSocket and HTTP agent must still get correct replies.

Fails (exit 1) on a property failure, on any ERROR logged by the operator's code (a handler
that crashed), or when a well-behaved agent is not served. Loopback only; every action is
bounded by timeouts.

    .venv/bin/python bench/fuzz_soak.py --minutes 30 [--seed 7] [--examples 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import logging
import os
import random
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import aiohttp
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from opamp_operator.config import WEBSOCKET_FRAMINGS, FleetSettings, ListenerSettings
from opamp_operator.fleet.clock import SystemClock
from opamp_operator.fleet.events import EventBus
from opamp_operator.fleet.registry import Fleet
from opamp_operator.fleet.ticker import run_deadline_ticker
from opamp_operator.opamp.frames import decode_ws_frame, encode_ws_frame
from opamp_operator.opamp.messages import AgentToServer, parse_server_to_agent
from opamp_operator.transport import OpAMPListener

REPO = Path(__file__).resolve().parents[1]
PROPERTIES = REPO / "tests" / "unit" / "test_fuzz_handlers.py"
MAX_MESSAGE = 64 * 1024
PROTOBUF = "application/x-protobuf"


# -- 1. the properties ----------------------------------------------------------------------


def soak_properties(deadline: float, examples: int, rng: random.Random) -> bool:
    rounds = 0
    while time.monotonic() < deadline:
        seed = rng.randrange(2**32)
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(PROPERTIES),
             f"--hypothesis-seed={seed}"],
            env={**os.environ, "FUZZ_EXAMPLES": str(examples)}, cwd=REPO,
            capture_output=True, text=True,
        )  # fmt: skip
        rounds += 1
        if result.returncode != 0:
            print(f"properties: FAILED in round {rounds} (seed {seed}):\n{result.stdout[-6000:]}")
            return False
        print(f"properties: round {rounds} passed ({examples} examples per test, seed {seed})")
    return True


# -- 2. the wire ----------------------------------------------------------------------------


class ErrorCounter(logging.Handler):
    """Records at ERROR or above from the operator's own loggers (a crashed handler)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("opamp_operator"):
            self.records.append(record)


def seed_messages(rng: random.Random) -> list[bytes]:
    """A few realistic AgentToServer encodings to mutate."""
    seeds = []
    for n in range(4):
        message = AgentToServer(instance_uid=uuid.UUID(int=rng.getrandbits(128)).bytes)
        message.sequence_num = n
        message.capabilities = rng.getrandbits(16)
        description = message.agent_description
        for key in ("service.name", "service.version", "host.name"):
            description.identifying_attributes.add(key=key).value.string_value = f"v{n}"
        message.health.healthy = bool(n % 2)
        message.health.component_health_map["c"].status = "ok"
        message.remote_config_status.status = n  # type: ignore[assignment]
        message.effective_config.config_map.config_map["f"].body = b"x" * n
        if n == 3:
            message.agent_disconnect.SetInParent()
        seeds.append(message.SerializeToString())
    return seeds


def mutate(data: bytes, rng: random.Random, seeds: list[bytes]) -> bytes:
    buffer = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.randrange(6)
        if choice == 0 and buffer:  # flip bits
            buffer[rng.randrange(len(buffer))] ^= 1 << rng.randrange(8)
        elif choice == 1 and buffer:  # truncate
            del buffer[rng.randrange(len(buffer)) :]
        elif choice == 2:  # insert random bytes
            at = rng.randrange(len(buffer) + 1)
            buffer[at:at] = rng.randbytes(rng.randint(1, 16))
        elif choice == 3 and seeds:  # splice another message in
            other = rng.choice(seeds)
            at = rng.randrange(len(buffer) + 1)
            buffer[at:at] = other[: rng.randrange(len(other) + 1)]
        elif choice == 4 and buffer:  # an interesting byte
            buffer[rng.randrange(len(buffer))] = rng.choice([0x00, 0x7F, 0x80, 0xFF, 0x0A, 0x12])
        else:  # a huge varint length
            at = rng.randrange(len(buffer) + 1)
            buffer[at:at] = b"\x0a\xff\xff\xff\xff\x0f"
    return bytes(buffer)


def payload(rng: random.Random, seeds: list[bytes]) -> bytes:
    kind = rng.randrange(4)
    if kind == 0:
        return rng.choice(seeds)
    if kind == 1:
        return rng.randbytes(rng.randint(0, 256))
    return mutate(rng.choice(seeds), rng, seeds)


class Wire:
    def __init__(self, listener: OpAMPListener, rng: random.Random) -> None:
        self.port = listener.port
        self.rng = rng
        self.seeds = seed_messages(rng)
        self.outcomes: Counter[str] = Counter()
        self.ws_url = f"ws://127.0.0.1:{self.port}/v1/opamp"
        self.http_url = f"http://127.0.0.1:{self.port}/v1/opamp"

    async def websocket(self) -> None:
        rng = self.rng
        try:
            async with connect(self.ws_url, max_size=None, open_timeout=5, close_timeout=2) as ws:
                for _ in range(rng.randint(1, 5)):
                    kind = rng.randrange(10)
                    if kind == 0:
                        await ws.send("text " + rng.randbytes(8).hex())
                    elif kind == 1:
                        await ws.send(rng.randbytes(MAX_MESSAGE + rng.randint(1, 100)))
                    elif kind == 2:
                        await ws.send(mutate(encode_ws_frame(rng.choice(self.seeds)), rng, []))
                    else:
                        await ws.send(encode_ws_frame(payload(rng, self.seeds)))
                    reply = await asyncio.wait_for(ws.recv(), timeout=2)
                    if isinstance(reply, bytes):
                        parse_server_to_agent(decode_ws_frame(reply))  # must be well-formed
                        self.outcomes["ws reply"] += 1
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd else "none"
            self.outcomes[f"ws closed {code}"] += 1
        except TimeoutError:
            self.outcomes["ws no reply (e.g. after AgentDisconnect)"] += 1
        except InvalidHandshake as error:
            self.outcomes[f"ws refused {type(error).__name__}"] += 1

    async def http(self, session: aiohttp.ClientSession) -> None:
        rng = self.rng
        body = payload(rng, self.seeds)
        headers = {"Content-Type": rng.choice([PROTOBUF] * 4 + ["text/plain", "", "a/b"])}
        kind = rng.randrange(4)
        if kind == 0:
            body, headers["Content-Encoding"] = gzip.compress(body), "gzip"
        elif kind == 1:
            body, headers["Content-Encoding"] = mutate(gzip.compress(body), rng, []), "gzip"
        try:
            timeout = aiohttp.ClientTimeout(total=5)
            async with session.post(self.http_url, data=body, headers=headers,
                                    timeout=timeout) as response:  # fmt: skip
                data = await response.read()
                if response.status == 200:
                    parse_server_to_agent(data)
                self.outcomes[f"http {response.status}"] += 1
        except aiohttp.ClientError as error:
            self.outcomes[f"http {type(error).__name__}"] += 1

    async def raw_head(self) -> None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            writer.write(self.rng.randbytes(self.rng.randint(1, 600)) + b"\r\n\r\n")
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(64), timeout=5)
            self.outcomes[f"raw {answer[:12]!r}"] += 1
            writer.close()
        except (ConnectionError, TimeoutError) as error:
            self.outcomes[f"raw {type(error).__name__}"] += 1

    async def good_agents(self, session: aiohttp.ClientSession) -> None:
        """A well-behaved agent over each transport gets its reply."""
        uid = uuid.uuid4().bytes
        hello = AgentToServer(instance_uid=uid).SerializeToString()
        async with connect(self.ws_url, open_timeout=5) as ws:
            await ws.send(encode_ws_frame(hello))
            data = await asyncio.wait_for(ws.recv(decode=False), 5)
            reply = parse_server_to_agent(decode_ws_frame(data))
            assert reply.instance_uid == uid and not reply.HasField("error_response"), reply
        timeout = aiohttp.ClientTimeout(total=5)
        async with session.post(self.http_url, data=hello, headers={"Content-Type": PROTOBUF},
                                timeout=timeout) as response:  # fmt: skip
            assert response.status == 200, response.status
            reply = parse_server_to_agent(await response.read())
            assert reply.instance_uid == uid, reply


async def soak_wire(deadline: float, rng: random.Random, framing: str = "websockets") -> bool:
    errors = ErrorCounter()
    logging.getLogger().addHandler(errors)
    fleet = Fleet(FleetSettings(1, 3, max_agents=100_000, registrations_per_second=10_000,
                                registration_burst=10_000), SystemClock(), EventBus())  # fmt: skip
    settings = ListenerSettings(host="127.0.0.1", port=0, max_message_bytes=MAX_MESSAGE,
                                handshake_timeout_seconds=2, close_timeout_seconds=1,
                                websocket_framing=framing)  # fmt: skip
    listener = OpAMPListener(settings, fleet)
    await listener.start()
    ticker = asyncio.create_task(run_deadline_ticker(fleet))
    wire = Wire(listener, rng)
    actions, ok = 0, True
    try:
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                batch = [
                    a
                    for _ in range(5)
                    for a in (wire.websocket(), wire.http(session), wire.raw_head())
                ]
                await asyncio.gather(*batch)
                actions += len(batch)
                try:
                    await wire.good_agents(session)
                except (AssertionError, ConnectionClosed, TimeoutError, aiohttp.ClientError) as e:
                    print(
                        f"wire: a well-behaved agent was not served after {actions} actions: {e!r}"
                    )
                    ok = False
                    break
                if actions % 1500 == 0:
                    errs = len(errors.records)
                    print(f"wire: {actions} actions, {len(fleet)} agents, {errs} errors")
    finally:
        ticker.cancel()
        await listener.stop()
        logging.getLogger().removeHandler(errors)
    print(f"wire: {actions} actions; outcomes:")
    for outcome, count in wire.outcomes.most_common():
        print(f"  {count:8d}  {outcome}")
    for record in errors.records[:10]:
        print(f"wire: ERROR logged: {record.name}: {record.getMessage()}")
    return ok and not errors.records


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--examples", type=int, default=2000, help="hypothesis examples per round")
    parser.add_argument("--websocket-framing", choices=WEBSOCKET_FRAMINGS, default="own")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    print(f"fuzz soak: {args.minutes:g} minutes, seed {seed}, {args.websocket_framing} framing")
    rng = random.Random(seed)
    logging.basicConfig(level=logging.ERROR)  # the refusals' warnings are expected noise
    started = time.monotonic()
    half = started + args.minutes * 30
    properties_ok = soak_properties(half, args.examples, rng)
    wire_ok = asyncio.run(soak_wire(started + args.minutes * 60, rng, args.websocket_framing))
    print(f"fuzz soak: {'PASSED' if properties_ok and wire_ok else 'FAILED'} "
          f"after {time.monotonic() - started:.0f}s (seed {seed})")  # fmt: skip
    return 0 if properties_ok and wire_ok else 1


if __name__ == "__main__":
    sys.exit(main())
