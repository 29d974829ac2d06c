"""What a benchmark's result file records: enough to run it again."""

from __future__ import annotations

import importlib.machinery
import json
import os
import sys
import types
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


def test_the_command_names_the_module_that_ran_not_the_results_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``bench.router_overhead --interim-every 10`` writes ``router_overhead_interim10``:
    its command named a module ``bench.router_overhead_interim10`` that does not exist."""
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    for name in [k for k in os.environ if k.startswith("VOXMESH_")]:
        monkeypatch.delenv(name)
    main = types.ModuleType("__main__")
    main.__spec__ = importlib.machinery.ModuleSpec("bench.router_overhead", None)
    monkeypatch.setitem(sys.modules, "__main__", main)
    monkeypatch.setattr(sys, "argv", ["router_overhead", "--interim-every", "10"])
    path = common.write_result("router_overhead_interim10", {})
    assert path.name == "router_overhead_interim10.json"
    assert json.loads(path.read_text())["command"] == (
        "python -m bench.router_overhead --interim-every 10"
    )
