"""What Kopf does in this operator: login, its own settings, start-up and clean-up ordering.

Run it in-process, in the application's event loop:

    registry = build_registry(credentials)
    stop = asyncio.Event()
    kopf_task = asyncio.create_task(run_kopf(registry, settings.kube.namespace, stop_flag=stop))
    ...
    stop.set(); await kopf_task        # stop with the flag: never cancel the task

Standalone, without peering: Kopf's peering only pauses resource handlers, and there are
none; each replica's liveness is its Lease (`kube/leases/`). With peering, every replica
patched a KopfPeering object once a minute and needed its CRD and RBAC for nothing.

Kopf no longer watches OpAMPAgent resources itself: the one watch of that kind per replica
is `kube/wiring/agentwatch.py` (our informer), which every subscriber shares. Measured
reason (docs/benchmarks.md, 10,000 agents): Kopf's watch handling of the echo of our own
writes took a third of the operator's steady CPU, on top of the GitOps informer's watch of
the same kind; and with Kopf peering only the active replica got the events, while remote
config and liveness are needed on every replica.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import kopf

from opamp_operator.kube.api import Credentials

log = logging.getLogger(__name__)


def build_registry(credentials: Credentials) -> kopf.OperatorRegistry:
    """A Kopf registry: log in with the credentials the app loaded once, quieter settings."""
    registry = kopf.OperatorRegistry()

    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure_kopf(settings)

    def login(**_: Any) -> kopf.ConnectionInfo:
        return credentials.connection_info()

    # Registered by calling the decorators: Kopf's are untyped, and mypy --strict would
    # otherwise call every handler untyped.
    kopf.on.startup(registry=registry)(startup)
    kopf.on.login(registry=registry)(login)
    return registry


async def run_kopf(
    registry: kopf.OperatorRegistry,
    namespace: str,
    *,
    stop_flag: asyncio.Event | threading.Event | None = None,
    ready_flag: asyncio.Event | threading.Event | None = None,
) -> None:
    """Kopf as the operator runs it: serving one namespace, standalone (no peering)."""
    await kopf.operator(
        registry=registry,
        namespaces=[namespace],
        clusterwide=False,
        # Forced: left to auto-detection, Kopf joins a KopfPeering CRD left on the cluster.
        standalone=True,
        memo=kopf.Memo(),
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )


def configure_kopf(settings: kopf.OperatorSettings) -> None:
    """Kopf settings for running inside the operator process, next to everything else."""
    # Kopf posts its handlers' log lines as Events: only warnings and errors are worth it.
    settings.posting.level = logging.WARNING
    # The application decides when the process ends; Kopf must never SIGKILL it.
    settings.process.ultimate_exiting_timeout = None
