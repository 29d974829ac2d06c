"""The failover bookkeeping still answers as the shared vectors record."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.vectors import failover

VECTORS: dict[str, Any] = json.loads(failover.PATH.read_text(encoding="utf-8"))


def test_the_file_is_what_the_generator_makes() -> None:
    # New cases or a changed behaviour: regenerate with `python -m tests.vectors.failover
    # --write`, and every other implementation must then answer the new file.
    assert failover.main([]) == 0


def test_the_vectors_cover_what_matters() -> None:
    log_ops = [op for case in VECTORS["replay_log"] for op in case["ops"]]
    assert any(op["op"] == "restart" and op["expect"] is False for op in log_ops)
    assert any(op["op"] == "metadata" and len(op["expect"]) == 2 for op in log_ops)
    assert any(op["op"] == "next" and op["expect"] is None for op in log_ops)
    assert any(not case["linear16"] for case in VECTORS["replay_log"])
    tracker_ops = [op for case in VECTORS["result_tracker"] for op in case["ops"]]
    assert any(op["op"] == "result" and op["expect"] is None for op in tracker_ops)
    assert any(
        op["op"] == "result" and op["expect"] not in (None, op["index"]) for op in tracker_ops
    )
    assert any(op["op"] == "event" and op["expect"] is False for op in tracker_ops)


@pytest.mark.parametrize("index", range(len(VECTORS["replay_log"])))
def test_replay_log(index: int) -> None:
    case = VECTORS["replay_log"][index]
    assert failover.replay_log_answers(case) == case["ops"]


@pytest.mark.parametrize("index", range(len(VECTORS["result_tracker"])))
def test_result_tracker(index: int) -> None:
    case = VECTORS["result_tracker"]
    assert failover.result_tracker_answers(case[index]) == case[index]["ops"]
