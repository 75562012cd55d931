"""Request parsing that needs no I/O: agent ids, page sizes, cursors, one page of agents."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from opamp_operator.fleet.model import AgentPhase, AgentSnapshot

from .problems import bad_request

_HEX = "[0-9a-fA-F]"
_UUID_TEXT = re.compile(f"{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}")
STATUS_FILTERS: Mapping[str, AgentPhase] = {
    "online": AgentPhase.ONLINE,
    "offline": AgentPhase.OFFLINE,
    "error": AgentPhase.ERROR,
}


def parse_agent_id(text: str, what: str = "agent id") -> str:
    """The canonical form of an agent id (lowercase hyphenated UUID), or a 400 problem."""
    if not _UUID_TEXT.fullmatch(text):
        raise bad_request(f"{what} must be a UUID like 0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b")
    return str(uuid.UUID(text))


def parse_limit(raw: str | None, default: int, maximum: int) -> int:
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= maximum:
        raise bad_request(f"limit must be an integer from 1 to {maximum}")
    return int(raw)


def parse_status(raw: str | None) -> AgentPhase | None:
    if raw is None:
        return None
    phase = STATUS_FILTERS.get(raw)
    if phase is None:
        raise bad_request(f"status must be one of {', '.join(STATUS_FILTERS)}")
    return phase


# -- agent list -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgentPage:
    items: list[AgentSnapshot]
    next_cursor: str | None


def take_page(
    candidates: Iterable[str], lookup: Callable[[str], AgentSnapshot | None], limit: int
) -> AgentPage:
    """The first `limit` agents of `candidates` (ids in order) that `lookup` still knows.

    The cursor of the next page is the last id of this one: any id is a valid place to
    continue from, so agents coming and going between pages never break a listing.
    """
    items: list[AgentSnapshot] = []
    for agent_id in candidates:
        snapshot = lookup(agent_id)
        if snapshot is None:
            continue
        if len(items) == limit:
            return AgentPage(items, items[-1].agent_id)
        items.append(snapshot)
    return AgentPage(items, None)


# -- history (newest first) ------------------------------------------------------
# Keyset cursors on the store's row ids: any string of the documented shape is a valid
# place to continue from, and rows written between two pages never shift a page.

_SESSION_CURSOR = re.compile(r"([0-9]{1,17})_([0-9]{1,18})")
_TRANSITION_CURSOR = re.compile(r"[0-9]{1,18}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class SessionCursor:
    """Continue with sessions before (connected_at, id) in newest-first order."""

    connected_at: datetime
    id: int


def encode_session_cursor(connected_at: datetime, row_id: int) -> str:
    """`<microseconds since the epoch>_<row id>` of the last session of a page."""
    micros = (connected_at - _EPOCH) // timedelta(microseconds=1)
    return f"{micros}_{row_id}"


def decode_session_cursor(raw: str) -> SessionCursor:
    match = _SESSION_CURSOR.fullmatch(raw)
    if match is None:
        raise bad_request("cursor must look like 1767225600000000_42 (a nextCursor)")
    at = _EPOCH + timedelta(microseconds=int(match.group(1)))
    return SessionCursor(at, int(match.group(2)))


def decode_transition_cursor(raw: str) -> int:
    if _TRANSITION_CURSOR.fullmatch(raw) is None:
        raise bad_request("cursor must be a row id such as 42 (a nextCursor)")
    return int(raw)
