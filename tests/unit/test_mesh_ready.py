"""The ready line a service prints for its launcher (voxmesh.mesh.process)."""

from __future__ import annotations

import json
import sys

import pytest

from voxmesh.mesh.process import READY_PREFIX, announce_ready


class _Recorder:
    """A stdout that keeps each write apart."""

    def __init__(self) -> None:
        self.writes: list[str] = []
        self.flushed = 0

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        self.flushed += 1


def test_the_ready_line_goes_out_whole_in_one_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unbuffered, as launchers run services, ``print`` wrote the line and its newline
    apart, and the router's data path, logging on the same pipe, once landed a line of
    its own between them: the launcher never saw the router ready."""
    out = _Recorder()
    monkeypatch.setattr(sys, "stdout", out)
    announce_ready({"port": 7, "pools": ["asr_small"]})
    assert len(out.writes) == 1 and out.flushed == 1
    line = out.writes[0]
    assert line.startswith(READY_PREFIX) and line.endswith("\n") and line.count("\n") == 1
    assert json.loads(line[len(READY_PREFIX) :]) == {"port": 7, "pools": ["asr_small"]}
