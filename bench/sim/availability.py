"""Preemptible capacity over time: how many preemptible instances can be held at each tick.

The JSON shape is SkyPilot's spot-availability trace format::

    {"metadata": {"gap_seconds": 300}, "data": [available instances per tick, ...]}

The synthetic generator reproduces what SkyPilot's published spot V100 measurements show:
zero availability 16-62 % of the time, in spells averaging 1-8 h and lasting up to 86 h, full
availability otherwise, for long stretches.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "AvailabilityStats",
    "AvailabilityTrace",
    "always_available",
    "load_trace",
    "synthetic_spot_trace",
]


@dataclass(frozen=True)
class AvailabilityStats:
    """What a trace looks like, in the terms the published measurements use."""

    zero_fraction: float
    """Fraction of the time with no preemptible instance available."""
    outages: int
    """Number of zero-availability spells."""
    mean_outage_h: float
    """Mean length of a zero-availability spell, hours (0 when there is none)."""
    max_outage_h: float
    """Longest zero-availability spell, hours."""


@dataclass(frozen=True)
class AvailabilityTrace:
    """Available preemptible instances per tick; the trace repeats past its end."""

    name: str
    """Where it came from."""
    gap_s: float
    """Tick length in seconds."""
    data: tuple[int, ...]
    """Instances available during each tick."""

    def __post_init__(self) -> None:
        if self.gap_s <= 0 or not self.data:
            raise ValueError("AvailabilityTrace needs gap_s > 0 and at least one tick")

    def at(self, t: float) -> int:
        """Instances available at time ``t`` (seconds from the start)."""
        return self.data[int(t // self.gap_s) % len(self.data)]

    def stats(self) -> AvailabilityStats:
        """Zero-availability fraction and spells."""
        spells: list[int] = []
        run = 0
        for value in (*self.data, 1):
            if value == 0:
                run += 1
            elif run:
                spells.append(run)
                run = 0
        hours = [spell * self.gap_s / 3600.0 for spell in spells]
        return AvailabilityStats(
            zero_fraction=sum(spells) / len(self.data),
            outages=len(spells),
            mean_outage_h=sum(hours) / len(hours) if hours else 0.0,
            max_outage_h=max(hours, default=0.0),
        )


def load_trace(path: Path) -> AvailabilityTrace:
    """A real trace in the JSON shape above."""
    raw = json.loads(path.read_text())
    return AvailabilityTrace(
        name=path.name,
        gap_s=float(raw["metadata"]["gap_seconds"]),
        data=tuple(int(v) for v in raw["data"]),
    )


def always_available(capacity: int = 10_000, gap_s: float = 300.0) -> AvailabilityTrace:
    """Preemptible capacity that never runs out."""
    return AvailabilityTrace(name="always available", gap_s=gap_s, data=(capacity,))


def synthetic_spot_trace(
    seed: int,
    duration_s: float,
    *,
    gap_s: float = 300.0,
    zero_fraction: float = 0.35,
    mean_outage_h: float = 4.0,
    max_outage_h: float = 86.0,
    capacity: int = 10_000,
    start_available: bool = True,
) -> AvailabilityTrace:
    """Alternating available / unavailable spells with exponential lengths.

    Outages have mean ``mean_outage_h`` (clipped to one tick .. ``max_outage_h``); available
    spells have the mean that makes the long-run zero fraction ``zero_fraction``. The defaults
    sit inside SkyPilot's measured ranges (16-62 %, 1-8 h, <= 86 h).
    """
    if not 0.0 < zero_fraction < 1.0:
        raise ValueError(f"zero_fraction must be in (0, 1), got {zero_fraction}")
    rng = np.random.default_rng(seed)
    mean_up_h = mean_outage_h * (1.0 - zero_fraction) / zero_fraction
    ticks = math.ceil(duration_s / gap_s)
    data: list[int] = []
    available = start_available
    while len(data) < ticks:
        if available:
            hours = rng.exponential(mean_up_h)
        else:
            hours = min(max_outage_h, rng.exponential(mean_outage_h))
        length = max(1, round(hours * 3600.0 / gap_s))
        data.extend([capacity if available else 0] * length)
        available = not available
    return AvailabilityTrace(
        name=(
            f"synthetic spot (seed {seed}: zero {zero_fraction:.0%} of the time in spells "
            f"averaging {mean_outage_h:g} h, max {max_outage_h:g} h)"
        ),
        gap_s=gap_s,
        data=tuple(data[:ticks]),
    )
