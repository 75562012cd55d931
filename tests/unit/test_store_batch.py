"""The writer's buffer: bounded, heartbeats coalesced and shed first, batches in order."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from opamp_operator.fleet.events import AgentChanged, PhaseChanged, SessionClosed, SessionOpened
from opamp_operator.fleet.model import AgentPhase, Transport
from opamp_operator.store.batch import (
    HistoryEvent,
    PendingWrites,
    plan_agent_states,
    split_sessions,
)
from opamp_operator.store.rows import storable, to_json

T0 = datetime(2026, 1, 1, tzinfo=UTC)
A = "00000000-0000-0000-0000-00000000000a"
B = "00000000-0000-0000-0000-00000000000b"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def opened(agent: str, session: str, t: float) -> SessionOpened:
    return SessionOpened(agent, session, Transport.WEBSOCKET, "127.0.0.1:1", at(t))


def closed(agent: str, session: str, t0: float, t1: float, reason: str) -> SessionClosed:
    return SessionClosed(agent, session, Transport.WEBSOCKET, "127.0.0.1:1", at(t0), at(t1), reason)


def phase(agent: str, old: AgentPhase | None, new: AgentPhase, t: float) -> PhaseChanged:
    return PhaseChanged(agent, old, new, "r", at(t))


def test_heartbeats_coalesce_to_one_entry_per_agent() -> None:
    pending = PendingWrites(limit=10)
    for i in range(1000):
        pending.add_seen({A: at(i), B: at(i / 2)})
    assert len(pending) == 2
    batch = pending.take()
    assert batch.seen == {A: at(999), B: at(499.5)}


def test_agent_changes_coalesce_into_a_set() -> None:
    pending = PendingWrites(limit=1)
    for i in range(100):
        pending.add_event(AgentChanged(A, at(i), frozenset({"description"})))
    assert pending.take().described == {A}


def test_full_buffer_sheds_heartbeats_before_history() -> None:
    pending = PendingWrites(limit=3)
    pending.add_seen({A: at(1), B: at(1)})
    assert pending.add_event(opened(A, "s1", 1)).last_seen == 0
    shed = pending.add_event(opened(B, "s2", 2))  # full: the two last-seen times go
    assert (shed.history, shed.last_seen) == (0, 2)
    assert pending.add_event(phase(B, None, AgentPhase.ONLINE, 2)).history == 0
    shed = pending.add_event(phase(A, None, AgentPhase.ONLINE, 3))  # only history left
    assert (shed.history, shed.last_seen) == (1, 0)
    batch = pending.take()
    assert [e.at for e in batch.events] == [at(1), at(2), at(2)]
    assert batch.seen == {}
    assert batch.resync  # what was shed is rewritten from the fleet


def test_new_agents_heartbeats_are_dropped_when_full_but_known_ones_update() -> None:
    pending = PendingWrites(limit=1)
    pending.add_seen({A: at(1)})
    shed = pending.add_seen({A: at(5), B: at(5)})
    assert shed.last_seen == 1
    assert pending.take().seen == {A: at(5)}


def test_take_keeps_events_until_done_and_failed_keeps_everything() -> None:
    pending = PendingWrites(limit=100)
    pending.add_event(opened(A, "s1", 1))
    pending.add_seen({A: at(1)})
    batch = pending.take()
    pending.add_event(closed(A, "s1", 1, 2, "connection_closed"))  # arrives mid-flush
    pending.add_seen({A: at(2)})
    assert pending.failed(batch).last_seen == 0
    retry = pending.take()
    assert [type(e).__name__ for e in retry.events] == ["SessionOpened", "SessionClosed"]
    assert retry.seen == {A: at(2)}
    pending.done(retry)
    assert len(pending) == 0
    assert not pending.take()


def test_large_backlogs_are_taken_in_bounded_batches() -> None:
    pending = PendingWrites(limit=100, max_batch=4)
    for i in range(10):
        pending.add_event(phase(A, None, AgentPhase.ONLINE, i))
    pending.add_seen({A: at(10)})
    sizes = []
    while batch := pending.take():
        sizes.append((len(batch.events), bool(batch.seen)))
        pending.done(batch)
    # last-seen goes with the final batch, after every agent row exists
    assert sizes == [(4, False), (4, False), (2, True)]


def test_agent_state_is_the_result_of_events_in_order() -> None:
    events: list[HistoryEvent] = [
        opened(A, "s1", 1),
        phase(A, None, AgentPhase.ONLINE, 1),
        closed(A, "s1", 1, 5, "connection_closed"),
        phase(A, AgentPhase.ONLINE, AgentPhase.OFFLINE, 5),
        opened(B, "s2", 6),
    ]
    rows = {r.agent_id: r for r in plan_agent_states(events, lambda _id: None)}
    assert rows[A].status == "offline"
    assert (rows[A].first_at, rows[A].last_connected_at) == (at(1), at(1))
    assert (rows[A].last_disconnected_at, rows[A].disconnect_reason) == (
        at(5),
        "connection_closed",
    )
    # no phase change for B in this batch: the fleet's current phase, else implied
    assert rows[B].status == "online"
    assert rows[B].last_disconnected_at is None
    fleet_says = {B: "error"}
    rows = {r.agent_id: r for r in plan_agent_states(events, fleet_says.get)}
    assert rows[B].status == "error"


def test_sessions_closed_in_the_same_batch_are_not_inserted_twice() -> None:
    events: list[HistoryEvent] = [
        opened(A, "s1", 1),
        opened(B, "s2", 1),
        closed(A, "s1", 1, 2, "x"),
    ]
    to_open, to_close, changes = split_sessions(events)
    assert [e.session_id for e in to_open] == ["s2"]
    assert [e.session_id for e in to_close] == ["s1"]
    assert changes == []


def test_agent_attributes_become_valid_jsonb() -> None:
    value = {"b": b"\x00\xff", "nan": math.nan, "nul": "a\x00b", 1: (1, 2.5, None, True)}
    assert storable(value) == {
        "b": "AP8=",
        "nan": "nan",
        "nul": "a\ufffdb",
        "1": [1, 2.5, None, True],
    }
    assert "\\u0000" not in to_json(value)


def test_rejected_batches_are_split_until_the_bad_event_is_alone() -> None:
    pending = PendingWrites(limit=100)
    events = [phase(A, None, AgentPhase.ONLINE, i) for i in range(8)]
    for event in events:
        pending.add_event(event)
    bad = events[5]
    written: list[object] = []
    rejected: list[object] = []
    for _ in range(50):
        batch = pending.take()
        if not batch:
            break
        if bad in batch.events:
            if not pending.split(batch):
                rejected += batch.events
                pending.discard(batch)
        else:
            written += batch.events
            pending.done(batch)
    assert rejected == [bad]
    assert written == [e for e in events if e is not bad]  # in order
