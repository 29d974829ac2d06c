"""Where ``bench/router_overhead.py`` takes its load generator, backend and relay floors.

Two harnesses run the same benchmark:

* ``python``: ``bench/loadgen.py``, ``tests.doubles.fake_asr`` and the grpc.aio floor
  (``bench/grpc_relay_floor.py``), each in its own process;
* ``native``: their Go ports from ``bench/native`` (``make bench-native`` builds them
  into ``.tools/bin``), the same flags, stdout protocol and behaviour at a fraction of
  the CPU, so that the top levels measure the proxy rather than the harness; it keeps
  the grpc.aio floor and adds the grpc-go one as the ``native_floor`` mode.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["HARNESSES", "NATIVE_BINARIES", "Harness", "default_harness", "harness"]

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
