"""Request parsing and paging of the REST API: ids, limits, status filters, cursors."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest

from opamp_operator.api.index import AgentIndex
from opamp_operator.api.paging import (
    AgentPage,
    decode_session_cursor,
    decode_transition_cursor,
    encode_session_cursor,
    parse_agent_id,
    parse_limit,
    parse_status,
    take_page,
)
from opamp_operator.api.problems import Problem
from opamp_operator.fleet.model import AgentPhase
from opamp_operator.fleet.registry import Fleet
from tests.support.api_fleet import FakeChannel, hello, make_fleet, new_agent_id, visit


def test_agent_id_is_canonicalised() -> None:
    assert parse_agent_id("0190A1B2-C3D4-7E5F-8A9B-0C1D2E3F4A5B") == (
        "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
    )


@pytest.mark.parametrize(
    "text",
    [
        "",
        "x",
        "0190a1b2c3d47e5f8a9b0c1d2e3f4a5b",  # no hyphens
        "{0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b}",
        "urn:uuid:0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
        "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b\n",
        "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5g",
        "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5",
        "\u0660190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",  # a non-ASCII digit
    ],
)
def test_malformed_agent_id_is_a_400_problem(text: str) -> None:
    with pytest.raises(Problem) as caught:
        parse_agent_id(text)
    assert caught.value.status == 400
    assert "UUID" in caught.value.detail


@pytest.mark.parametrize(("raw", "expected"), [(None, 100), ("1", 1), ("1000", 1000)])
def test_limit_defaults_and_bounds(raw: str | None, expected: int) -> None:
    assert parse_limit(raw, 100, 1000) == expected


@pytest.mark.parametrize("raw", ["0", "1001", "-1", "", "1.5", "ten", "²", "+5", " 5"])
def test_bad_limit_is_a_400_problem(raw: str) -> None:
    with pytest.raises(Problem) as caught:
        parse_limit(raw, 100, 1000)
    assert caught.value.status == 400


def test_status_filter() -> None:
    assert parse_status(None) is None
    assert parse_status("offline") is AgentPhase.OFFLINE
    with pytest.raises(Problem):
        parse_status("Online")  # the filter values are lowercase, as documented


def _fleet_of(online: int, offline: int) -> tuple[Fleet, list[str]]:
    """A fleet with that many Online and Offline agents, and every id in order."""
    fleet, _, _ = make_fleet()
    for i in range(online + offline):
        agent_id = new_agent_id()
        if i >= online:
            visit(fleet, agent_id)
        else:
            fleet.handle_message(FakeChannel(), hello(agent_id))
    return fleet, sorted(s.agent_id for s in fleet.snapshots())


def page_agents(fleet: Fleet, phase: AgentPhase | None, limit: int, after: str | None) -> AgentPage:
    return take_page(AgentIndex(fleet).after(after, phase), fleet.get, limit)


def test_pages_walk_every_agent_once_in_id_order() -> None:
    fleet, ids = _fleet_of(7, 0)
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = page_agents(fleet, None, 3, cursor)
        seen += [s.agent_id for s in page.items]
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == ids
    assert pages == 3  # 3 + 3 + 1: the last page has no next cursor


def test_exact_multiple_has_no_empty_last_page() -> None:
    fleet, _ = _fleet_of(4, 0)
    first = page_agents(fleet, None, 2, None)
    second = page_agents(fleet, None, 2, first.next_cursor)
    assert len(second.items) == 2 and second.next_cursor is None


def test_status_filter_applies_before_paging() -> None:
    fleet, _ = _fleet_of(3, 4)
    page = page_agents(fleet, AgentPhase.OFFLINE, 10, None)
    assert len(page.items) == 4
    assert all(s.phase is AgentPhase.OFFLINE for s in page.items)


def test_agents_added_between_pages_do_not_repeat_or_skip_older_ones() -> None:
    fleet, ids = _fleet_of(6, 0)
    first = page_agents(fleet, None, 3, None)
    fleet.handle_message(FakeChannel(), hello(str(uuid.UUID(int=0))))  # sorts before all
    second = page_agents(fleet, None, 3, first.next_cursor)
    assert [s.agent_id for s in first.items + second.items] == ids


def test_session_cursor_round_trip_keeps_microseconds() -> None:
    at = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)
    cursor = decode_session_cursor(encode_session_cursor(at, 42))
    assert (cursor.connected_at, cursor.id) == (at, 42)


@pytest.mark.parametrize("raw", ["", "12", "a_1", "1_", "_1", "1_2_3", "1_2\n", "1" * 18 + "_1"])
def test_bad_session_cursor_is_a_400_problem(raw: str) -> None:
    with pytest.raises(Problem) as caught:
        decode_session_cursor(raw)
    assert caught.value.status == 400


def test_transition_cursor() -> None:
    assert decode_transition_cursor("42") == 42
    for raw in ("", "-1", "4.2", "1" * 19):
        with pytest.raises(Problem):
            decode_transition_cursor(raw)


async def test_index_follows_the_fleet_through_events_and_rebuilds_after_drops() -> None:
    fleet, clock, bus = make_fleet()
    first = new_agent_id()
    fleet.handle_message(FakeChannel(), hello(first))
    index = AgentIndex(fleet)
    index.start()
    try:
        assert list(index.after(None, None)) == [first]
        assert index.rebuilds == 1  # built once from the fleet, then kept by events
        later = [new_agent_id() for _ in range(5)]
        for agent_id in later:
            fleet.handle_message(FakeChannel(), hello(agent_id))
        visit(fleet, later[0])
        assert list(index.after(None, None)) == sorted([first, *later])
        assert list(index.after(None, AgentPhase.OFFLINE)) == [later[0]]
        assert index.down() == [later[0]]
        clock.advance(fleet.settings.heartbeat_timeout_seconds + 1)
        fleet.check_deadlines()
        assert sorted(index.down()) == sorted([first, *later])
        await asyncio.sleep(0)  # the index task drains the queue on its own too
        assert index.subscription is not None and index.subscription.depth() == 0
        assert index.rebuilds == 1
        index.subscription.needs_resync = True  # as the bus marks it after a drop
        assert len(list(index.after(None, AgentPhase.OFFLINE))) == 6
        assert index.rebuilds == 2
    finally:
        await index.stop()
    assert index.subscription is None and bus.subscriptions == ()
