"""Desired remote configuration: files, their hash, and how far an agent got with it (pure).

How far an agent got is what it says in its RemoteConfigStatus about the hash it was sent,
never a comparison with the effective config it reports: agents such as the Collector's
OpAMP Supervisor report the whole merged config (their own settings plus the pushed files),
whose hash never equals the pushed one and changes at every restart.
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
    # It reported FAILED for the desired hash, then APPLIED for another: it went back to its
    # previous config by itself (see `rollout.detect_self_rollback`); it is not sent again.
    ROLLED_BACK = "RolledBack"


ROLLED_BACK_PREFIX = "the agent went back to its previous config after reporting FAILED: "


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
    sent: bool,
    rolled_back: str | None = None,
) -> ConfigProgress:
    """Where `desired` stands for one agent.

    `reported`: the agent's RemoteConfigStatus as `reports.remote_config_status_to_dict` makes
    it; `sent`: the desired config went to the agent in its current session; `rolled_back`:
    the agent's error message when it rolled itself back from the desired config.
    """
    if desired is None:
        return ConfigProgress(ConfigState.NONE, "no remote config is desired for this agent")
    if capabilities and not capabilities & ACCEPTS_REMOTE_CONFIG:
        return ConfigProgress(
            ConfigState.UNSUPPORTED, "the agent does not report the AcceptsRemoteConfig capability"
        )
    if rolled_back is not None:
        return ConfigProgress(ConfigState.ROLLED_BACK, ROLLED_BACK_PREFIX + rolled_back)
    short = desired.hash_hex[:12]
    reported = reported or {}
    if reported.get("lastRemoteConfigHash") == desired.hash_hex:
        status = reported.get("status")
        if status == "FAILED":
            text = str(reported.get("errorMessage") or "the agent reports FAILED")
            return ConfigProgress(ConfigState.FAILED, text)
        if status == "APPLIED":
            return ConfigProgress(ConfigState.APPLIED, f"the agent applied config {short}")
        return ConfigProgress(ConfigState.APPLYING, f"the agent is applying config {short}")
    if not connected:
        return ConfigProgress(
            ConfigState.PENDING, f"config {short} is sent when the agent connects"
        )
    if sent:
        return ConfigProgress(ConfigState.APPLYING, f"config {short} sent; waiting for the agent")
    return ConfigProgress(ConfigState.PENDING, f"config {short} is sent with the next reply")
