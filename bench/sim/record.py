"""What one simulated run records, and the figures reported from it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["RunRecord", "Series", "percentile_wait"]


@dataclass
class Series:
    """Sampled time series for the plots."""

    t: list[float] = field(default_factory=list)
    """Sample times, seconds."""
    demand: list[int] = field(default_factory=list)
    """Active plus queued streams."""
    queued: list[int] = field(default_factory=list)
    """Streams waiting in the router's queue."""
    on_demand_slots: list[int] = field(default_factory=list)
    """Stream slots of serving on-demand instances."""
    preemptible_slots: list[int] = field(default_factory=list)
    """Stream slots of serving preemptible instances."""


@dataclass
class RunRecord:
    """Counters filled in by the simulator during one run."""

    arrivals: int
    """Streams that arrived."""
    missed: bytearray
    """Per stream: 1 if it missed the SLO (late admission, late resume, or dropped)."""
    waits: list[float] = field(default_factory=list)
    """Admission waits of streams that queued (dropped ones count as the queue limit);
    streams admitted on arrival waited 0 and are not listed."""
    admitted: int = 0
    """New streams given a slot (on arrival or from the queue)."""
    resumed: int = 0
    """Interrupted streams given a slot again."""
    dropped_waiting: int = 0
    """New streams dropped after waiting the queue limit."""
    dropped_preemption: int = 0
    """Interrupted streams not resumed within the queue limit."""
    interrupted: int = 0
    """Stream interruptions by reclaimed instances."""
    instance_hours: list[float] = field(default_factory=lambda: [0.0, 0.0])
    """Billed GPU-hours per group: ``[on-demand, preemptible]``."""
    cold_starts: list[float] = field(default_factory=list)
    """Seconds from a stream arriving at a pool with no serving instance to one serving."""
    series: Series = field(default_factory=Series)
    """Plotted time series."""
    horizon_s: float = 0.0
    """Simulated time."""

    @property
    def slo_attainment(self) -> float:
        """Fraction of streams admitted (and resumed) within the SLO wait."""
        if not self.arrivals:
            return 1.0
        return 1.0 - sum(self.missed) / self.arrivals


def percentile_wait(record: RunRecord, q: float) -> float:
    """The ``q``-quantile (0..1) of admission waits over all arrivals (nearest rank)."""
    if not record.arrivals:
        return 0.0
    rank = max(1, math.ceil(q * record.arrivals))
    zeros = record.arrivals - len(record.waits)
    if rank <= zeros:
        return 0.0
    return sorted(record.waits)[rank - zeros - 1]
