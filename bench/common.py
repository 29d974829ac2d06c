"""What every benchmark shares: result files, percentiles, the machine it ran on."""

from __future__ import annotations

import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

__all__ = ["RESULTS", "machine", "metric_value", "percentile", "write_result"]

RESULTS = Path(__file__).resolve().parent / "results"


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def metric_value(metrics_port: int, sample: str) -> float:
    """The value of one sample (name with its labels, as exposed, e.g.
    ``x_total{pool="a"}``) on a local /metrics endpoint; 0 if it is not there."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=False).stdout
    except OSError:
        return ""


def machine() -> dict[str, Any]:
    """Where the benchmark ran, and on which code: ``git_dirty`` is true when tracked
    files differed from ``git_rev`` (results meant to be committed must not be)."""
    rev = _git("rev-parse", "--short", "HEAD").strip()
    # Results written by earlier benchmarks of the same run are not a change of code.
    dirty = bool(
        _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results").strip()
    )
    return {
        "cpu_count": os.cpu_count(),
        **_cpu(),
        "memory_bytes": psutil.virtual_memory().total,
        "python": platform.python_version(),
        "git_rev": rev,
        "git_dirty": dirty,
        "gpu": "none",
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
    }


_SIMD_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8")
"""CPU features CTranslate2's int8 and float kernels use: hosts with and without AVX-512
differ several times in encode speed, so results name them."""


def _cpu() -> dict[str, Any]:
    """Model, clock and SIMD features of the CPU (from /proc/cpuinfo where there is one)."""
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    flags = set(info.get("flags", "").split())
    return {
        "cpu_model": info.get("model name") or platform.processor() or platform.machine(),
        "cpu_mhz": round(float(info["cpu MHz"])) if "cpu MHz" in info else None,
        "cpu_simd": [f for f in _SIMD_FLAGS if f in flags],
    }


def _running_module(name: str) -> str:
    """The benchmark module this process runs (``python -m bench.X``): a result's name
    may differ from it (``router_overhead_interim10`` comes from ``bench.router_overhead``)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name.startswith("bench."):
        return str(spec.name)
    return f"bench.{name}"


def write_result(name: str, result: dict[str, Any]) -> Path:
    """Writes ``bench/results/<name>.json`` with the command and the machine."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    # Services started by a benchmark take their settings from VOXMESH_* variables
    # too: they are part of the command that reproduces the run.
    settings = [
        f"{k}={shlex.quote(v)}" for k, v in sorted(os.environ.items()) if k.startswith("VOXMESH_")
    ]
    run = shlex.join(["python", "-m", _running_module(name), *sys.argv[1:]])
    payload = {
        "benchmark": name,
        "command": " ".join([*settings, run]),
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        **result,
    }
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    print(f"wrote {path}")
    if payload["machine"]["git_dirty"]:
        print(
            f"warning: tracked files differ from {payload['machine']['git_rev']}: these "
            "results are not those of a commit; commit first, then run again to publish them"
        )
    return path
