"""The measured figures the simulator is calibrated with, or documented defaults.

``bench/results/calibration.json`` is written by the data plane's density benchmark when it is
run with ``--calibrate`` (a deliberate choice of run, not whichever ran last). Both a
flat shape (``{"asr_small.max_streams": 4, "asr_small.startup_seconds": 7.5}``) and a nested
one (``{"asr_small": {"max_streams": 4, "startup_seconds": 7.5}}``) are read. Provisioning
delays cannot be measured on one machine; they are the documented defaults unless the file
gives ``<pool>.provision_on_demand_seconds`` / ``<pool>.provision_preemptible_seconds``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_CALIBRATION_PATH", "Calibration", "load_calibration"]

DEFAULT_CALIBRATION_PATH = Path(__file__).resolve().parents[1] / "results" / "calibration.json"


@dataclass(frozen=True)
class Calibration:
    """Per-instance capacity and timings of one pool."""

    max_streams: int = 4
    """Concurrent streams one instance serves (the data plane's density figure)."""
    startup_s: float = 8.0
    """Process start to SERVING (model load included)."""
    on_demand_provision_s: float = 60.0
    """Requesting an on-demand GPU node until the process can start."""
    preemptible_provision_s: float = 90.0
    """The same for a preemptible node (placement is slower and retried more)."""
    source: str = "documented defaults (capacity 4 streams, start-up 8 s, provisioning 60/90 s)"
    """Where the figures came from, printed with every result."""

    @property
    def on_demand_lead_s(self) -> float:
        """Request to SERVING on on-demand capacity."""
        return self.on_demand_provision_s + self.startup_s

    @property
    def preemptible_lead_s(self) -> float:
        """Request to SERVING on preemptible capacity (once placed)."""
        return self.preemptible_provision_s + self.startup_s


def _lookup(raw: dict[str, Any], pool: str, key: str) -> Any:
    if f"{pool}.{key}" in raw:
        return raw[f"{pool}.{key}"]
    nested = raw.get(pool)
    if isinstance(nested, dict):
        return nested.get(key)
    return None


def load_calibration(path: Path = DEFAULT_CALIBRATION_PATH, pool: str = "asr_small") -> Calibration:
    """The calibration of ``pool`` from ``path``, falling back to the defaults per figure."""
    defaults = Calibration()
    if not path.is_file():
        return defaults
    raw = json.loads(path.read_text())
    if not isinstance(raw, dict):
        return defaults
    max_streams = _lookup(raw, pool, "max_streams")
    startup = _lookup(raw, pool, "startup_seconds")
    od = _lookup(raw, pool, "provision_on_demand_seconds")
    pe = _lookup(raw, pool, "provision_preemptible_seconds")
    used = [
        name
        for name, value in (
            ("max_streams", max_streams),
            ("startup_seconds", startup),
            ("provision_on_demand_seconds", od),
            ("provision_preemptible_seconds", pe),
        )
        if value is not None
    ]
    if not used:
        return defaults
    return Calibration(
        max_streams=int(max_streams) if max_streams is not None else defaults.max_streams,
        startup_s=float(startup) if startup is not None else defaults.startup_s,
        on_demand_provision_s=float(od) if od is not None else defaults.on_demand_provision_s,
        preemptible_provision_s=(float(pe) if pe is not None else defaults.preemptible_provision_s),
        source=f"{path.name} ({pool}: {', '.join(used)}; other figures: documented defaults)",
    )
