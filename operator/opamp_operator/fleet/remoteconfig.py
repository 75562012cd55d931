"""Desired remote configuration: files, their hash, and how far an agent got with it (pure).

The hash is computed the same way as the effective-config hash in `reports.py`, so that an
agent which applied a remote config and reports it back as its effective config can be
recognised (and one running something else is shown as drifted).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from opamp_operator.opamp.generated import opamp_pb2

EFFECTIVE_HASH_CHARS = 16  # what `reports.effective_config_hash` keeps of the digest

ACCEPTS_REMOTE_CONFIG = int(opamp_pb2.AgentCapabilities_AcceptsRemoteConfig)
REPORTS_EFFECTIVE_CONFIG = int(opamp_pb2.AgentCapabilities_ReportsEffectiveConfig)


def config_digest(files: Iterable[tuple[str, str, bytes]]) -> bytes:
    """sha256 over (name, content type, body) triples in name order; NUL-separated."""
    digest = hashlib.sha256()
    for name, content_type, body in sorted(files, key=lambda item: item[0]):
        digest.update(name.encode())
        digest.update(b"\0")
        digest.update(content_type.encode())
        digest.update(b"\0")
        digest.update(body)
        digest.update(b"\0")
    return digest.digest()


@dataclass(frozen=True, slots=True)
class ConfigFile:
    body: bytes
    content_type: str = ""


@dataclass(frozen=True, slots=True, eq=False)
class DesiredConfig:
    """The config files one agent should run, with their hash; build with `DesiredConfig.of`.

    `source` says where it came from (e.g. `OpAMPAgentConfig/team-a`), for people; it is not
    part of the hash. Equal files give equal hashes whatever their source.
    """

    files: Mapping[str, ConfigFile]
    hash: bytes
    source: str

    @classmethod
    def of(cls, files: Mapping[str, ConfigFile], source: str = "") -> DesiredConfig:
        frozen = MappingProxyType(dict(files))
        digest = config_digest((n, f.content_type, f.body) for n, f in frozen.items())
        return cls(frozen, digest, source)

    @property
    def hash_hex(self) -> str:
        return self.hash.hex()

    @property
    def effective_hash(self) -> str:
        """What `reports.effective_config_hash` gives for an effective config of these files."""
        return self.hash.hex()[:EFFECTIVE_HASH_CHARS]

    def to_proto(self) -> opamp_pb2.AgentRemoteConfig:
        message = opamp_pb2.AgentRemoteConfig(config_hash=self.hash)
        for name, file in self.files.items():
            entry = message.config.config_map[name]
            entry.body = file.body
            entry.content_type = file.content_type
        return message


class ConfigState(StrEnum):
    """How far an agent got with its desired config (what the RemoteConfigApplied shows)."""

    NONE = "None"  # nothing desired: the operator does not manage this agent's config
    UNSUPPORTED = "NotSupported"  # the agent does not accept remote config
    PENDING = "Pending"  # not sent yet (agent not connected, or its state not known yet)
    APPLYING = "Applying"  # sent; the agent has not reported it applied yet
    APPLIED = "Applied"
    FAILED = "Failed"
    DRIFTED = "Drifted"  # reported applied, but the agent runs another (effective) config


@dataclass(frozen=True, slots=True)
class ConfigProgress:
    state: ConfigState
    message: str


def config_progress(
    desired: DesiredConfig | None,
    *,
    capabilities: int,
    connected: bool,
    reported: Mapping[str, Any] | None,
    effective_hash: str | None,
    effective_is_current: bool,
    sent: bool,
) -> ConfigProgress:
    """Where `desired` stands for one agent.

    `reported`: the agent's RemoteConfigStatus as `reports.remote_config_status_to_dict` makes
    it; `effective_is_current`: the effective config was reported with or after that status
    (an agent may report APPLIED first and its new effective config a message later);
    `sent`: the desired config went to the agent in its current session.
    """
    if desired is None:
        return ConfigProgress(ConfigState.NONE, "no remote config is desired for this agent")
    if capabilities and not capabilities & ACCEPTS_REMOTE_CONFIG:
        return ConfigProgress(
            ConfigState.UNSUPPORTED, "the agent does not report the AcceptsRemoteConfig capability"
        )
    short = desired.hash_hex[:12]
    reported = reported or {}
    if reported.get("lastRemoteConfigHash") == desired.hash_hex:
        status = reported.get("status")
        if status == "FAILED":
            text = str(reported.get("errorMessage") or "the agent reports FAILED")
            return ConfigProgress(ConfigState.FAILED, text)
        if status == "APPLIED":
            drifted = (
                capabilities & REPORTS_EFFECTIVE_CONFIG
                and effective_is_current
                and effective_hash is not None
                and effective_hash != desired.effective_hash
            )
            if drifted:
                return ConfigProgress(
                    ConfigState.DRIFTED,
                    f"the agent applied {short} but its effective config differs"
                    f" (hash {effective_hash}, expected {desired.effective_hash})",
                )
            return ConfigProgress(ConfigState.APPLIED, f"the agent applied config {short}")
        return ConfigProgress(ConfigState.APPLYING, f"the agent is applying config {short}")
    if not connected:
        return ConfigProgress(
            ConfigState.PENDING, f"config {short} is sent when the agent connects"
        )
    if sent:
        return ConfigProgress(ConfigState.APPLYING, f"config {short} sent; waiting for the agent")
    return ConfigProgress(ConfigState.PENDING, f"config {short} is sent with the next reply")
