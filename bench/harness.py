"""Where ``bench/router_overhead.py`` and ``bench/router_setup.py`` take their load
generator, backend and relay floors, and how they start and watch processes.

Two harnesses run the same benchmark:

* ``python``: ``bench/loadgen.py``, ``tests.doubles.fake_asr`` and the grpc.aio floor
  (``bench/grpc_relay_floor.py``), each in its own process;
* ``native``: their Go ports from ``bench/native`` (``make bench-native`` builds them
  into ``.tools/bin``), the same flags, stdout protocol and behaviour at a fraction of
  the CPU, so that the top levels measure the proxy rather than the harness; it keeps
  the grpc.aio floor and adds the grpc-go one as the ``native_floor`` mode.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

__all__ = [
    "HARNESSES",
    "NATIVE_BINARIES",
    "Harness",
    "cpu_seconds",
    "default_harness",
    "harness",
    "harness_env",
    "spawn",
    "wait_served",
]

ROOT = Path(__file__).resolve().parents[1]
NATIVE_BIN = ROOT / ".tools" / "bin"
NATIVE_BINARIES = {
    "loadgen": NATIVE_BIN / "voxmesh-loadgen",
    "backend": NATIVE_BIN / "voxmesh-fakebackend",
    "floor": NATIVE_BIN / "voxmesh-relayfloor",
}
"""The Go programs of the native harness."""
HARNESSES = ("python", "native")
_PYTHON_FLOOR = [sys.executable, "-m", "bench.grpc_relay_floor"]


@dataclass(frozen=True)
class Harness:
    """The commands of one harness; each takes the flags of its Python original."""

    name: str
    """``python`` or ``native``."""
    loadgen: list[str]
    """The load generator (``bench/loadgen.py``'s flags and stdout protocol)."""
    backend: list[str]
    """The fake backend (``tests.doubles.fake_asr``'s flags, ``PORT <n>`` when serving)."""
    floors: dict[str, list[str]] = field(default_factory=dict)
    """Relay floors by mode (``--backend host:port --port 0``, ``PORT <n>`` when serving)."""
    description: dict[str, str] = field(default_factory=dict)
    """What each process is, for the result file."""


def default_harness() -> str:
    """``native`` when every Go program is built, else ``python``."""
    return "native" if all(p.exists() for p in NATIVE_BINARIES.values()) else "python"


def harness(name: str) -> Harness:
    """The harness called ``name``; ``native`` needs ``make bench-native`` first."""
    if name == "python":
        return Harness(
            name,
            loadgen=[sys.executable, "-m", "bench.loadgen"],
            backend=[sys.executable, "-m", "tests.doubles.fake_asr"],
            floors={"floor": _PYTHON_FLOOR},
            description={
                "loadgen": "bench/loadgen.py (asyncio, one process)",
                "backend": "tests.doubles.fake_asr (a test double, no model)",
            },
        )
    if name != "native":
        raise ValueError(f"unknown harness {name!r}: one of {', '.join(HARNESSES)}")
    missing = [str(p) for p in NATIVE_BINARIES.values() if not p.exists()]
    if missing:
        raise FileNotFoundError(
            f"the native harness is not built ({', '.join(missing)}): run make bench-native"
        )
    return Harness(
        name,
        loadgen=[str(NATIVE_BINARIES["loadgen"])],
        backend=[str(NATIVE_BINARIES["backend"])],
        floors={"floor": _PYTHON_FLOOR, "native_floor": [str(NATIVE_BINARIES["floor"])]},
        description={
            "loadgen": "bench/native/cmd/loadgen (Go port of bench/loadgen.py)",
            "backend": "bench/native/cmd/fakebackend (Go benchmark double of "
            "tests.doubles.fake_asr, no model)",
            "native_floor": "bench/native/cmd/relayfloor: grpc-go relay of raw bytes, nothing else",
        },
    )


def harness_env() -> dict[str, str]:
    """The environment of every process of a run: this checkout importable."""
    return {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}


def spawn(args: list[str], pattern: str, log: Path) -> tuple[subprocess.Popen[str], int]:
    """Starts a process and waits for its ready line (``pattern``); returns it and the
    port the line names (the pattern's first group; 0 for a pattern without one)."""
    with log.open("w") as err:
        proc = subprocess.Popen(
            args, cwd=ROOT, env=harness_env(), stdout=subprocess.PIPE, stderr=err, text=True
        )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        match = re.search(pattern, line)
        if match:
            return proc, int(match.group(1)) if match.groups() else 0
    proc.kill()
    raise RuntimeError(f"{args[:3]} did not start: {log.read_text()[-2000:]}")


def wait_served(port: int, h: Harness) -> None:
    """Runs one short stream through the proxy on ``port`` until it succeeds (for the
    router: once discovery found the backend)."""
    probe = [*h.loadgen, "--target", f"127.0.0.1:{port}",
             "--streams", "1", "--channels", "1", "--ramp", "0", "--warmup", "0",
             "--duration", "0.3"]  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        out = subprocess.run(
            probe, check=False, cwd=ROOT, env=harness_env(), capture_output=True, text=True
        )
        lines = out.stdout.strip().splitlines()
        if lines and json.loads(lines[-1])["streams_ok"] == 1:
            return
    raise RuntimeError(f"nothing on port {port} served the probe stream")


def cpu_seconds(pid: int, *, children: bool = True) -> float:
    """User + system CPU seconds of a process and (unless not ``children``) its children
    (nginx workers)."""
    proc = psutil.Process(pid)
    total = 0.0
    for p in [proc, *(proc.children(recursive=True) if children else ())]:
        times = p.cpu_times()
        total += times.user + times.system
    return total
