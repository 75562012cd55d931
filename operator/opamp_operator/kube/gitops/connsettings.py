"""Connection settings declared in OpAMPAgent and OpAMPAgentConfig specs (pure).

`spec.connectionSettings` names the OTLP destination of the agent's own telemetry and the
headers to send with it, each header's value taken from a key of a Secret in the operator's
namespace (never written in the CR), and the heartbeat interval. Which declaration an agent
gets follows the remote config's precedence (resolver.py): its own OpAMPAgent's, else the
matching OpAMPAgentConfigs' by priority then selector specificity; a tie gives none.

No error message here carries a header value: they name the Secret and the key only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from opamp_operator.fleet.offers import SIGNALS, DesiredSettings, Telemetry
from opamp_operator.kube.gitops.selectors import Selector

MAX_HEADERS = 16


class SettingsSpecError(ValueError):
    """A connectionSettings that cannot be used (bad shape, missing Secret or key)."""

    def __init__(self, message: str, reason: str = "invalid_spec") -> None:
        super().__init__(message)
        self.reason = reason  # the metric label


@dataclass(frozen=True, slots=True)
class HeaderRef:
    name: str
    secret: str
    key: str


@dataclass(frozen=True, slots=True)
class TelemetrySpec:
    endpoint: str
    headers: tuple[HeaderRef, ...] = ()


@dataclass(frozen=True, slots=True)
class SettingsSpec:
    """One parsed `spec.connectionSettings`, its Secrets not read yet."""

    telemetry: Mapping[str, TelemetrySpec]  # by proto field (own_metrics, ...)
    heartbeat_interval_seconds: int | None

    @property
    def secrets(self) -> frozenset[str]:
        return frozenset(h.secret for t in self.telemetry.values() for h in t.headers)


@dataclass(frozen=True, slots=True)
class FleetSettings:
    """The connectionSettings of one valid OpAMPAgentConfig."""

    name: str
    selector: Selector
    priority: int
    spec: SettingsSpec

    @property
    def rank(self) -> tuple[int, int]:
        return (self.priority, self.selector.specificity)


def parse_settings(value: Any) -> SettingsSpec | None:
    """`spec.connectionSettings` as in the CRDs (None when absent); raises SettingsSpecError."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise SettingsSpecError("connectionSettings must be an object")
    heartbeat = value.get("heartbeatIntervalSeconds")
    if heartbeat is not None and (
        not isinstance(heartbeat, int) or isinstance(heartbeat, bool) or heartbeat < 1
    ):
        raise SettingsSpecError("connectionSettings.heartbeatIntervalSeconds must be >= 1")
    telemetry = {}
    for field, name, _ in SIGNALS:
        entry = value.get(field)
        if entry is not None:
            telemetry[name] = _telemetry(f"connectionSettings.{field}", entry)
    if not telemetry and heartbeat is None:
        return None
    return SettingsSpec(telemetry, heartbeat)


def _telemetry(where: str, entry: Any) -> TelemetrySpec:
    if not isinstance(entry, Mapping) or not isinstance(entry.get("endpoint"), str):
        raise SettingsSpecError(f"{where} needs a string endpoint")
    headers = entry.get("headers") or []
    if not isinstance(headers, list) or len(headers) > MAX_HEADERS:
        raise SettingsSpecError(f"{where}.headers must be a list of at most {MAX_HEADERS}")
    refs = []
    for header in headers:
        ref = header.get("secretKeyRef") if isinstance(header, Mapping) else None
        if (
            not isinstance(ref, Mapping)
            or not isinstance(header.get("name"), str)
            or not isinstance(ref.get("name"), str)
            or not isinstance(ref.get("key"), str)
        ):
            raise SettingsSpecError(f"{where}.headers: each needs a name and a secretKeyRef")
        refs.append(HeaderRef(header["name"], ref["name"], ref["key"]))
    return TelemetrySpec(entry["endpoint"], tuple(refs))


def choose(
    labels: Mapping[str, str], own: SettingsSpec | None, fleet: Iterable[FleetSettings]
) -> tuple[SettingsSpec | None, str]:
    """The settings declaration one agent gets, and its source ("" when none).

    Raises SettingsSpecError (reason `conflict`) when OpAMPAgentConfigs tie at the top.
    """
    if own is not None:
        return own, "OpAMPAgent"
    matching = [entry for entry in fleet if entry.selector.matches(labels)]
    if not matching:
        return None, ""
    top = max(entry.rank for entry in matching)
    best = [entry for entry in matching if entry.rank == top]
    if len(best) > 1:
        names = ", ".join(sorted(entry.name for entry in best))
        raise SettingsSpecError(
            f"OpAMPAgentConfigs {names} declare connectionSettings with equal priority and "
            "specificity",
            "conflict",
        )
    return best[0].spec, f"OpAMPAgentConfig/{best[0].name}"


def build(
    spec: SettingsSpec, source: str, secrets: Mapping[str, Mapping[str, bytes] | None]
) -> DesiredSettings:
    """The settings with every header's value read from `secrets` (name -> data; None: the
    Secret does not exist); raises SettingsSpecError naming the missing Secret or key."""
    telemetry = {}
    for name, wanted in spec.telemetry.items():
        headers = []
        for ref in wanted.headers:
            data = secrets.get(ref.secret)
            if data is None:
                raise SettingsSpecError(f"Secret {ref.secret} not found", "secret_not_found")
            if ref.key not in data:
                raise SettingsSpecError(
                    f"Secret {ref.secret} has no key {ref.key}", "secret_key_missing"
                )
            headers.append((ref.name, data[ref.key].decode("utf-8", "replace")))
        telemetry[name] = Telemetry(wanted.endpoint, tuple(headers))
    return DesiredSettings.of(telemetry, spec.heartbeat_interval_seconds, source)
