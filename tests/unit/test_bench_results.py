"""What a benchmark's result file records: enough to run it again."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from bench import common


def test_the_command_carries_the_settings_the_services_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run's instances take VOXMESH_* variables as settings, so the recorded command
    names them; other variables are no part of it."""
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    for name in [k for k in os.environ if k.startswith("VOXMESH_")]:
        monkeypatch.delenv(name)
    monkeypatch.setattr(sys, "argv", ["asr_density", "--max-n", "3"])
    monkeypatch.setenv("VOXMESH_ASR_FINAL_BEAM_SIZE", "1")
    monkeypatch.setenv("VOXMESH_ASR_CPU_THREADS", "2")
    monkeypatch.setenv("NOT_VOXMESH_SETTING", "x")
    path = common.write_result("asr_density", {"density_streams": 1})
    record = json.loads(path.read_text())
    assert record["command"] == (
        "VOXMESH_ASR_CPU_THREADS=2 VOXMESH_ASR_FINAL_BEAM_SIZE=1 "
        "python -m bench.asr_density --max-n 3"
    )
    assert record["density_streams"] == 1
