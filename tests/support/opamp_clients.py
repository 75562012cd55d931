"""The official Python OpAMP client (opentelemetry-opamp-client) as a subprocess.

Its generated `opamp.proto` module registers the same protobuf names as ours in the default
descriptor pool, so it never runs in the test process: `PythonAgent` starts this module's
`main` in a child interpreter, which prints one JSON object per line (same conventions as
the Go test agent, so `JsonLinesProcess.wait_for_event` works on it).

Child events: started (instance_uid hex), connected (first successful request, and the
first after a failure), connect_failed (error), message (every reply handed to the agent),
error (a ServerErrorResponse: type, error), stopping, stopped (disconnect_sent).

What the client puts on the wire (0.5b0, read in its source): every request is an HTTP POST
with Content-Type application/x-protobuf and requests' default Accept-Encoding (gzip);
`OpAMPAgent.start` sends a full state (description) first and heartbeats only after it
succeeded; `OpAMPAgent.stop` POSTs an AgentToServer with agent_disconnect set.

`opamp_server` runs our listener with a real Fleet (SystemClock) and its deadline ticker on
loopback for the tests. opamp_operator is imported inside functions only: the child imports
this module too and must never load our protobuf modules.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opamp_operator.fleet.model import AgentSnapshot
    from opamp_operator.fleet.registry import Fleet
    from opamp_operator.transport import OpAMPListener

from tests.support.goagent import REPO_ROOT, JsonLinesProcess
from tests.support.polling import eventually

# Run in the child with `python -c`: puts the repository on sys.path whatever the cwd.
_BOOTSTRAP = (
    f"import sys; sys.path.insert(0, {str(REPO_ROOT)!r}); "
    "from tests.support.opamp_clients import main; sys.exit(main(sys.argv[1:]))"
)


class PythonAgent(JsonLinesProcess):
    """opentelemetry-opamp-client's OpAMPAgent in a child interpreter (HTTP only)."""

    def __init__(self) -> None:
        super().__init__(Path(sys.executable))

    async def start(
        self,
        *,
        url: str,
        instance_uid: str | uuid.UUID | None = None,
        service_name: str = "python-agent",
        heartbeat: float = 30.0,
        token: str | None = None,
        request_timeout: float = 2.0,
        ca_file: Path | None = None,
        client_cert: tuple[Path, Path] | None = None,
        apply_remote_config: bool = False,
    ) -> None:
        """Spawn the client; returns once the process exists (wait for events after).

        `ca_file` verifies an https server; `client_cert` is (cert, key) for mTLS.
        `apply_remote_config`: report every remote config received APPLIED (FAILED when a
        file body contains REJECT, like the Go test agent), with a `remote_config` event.
        """
        uid = uuid.UUID(str(instance_uid)) if instance_uid is not None else uuid.uuid4()
        args = ["--url", url, "--instance-uid", uid.hex, "--service-name", service_name]
        args += ["--heartbeat", str(heartbeat), "--timeout", str(request_timeout)]
        if token is not None:
            args += ["--token", token]
        if ca_file is not None:
            args += ["--ca-file", str(ca_file)]
        if client_cert is not None:
            args += ["--client-cert", str(client_cert[0]), "--client-key", str(client_cert[1])]
        if apply_remote_config:
            args.append("--apply-remote-config")
        await self._spawn(["-c", _BOOTSTRAP, *args])

    async def stop(self, grace: float = 15.0) -> int:
        """SIGTERM: the child calls OpAMPAgent.stop (which sends AgentDisconnect) and exits."""
        return await self.terminate(grace)


# --------------------------------------------------------------------------- the server


@dataclass
class OpAMPServer:
    listener: OpAMPListener
    fleet: Fleet

    @property
    def scheme(self) -> str:
        return "https" if self.listener.settings.tls else "http"

    @property
    def http_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.listener.port}{self.listener.settings.path}"

    @property
    def ws_url(self) -> str:
        ws = "wss" if self.listener.settings.tls else "ws"
        return f"{ws}://127.0.0.1:{self.listener.port}{self.listener.settings.path}"

    def agent(self, instance_uid: str | uuid.UUID) -> AgentSnapshot | None:
        return self.fleet.get(str(uuid.UUID(str(instance_uid))))

    async def wait_for_agent(
        self,
        instance_uid: str | uuid.UUID,
        condition: Callable[[AgentSnapshot], bool],
        timeout: float = 10.0,  # noqa: ASYNC109 - the error message shows the last snapshot
    ) -> AgentSnapshot:
        """Poll the fleet until the agent exists and `condition` holds; return the snapshot."""
        last: list[AgentSnapshot | None] = [None]

        def matching() -> AgentSnapshot | None:
            last[0] = snapshot = self.agent(instance_uid)
            return snapshot if snapshot is not None and condition(snapshot) else None

        try:
            return await eventually(
                f"agent {instance_uid} to match", matching, within=timeout, every=0.02
            )
        except AssertionError as error:
            raise AssertionError(f"{error}; last snapshot: {last[0]}") from None


