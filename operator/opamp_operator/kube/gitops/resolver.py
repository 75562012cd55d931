"""Which remote config each agent should run, from its own spec and the fleet configs (pure).

Precedence (docs/gitops.md):
1. `spec.remoteConfig` of the agent's own OpAMPAgent, when it has at least one file;
2. else the OpAMPAgentConfigs whose selector matches the OpAMPAgent's labels: the highest
   `spec.priority` wins, then the most specific selector (most requirements);
3. two or more left at the top with equal priority and specificity: a conflict. The agent
   is given no config (it keeps what it runs) and the conflict is shown in the status of the
   agent and of every config involved.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from opamp_operator.fleet.remoteconfig import ConfigFile, DesiredConfig
from opamp_operator.fleet.rollout import RolloutSpec, RolloutSpecError, parse_rollout
from opamp_operator.kube.gitops.selectors import Selector, SelectorError, parse_selector

CONFIG_KIND = "OpAMPAgentConfig"
MAX_FILES = 64


class ConfigSpecError(ValueError):
    """A remoteConfig or an OpAMPAgentConfig spec that cannot be used."""


@dataclass(frozen=True, slots=True)
class FleetConfig:
    """One valid OpAMPAgentConfig, as the resolver needs it."""

    name: str
    selector: Selector
    priority: int
    desired: DesiredConfig
    rollout: RolloutSpec = field(default_factory=RolloutSpec)  # how a new config reaches the agents

    @property
    def rank(self) -> tuple[int, int]:
        return (self.priority, self.selector.specificity)


@dataclass(frozen=True, slots=True)
class Resolution:
    """The outcome for one agent: a config (or none), and why."""

    desired: DesiredConfig | None
    matched: tuple[str, ...] = ()  # names of every OpAMPAgentConfig whose selector matches
    conflict: tuple[str, ...] = ()  # names of the OpAMPAgentConfigs that tie
    error: str | None = None  # the agent's own spec.remoteConfig is unusable

    @property
    def problem(self) -> str | None:
        """Why no config could be chosen, for the agent's status; None when nothing is wrong."""
        if self.error is not None:
            return f"spec.remoteConfig: {self.error}"
        if self.conflict:
            names = ", ".join(self.conflict)
            return f"{CONFIG_KIND}s {names} match with equal priority and specificity"
        return None


def parse_files(remote_config: Any) -> dict[str, ConfigFile]:
    """`{name: {body, contentType}}` as in the CRDs, into config files; raises ConfigSpecError."""
    if remote_config is None:
        return {}
    if not isinstance(remote_config, Mapping):
        raise ConfigSpecError("must be a map of file name -> {body, contentType}")
    if len(remote_config) > MAX_FILES:
        raise ConfigSpecError(f"at most {MAX_FILES} files")
    files: dict[str, ConfigFile] = {}
    for name, entry in remote_config.items():
        if not isinstance(entry, Mapping) or not isinstance(entry.get("body"), str):
            raise ConfigSpecError(f"file {name!r} needs a string body")
        content_type = entry.get("contentType") or ""
        if not isinstance(content_type, str):
            raise ConfigSpecError(f"contentType of {name!r} must be a string")
        files[str(name)] = ConfigFile(entry["body"].encode(), content_type)
    return files


def own_config(name: str, spec: Mapping[str, Any] | None) -> DesiredConfig | None:
    """The OpAMPAgent's own config (None when it declares no file); raises ConfigSpecError."""
    files = parse_files((spec or {}).get("remoteConfig"))
    return DesiredConfig.of(files, f"OpAMPAgent/{name}") if files else None


def fleet_config(name: str, spec: Mapping[str, Any] | None) -> FleetConfig:
    """An OpAMPAgentConfig's spec, checked; raises ConfigSpecError."""
    spec = spec or {}
    try:
        selector = parse_selector(spec.get("selector"))
    except SelectorError as error:
        raise ConfigSpecError(f"selector: {error}") from error
    priority = spec.get("priority", 0)
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise ConfigSpecError("priority must be an integer")
    try:
        files = parse_files(spec.get("remoteConfig"))
    except ConfigSpecError as error:
        raise ConfigSpecError(f"remoteConfig: {error}") from error
    if not files:
        raise ConfigSpecError("remoteConfig needs at least one file")
    try:
        rollout = parse_rollout(spec.get("rollout"))
    except RolloutSpecError as error:
        raise ConfigSpecError(f"rollout: {error}") from error
    desired = DesiredConfig.of(files, f"{CONFIG_KIND}/{name}")
    return FleetConfig(name, selector, priority, desired, rollout)


def resolve(
    labels: Mapping[str, str],
    own: DesiredConfig | None,
    configs: Iterable[FleetConfig],
    own_error: str | None = None,
) -> Resolution:
    """The config one agent should run, by the precedence in this module's docstring."""
    matching = [config for config in configs if config.selector.matches(labels)]
    matched = tuple(sorted(config.name for config in matching))
    if own_error is not None:
        return Resolution(None, matched, error=own_error)
    if own is not None:
        return Resolution(own, matched)
    if not matching:
        return Resolution(None)
    top = max(config.rank for config in matching)
    best = [config for config in matching if config.rank == top]
    if len(best) == 1:
        return Resolution(best[0].desired, matched)
    return Resolution(None, matched, conflict=tuple(sorted(config.name for config in best)))
