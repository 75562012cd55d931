"""An agent's AvailableComponents: kept bounded, summarised, and turned into JSON (no I/O).

The specification's two steps: an agent sends the hash in its first message and whenever the
set changes; the server asks for the full map (ServerToAgentFlags_ReportAvailableComponents)
when it holds none for that hash. The full map is kept as the wire bytes (compact; decoded
only for the REST API and the database) and summarised as counts by kind: the top-level keys
of the map (receivers, processors, exporters, extensions, connectors for a Collector) and the
components under each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from opamp_operator.opamp.generated import opamp_pb2
from opamp_operator.opamp.messages import any_value_to_python

REPORTS_AVAILABLE_COMPONENTS: Final = int(opamp_pb2.AgentCapabilities_ReportsAvailableComponents)
REPORT_AVAILABLE_COMPONENTS: Final = int(opamp_pb2.ServerToAgentFlags_ReportAvailableComponents)

# Bounds on what one agent may make us keep (memory, the database row, the REST answer).
# A Collector contrib build lists ~300 components in ~40 KiB: these leave room for it.
MAX_BYTES: Final = 256 * 1024  # the serialized map
MAX_COMPONENTS: Final = 4096  # entries at every depth
MAX_DEPTH: Final = 4  # kind -> component -> sub-component -> ...
MAX_HASH_BYTES: Final = 64
# The CR's summary: at most this many kinds, names cut to this length.
MAX_KINDS: Final = 16
MAX_KIND_CHARS: Final = 63

TOO_LARGE: Final = "available_components_too_large"  # the opamp_bad_input_total reasons
INVALID: Final = "available_components_invalid"


@dataclass(frozen=True, slots=True)
class AvailableComponents:
    """What the server holds of an agent's components: always the hash; the full map
    (`raw`, the serialized AvailableComponents) once the agent sent it."""

    hash: bytes
    raw: bytes | None = None
    counts: tuple[tuple[str, int], ...] = ()  # (kind, components of that kind), by kind

    @property
    def complete(self) -> bool:
        return self.raw is not None

    @property
    def hash_hex(self) -> str:
        return self.hash.hex()

    @property
    def total(self) -> int:
        return sum(count for _, count in self.counts)

    def summary(self) -> dict[str, Any]:
        """The bounded form the CR and the REST status show (no component names)."""
        counts: dict[str, int] = {}
        for kind, count in self.counts[:MAX_KINDS]:
            cut = kind[:MAX_KIND_CHARS]  # names equal once cut add up
            counts[cut] = counts.get(cut, 0) + count
        return {
            "hash": self.hash_hex,
            "complete": self.complete,
            "counts": counts,
            "total": self.total,
        }

    def components_json(self) -> dict[str, Any]:
        """The full map as JSON-ready data ({} while only the hash is known)."""
        if self.raw is None:
            return {}
        message = opamp_pb2.AvailableComponents.FromString(self.raw)
        return {name: _details_json(d) for name, d in sorted(message.components.items())}


@dataclass(frozen=True, slots=True)
class Refused:
    """A report not kept: `reason` is the opamp_bad_input_total label."""

    reason: str
    detail: str


def read_report(report: Any) -> AvailableComponents | Refused:
    """The AvailableComponents of a message, checked against the bounds."""
    digest = bytes(report.hash)
    if not digest or len(digest) > MAX_HASH_BYTES:
        return Refused(INVALID, f"hash of {len(digest)} bytes (1 to {MAX_HASH_BYTES} allowed)")
    if not report.components:
        return AvailableComponents(digest)
    size = report.ByteSize()
    if size > MAX_BYTES:
        return Refused(TOO_LARGE, f"{size} bytes of components (at most {MAX_BYTES})")
    entries, depth = _measure(report.components, 1)
    if entries > MAX_COMPONENTS or depth > MAX_DEPTH:
        detail = f"{entries} components nested {depth} deep (at most {MAX_COMPONENTS}, {MAX_DEPTH})"
        return Refused(TOO_LARGE, detail)
    counts = tuple(
        (kind, len(details.sub_component_map))
        for kind, details in sorted(report.components.items())
    )
    return AvailableComponents(digest, report.SerializeToString(deterministic=True), counts)


def _measure(components: Any, depth: int) -> tuple[int, int]:
    """(entries at every depth, deepest level) of a component map; stops past the bounds."""
    entries, deepest = len(components), depth
    for details in components.values():
        if entries > MAX_COMPONENTS or deepest > MAX_DEPTH:
            break
        if details.sub_component_map:
            more, level = _measure(details.sub_component_map, depth + 1)
            entries, deepest = entries + more, max(deepest, level)
    return entries, deepest


def _details_json(details: Any) -> dict[str, Any]:
    return {
        "metadata": {kv.key: any_value_to_python(kv.value) for kv in details.metadata},
        "subComponents": {
            name: _details_json(child) for name, child in sorted(details.sub_component_map.items())
        },
    }
