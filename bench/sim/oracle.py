"""The demand profile of a workload and the oracle: capacity equal to demand, no delay, on
the cheapest capacity available at each moment (perfect packing: ceil(active / max_streams)
instances)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bench.sim.availability import AvailabilityTrace
from bench.sim.mesh import MeshParams
from bench.sim.record import RunRecord, Series
from bench.sim.workload import Workload

__all__ = ["Profile", "fractional_gpu_hours", "oracle", "profile"]


@dataclass(frozen=True)
class Profile:
    """Concurrent streams over time if every stream were admitted on arrival."""

    times: np.ndarray
    """Breakpoints, seconds, sorted."""
    active: np.ndarray
    """Active streams from each breakpoint to the next."""

    def peak_instances(self, max_streams: int) -> int:
        """Instances that serve the peak concurrency."""
        return math.ceil(int(self.active.max(initial=0)) / max_streams)

    def instances_before(self, t: float, max_streams: int) -> int:
        """Instances the busiest moment before ``t`` needs (at least 1)."""
        window = self.active[self.times < t]
        return max(1, math.ceil(int(window.max(initial=0)) / max_streams))


def profile(workload: Workload, extra_breaks: np.ndarray | None = None) -> Profile:
    """Sweep starts and ends (ends first on ties) into a step function of concurrency."""
    starts = np.asarray(workload.arrivals, dtype=float)
    ends = starts + np.asarray(workload.durations, dtype=float)
    breaks = np.zeros(0) if extra_breaks is None else extra_breaks
    times = np.concatenate([ends, starts, breaks])
    deltas = np.concatenate([-np.ones(ends.size), np.ones(starts.size), np.zeros(breaks.size)])
    order = np.lexsort((deltas, times))
    return Profile(times=times[order], active=np.cumsum(deltas[order]).astype(np.int64))


def oracle(workload: Workload, availability: AvailabilityTrace, params: MeshParams) -> RunRecord:
    """GPU-hours and series of the oracle over the same horizon as the simulated runs."""
    cap = params.calibration.max_streams
    horizon = (workload.arrivals[-1] if workload.arrivals else 0.0) + params.tail_s
    ticks = np.arange(0.0, horizon, availability.gap_s)
    samples = np.arange(0.0, horizon + 1e-9, params.sample_s)
    prof = profile(workload, np.concatenate([ticks, [horizon]]))
    inside = prof.times <= horizon
    times, active = prof.times[inside], prof.active[inside]
    dt = np.diff(times, append=horizon)
    need = np.ceil(active / cap)
    data = np.asarray(availability.data)
    available = data[(times // availability.gap_s).astype(np.int64) % data.size]
    pe = np.minimum(need, available)
    record = RunRecord(arrivals=len(workload.arrivals), missed=bytearray(len(workload.arrivals)))
    record.instance_hours = [
        float(((need - pe) * dt).sum() / 3600.0),
        float((pe * dt).sum() / 3600.0),
    ]
    at = np.searchsorted(times, samples, side="right") - 1
    sampled_need, sampled_pe = need[at], pe[at]
    record.series = Series(
        t=samples.tolist(),
        demand=active[at].tolist(),
        queued=[0] * samples.size,
        on_demand_slots=((sampled_need - sampled_pe) * cap).astype(int).tolist(),
        preemptible_slots=(sampled_pe * cap).astype(int).tolist(),
    )
    record.horizon_s = horizon
    return record


def fractional_gpu_hours(workload: Workload, params: MeshParams) -> float:
    """GPU-hours if capacity came in fractions of an instance (``active / max_streams``): how
    much of the oracle's cost is whole-instance granularity (the oracle itself rounds up)."""
    horizon = (workload.arrivals[-1] if workload.arrivals else 0.0) + params.tail_s
    prof = profile(workload, np.asarray([horizon]))
    inside = prof.times <= horizon
    times, active = prof.times[inside], prof.active[inside]
    dt = np.diff(times, append=horizon)
    return float((active * dt).sum() / params.calibration.max_streams / 3600.0)
