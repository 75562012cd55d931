"""After an API server outage, CR writes do not wait out every agent's own backoff."""

from __future__ import annotations

from opamp_operator.kube.mirror.pending import PendingUpdates


def failing(pending: PendingUpdates, agents: str, now: float, probe: float | None) -> None:
    """Each agent's write failed ten times at `now` (the last time with `probe`)."""
    for agent in agents:
        pending.mark(agent)
        assert pending.take(now) == agent
    for attempt in range(10):  # the backoff reaches its 30 s cap
        for agent in agents:
            pending.failed(agent, now, 30.0, probe_delay=probe if attempt == 9 else None)


def test_one_retry_stays_close_while_the_api_server_is_unreachable() -> None:
    pending = PendingUpdates(100)
    failing(pending, "abc", now=0.0, probe=2.0)
    due = pending.next_retry_at()
    assert due is not None and due <= 2.0  # one of them probes soon
    assert pending.take(2.0) is not None
    assert pending.take(2.0) is None  # the others keep their long backoff


def test_without_a_probe_every_retry_waits_out_its_backoff() -> None:
    pending = PendingUpdates(100)
    failing(pending, "ab", now=0.0, probe=None)
    assert pending.take(29.9) is None


def test_retry_all_now_makes_every_waiting_agent_due() -> None:
    pending = PendingUpdates(100)
    failing(pending, "abc", now=0.0, probe=None)
    assert pending.retry_all_now() == 3
    assert pending.next_retry_at() is None
    taken = {pending.take(0.0) for _ in range(3)}
    assert taken == {"a", "b", "c"}
    pending.failed("a", 0.0, 30.0)  # attempts are kept: the backoff goes on growing
    assert pending.take(29.9) is None
