"""Kopf handlers on OpAMPAgent resources, registered on a registry of their own.

Run them in-process, in the application's event loop, after the status writer started:

    registry = build_registry(fleet, settings.kube, api, writer=writer)
    stop = asyncio.Event()
    kopf_task = asyncio.create_task(kopf.operator(
        registry=registry, clusterwide=False, namespaces=[settings.kube.namespace],
        standalone=True, stop_flag=stop))
    ...
    stop.set(); await kopf_task        # stop with the flag: never cancel the task

What is registered:
- login from `KubeSettings.kubeconfig` (or in-cluster / the default kubeconfig);
- startup: quieter Kopf settings (see `_configure`);
- a timer on every OpAMPAgent: `LivenessChecker` (Offline/Error for CRs no live session
  holds, and GC);
- a watch of deletions: a deleted CR of an agent connected here is recreated at once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf
from kubernetes import client as k8s

from opamp_operator.config import KubeSettings
from opamp_operator.fleet.clock import Clock, SystemClock
from opamp_operator.fleet.registry import Fleet

from .client import KubeApi, load_configuration
from .liveness import LivenessChecker
from .naming import GROUP, PLURAL, VERSION, agent_id_from_name
from .ratelimit import WriteLimiter
from .writer import StatusWriter

log = logging.getLogger(__name__)

FINALIZER = "opamp.dev/kopf"  # Kopf puts one on every object that has a timer
TIMER_IDLE_SECONDS = 1.0  # let a burst of writes settle before judging the CR


def build_registry(
    fleet: Fleet,
    settings: KubeSettings,
    api: KubeApi,
    *,
    writer: StatusWriter | None = None,
    clock: Clock | None = None,
) -> kopf.OperatorRegistry:
    """A Kopf registry with every handler of the mirror, bound to these collaborators."""
    registry = kopf.OperatorRegistry()
    limiter = writer.limiter if writer is not None else WriteLimiter(settings.writes_per_second)
    checker = LivenessChecker(fleet, settings, api, clock or SystemClock(), limiter)
    kubeconfig = settings.kubeconfig

    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure_kopf(settings)

    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(load_configuration(kubeconfig))

    async def liveness(body: kopf.Body, **_: Any) -> None:
        await checker.check(plain(body))

    async def deletions(event: Mapping[str, Any], **_: Any) -> None:
        if event.get("type") != "DELETED" or writer is None:
            return
        metadata = (event.get("object") or {}).get("metadata") or {}
        agent_id = agent_id_from_name(str(metadata.get("name", "")))
        if agent_id is not None:
            writer.cr_deleted(agent_id, metadata.get("uid"))

    # Registered by calling the decorators: Kopf's are untyped, and mypy --strict would
    # otherwise call every handler untyped.
    kopf.on.startup(registry=registry)(configure)
    kopf.on.login(registry=registry)(login)
    kopf.timer(
        GROUP, VERSION, PLURAL, registry=registry, id="liveness",
        interval=settings.liveness_check_interval_seconds, idle=TIMER_IDLE_SECONDS,
        backoff=settings.liveness_check_interval_seconds,
    )(liveness)  # fmt: skip
    kopf.on.event(GROUP, VERSION, PLURAL, registry=registry, id="deletions")(deletions)
    return registry


def configure_kopf(settings: kopf.OperatorSettings) -> None:
    """Kopf settings for running inside the operator process, next to everything else."""
    # Kopf posts its log lines as Events; a timer that "succeeded" every few seconds on
    # every agent is noise in `kubectl describe` (we post our own transition Events).
    settings.posting.level = logging.WARNING
    # The application decides when the process ends; Kopf must never SIGKILL it.
    settings.process.ultimate_exiting_timeout = None
    settings.persistence.finalizer = FINALIZER
    # A deleted CR keeps Kopf's finalizer until Kopf sees its timer has ended; by default
    # it looks again only every 60s when the timer was busy at that moment (e.g. the GC
    # deleting the CR from inside it).
    settings.background.cancellation_polling = 1.0
    # One INFO line per timer run per agent would flood the log at fleet scale.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)


def connection_info(configuration: k8s.Configuration) -> kopf.ConnectionInfo:
    """Kopf credentials from a loaded client configuration (as `kopf.login_via_client`)."""
    header = configuration.get_api_key_with_prefix(
        "BearerToken"
    ) or configuration.get_api_key_with_prefix("authorization")
    parts = header.split(" ", 1) if header else []
    scheme, token = (None, None)
    if len(parts) == 1:
        token = parts[0]
    elif len(parts) == 2:
        scheme, token = parts[0], parts[1]
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        username=configuration.username or None,
        password=configuration.password or None,
        scheme=scheme,
        token=token,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
    )


def plain(value: Any) -> Any:
    """Kopf's read-only body views, as plain dicts and lists."""
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return value
