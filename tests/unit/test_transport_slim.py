"""transport/slim.py's LazyDeque: the deque operations websockets' frame queue uses."""

import pytest

from opamp_operator.transport.slim import LazyDeque


def test_it_behaves_as_a_deque_and_holds_nothing_once_empty() -> None:
    queue = LazyDeque()
    assert not queue
    queue.append(1)
    queue.append(2)
    assert len(queue) == 2
    assert queue.popleft() == 1
    queue.extendleft(reversed([8, 9]))  # as websockets' put_back does: 8, 9 first, in order
    assert [queue.popleft() for _ in range(3)] == [8, 9, 2]
    assert not queue
    assert queue._items is None
    with pytest.raises(IndexError):
        queue.popleft()
