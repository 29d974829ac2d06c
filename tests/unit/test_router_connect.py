"""Cutting the control plane's Connect answers into batches (services.router.connect)."""

from __future__ import annotations

from services.router.connect import batches
from voxmesh.router.v1 import dataplane_pb2


def answer(stream: int, message_bytes: int) -> dataplane_pb2.StreamAnswer:
    end = dataplane_pb2.StreamEnd(code=8, message="x" * message_bytes)
    return dataplane_pb2.StreamAnswer(stream=stream, end=end)


def test_batches_keep_the_order_and_stay_under_their_bound() -> None:
    answers = [answer(i, 100) for i in range(1, 11)]  # all of one size
    one = answers[0].ByteSize()
    for max_bytes, sizes in [
        (10 * one, [10]),
        (3 * one, [3, 3, 3, 1]),
        (3 * one + one // 2, [3, 3, 3, 1]),
        (one, [1] * 10),
        (1, [1] * 10),
    ]:
        cut = list(batches(answers, max_bytes))
        assert [len(b) for b in cut] == sizes, max_bytes
        assert [a for b in cut for a in b] == answers


def test_an_answer_over_the_bound_goes_alone() -> None:
    answers = [answer(1, 10), answer(2, 5000), answer(3, 10)]
    assert [len(b) for b in batches(answers, 1000)] == [1, 1, 1]
    assert list(batches([], 1000)) == []