@asynccontextmanager
async def opamp_server(
    *,
    heartbeat: float = 1.0,
    heartbeat_timeout: float = 2.0,
    fleet_options: Mapping[str, Any] | None = None,
    **listener: Any,
) -> AsyncIterator[OpAMPServer]:
    """Our listener on 127.0.0.1 (any free port) over a real Fleet and deadline ticker.

    `fleet_options`: more FleetSettings fields (max_agents, error_after_offline_seconds...)."""
    from opamp_operator.config import FleetSettings, ListenerSettings
    from opamp_operator.fleet.clock import SystemClock
    from opamp_operator.fleet.events import EventBus
    from opamp_operator.fleet.registry import Fleet
    from opamp_operator.fleet.ticker import run_deadline_ticker
    from opamp_operator.transport import OpAMPListener

    fleet_settings = FleetSettings(heartbeat, heartbeat_timeout, **(fleet_options or {}))
    fleet = Fleet(fleet_settings, SystemClock(), EventBus())
    # OPAMP_WEBSOCKET_FRAMING=websockets runs a test file against the fallback framing.
    framing = os.environ.get("OPAMP_WEBSOCKET_FRAMING", "own")
    defaults = {"host": "127.0.0.1", "port": 0, "websocket_framing": framing}
    settings = ListenerSettings(**{**defaults, **listener})
    server = OpAMPListener(settings, fleet)
    await server.start()
    ticker = asyncio.create_task(run_deadline_ticker(fleet))
    try:
        yield OpAMPServer(server, fleet)
    finally:
        ticker.cancel()
        await server.stop()


def metric(name: str, **labels: str) -> float:
    """Current value of one sample of our registry (0 when never set)."""
    from opamp_operator.metrics import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


# --------------------------------------------------------------------------- the child


class _Emitter:
    def __init__(self) -> None:
        self._lock = threading.Lock()

    def emit(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, "ts": time.time(), **fields})
        with self._lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()


def main(argv: Sequence[str]) -> int:
    """The child: run an OpAMPAgent until SIGTERM/SIGINT, reporting events on stdout."""
    parser = argparse.ArgumentParser(prog="opamp-python-agent")
    parser.add_argument("--url", required=True)
    parser.add_argument("--instance-uid", required=True)
    parser.add_argument("--service-name", required=True)
    parser.add_argument("--heartbeat", type=float, required=True)
    parser.add_argument("--timeout", type=float, required=True)
    parser.add_argument("--token")
    parser.add_argument("--ca-file")
    parser.add_argument("--client-cert")
    parser.add_argument("--client-key")
    parser.add_argument("--apply-remote-config", action="store_true")
    options = parser.parse_args(argv)

    # Imported here: only the child may load the client's protobuf module.
    from opentelemetry._opamp.agent import OpAMPAgent
    from opentelemetry._opamp.client import OpAMPClient

    out = _Emitter()
    headers = {"Authorization": f"Bearer {options.token}"} if options.token else None
    client = OpAMPClient(
        endpoint=options.url,
        headers=headers,
        timeout_millis=int(options.timeout * 1000),
        agent_identifying_attributes={"service.name": options.service_name},
        agent_non_identifying_attributes={"host.name": "test-host"},
        tls_certificate=options.ca_file or True,
        tls_client_certificate=options.client_cert,
        tls_client_key=options.client_key,
    )
    # 0.5b0 has no parameter for the uid (it draws a UUIDv7): set the private attribute.
    client._instance_uid = uuid.UUID(hex=options.instance_uid).bytes
    agent = OpAMPAgent(
        interval=options.heartbeat,
        callbacks=_callbacks(out, apply_remote_config=options.apply_remote_config),
        client=client,
        max_retries=3,
        initial_backoff=0.2,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    agent.start()
    out.emit("started", instance_uid=options.instance_uid, url=options.url)
    while not stop.wait(0.1):
        pass
    out.emit("stopping")
    agent.stop(timeout=5)
    out.emit("stopped", disconnect_sent=True)
    return 0


def _callbacks(out: _Emitter, *, apply_remote_config: bool = False) -> Any:
    from opentelemetry._opamp.callbacks import OpAMPCallbacks
    from opentelemetry._opamp.proto import opamp_pb2

    class Callbacks(OpAMPCallbacks):
        def __init__(self) -> None:
            self.connected = False

        def on_connect(self, agent: Any, client: Any) -> None:
            if not self.connected:
                self.connected = True
                out.emit("connected")

        def on_connect_failed(self, agent: Any, client: Any, error: Exception) -> None:
            self.connected = False
            out.emit("connect_failed", error=str(error))

        def on_error(self, agent: Any, client: Any, error_response: Any) -> None:
            out.emit("error", type=int(error_response.type), error=error_response.error_message)

        def on_message(self, agent: Any, client: Any, message: Any) -> None:
            out.emit("message", remote_config=message.remote_config is not None)
            if apply_remote_config and message.remote_config is not None:
                self.apply(agent, client, message.remote_config)

        def apply(self, agent: Any, client: Any, remote_config: Any) -> None:
            files = remote_config.config.config_map
            rejected = any(b"REJECT" in file.body for file in files.values())
            status = opamp_pb2.RemoteConfigStatuses.RemoteConfigStatuses_APPLIED
            error = ""
            if rejected:
                status = opamp_pb2.RemoteConfigStatuses.RemoteConfigStatuses_FAILED
                error = "config body contains REJECT"
            config_hash = bytes(remote_config.config_hash)
            update = client.update_remote_config_status(config_hash, status, error)
            if update is not None:
                agent.send(payload=client.build_remote_config_status_response_message(update))
            out.emit(
                "remote_config",
                hash=config_hash.hex(),
                status="FAILED" if rejected else "APPLIED",
                files=sorted(files),
                error=error,
            )

    return Callbacks()
