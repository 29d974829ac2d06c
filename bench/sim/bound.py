"""What a policy that knows the future could do, given the real lead times.

Two references for the benchmark, both with a perfect forecast of demand and availability:

- :func:`perfect_forecast_bound`, a lower bound computed from the demand profile alone;
- :class:`PerfectForecast`, a controller that runs in the simulated mesh like the others
  (streams cannot move between instances, an instance drains before it goes, starts are billed).

The bound:

The oracle (``bench.sim.oracle``) has capacity the instant demand appears. No real policy
can: an instance serving at time ``tau`` has been billed since ``tau - lead`` (placement,
provisioning, start-up). So at every instant ``u`` a policy that admits every stream on
arrival is billed for at least ``max(ceil(active(tau) / max_streams) for tau in [u, u + lead])``
instances, even with a perfect forecast and perfect packing (streams moved between instances
for free, as the oracle does). Integrating that over the run gives this bound: the oracle plus
what the lead time alone costs. Any cost above it is the price of not knowing the future.

Pricing: while preemptible capacity is available each instant is priced at the preemptible
price with the preemptible lead time (with perfect knowledge preemptible is cheaper in every
respect: 0.35 x 98 s of start-up costs less than 1.0 x 68 s); during an outage, at the
on-demand price and lead time. Around the few availability changes this per-instant pricing is
an approximation (within one lead time of each change); elsewhere it is a true lower bound.
Time is sampled on a 1 s grid, taking the demand at each grid point, which can only lower
the bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from bench.sim.availability import AvailabilityTrace
from bench.sim.control import Actions, MeshView, towards
from bench.sim.mesh import MeshParams
from bench.sim.oracle import Profile, profile
from bench.sim.record import RunRecord
from bench.sim.workload import Workload

__all__ = ["PerfectForecast", "perfect_forecast_bound", "rises_beyond"]

_STEP_S = 1.0


def _ahead_max(needed: np.ndarray, lead_s: float) -> np.ndarray:
    """Per grid point ``k``: the largest ``needed`` over the points ``k .. k + lead``."""
    width = max(1, math.floor(lead_s / _STEP_S)) + 1
    padded = np.concatenate([needed, np.full(width - 1, needed[-1] if needed.size else 0)])
    return np.asarray(sliding_window_view(padded, width).max(axis=1))


def _grid_demand(workload: Workload, horizon: float) -> np.ndarray:
    """Concurrent streams (all admitted on arrival) at each point of the 1 s grid."""
    grid = np.arange(0.0, horizon, _STEP_S)
    prof = profile(workload)
    at = np.searchsorted(prof.times, grid, side="right") - 1
    return np.where(at >= 0, prof.active[np.maximum(at, 0)], 0)


def perfect_forecast_bound(
    workload: Workload, availability: AvailabilityTrace, params: MeshParams
) -> RunRecord:
    """Billed GPU-hours, per group, of the cheapest schedule that has every instance serving
    by the time the oracle needs it, given the real lead times (see the module docstring)."""
    cal = params.calibration
    record = RunRecord(arrivals=len(workload.arrivals), missed=bytearray(len(workload.arrivals)))
    horizon = (workload.arrivals[-1] if workload.arrivals else 0.0) + params.tail_s
    record.horizon_s = horizon
    if not workload.arrivals:
        return record
    needed = np.ceil(_grid_demand(workload, horizon) / cal.max_streams)
    grid = np.arange(needed.size) * _STEP_S
    data = np.asarray(availability.data)
    available = data[(grid // availability.gap_s).astype(np.int64) % data.size] > 0
    on_demand = _ahead_max(needed, cal.on_demand_lead_s)[~available].sum()
    preemptible = _ahead_max(needed, cal.preemptible_lead_s)[available].sum()
    record.instance_hours = [
        float(on_demand * _STEP_S / 3600.0),
        float(preemptible * _STEP_S / 3600.0),
    ]
    return record


def rises_beyond(
    workload: Workload, horizon: float, lead_s: float, spare_slots: float, skip_s: float
) -> tuple[float, float]:
    """How often demand outgrows a margin of ``m x sqrt(demand)`` within one lead time.

    ``m`` is chosen so that the margin averages ``spare_slots`` over the run. Returns ``(m,
    share of arrivals after skip_s at which demand rises by more than the margin within the
    following lead time)``: a policy that sizes capacity from the demand it sees, with that
    much spare on average, is short at those arrivals unless it foresaw the rise.
    """
    demand = _grid_demand(workload, horizon).astype(float)
    if not demand.size:
        return 0.0, 0.0
    root = np.sqrt(np.maximum(demand, 1.0))
    sigmas = max(0.0, spare_slots) / float(root.mean())
    rise = _ahead_max(demand, lead_s) - demand
    short = rise > sigmas * root
    arrivals = np.asarray(workload.arrivals)
    index = (arrivals[arrivals >= skip_s] // _STEP_S).astype(np.int64)
    index = index[index < demand.size]
    return sigmas, float(short[index].mean()) if index.size else 0.0


@dataclass
class PerfectForecast:
    """A controller that reads the future: demand (every stream admitted on arrival) and
    preemptible availability. It has no margin and no stabilisation, because it needs none.

    At each evaluation it holds the instances the busiest moment of the next lead time plus one
    interval needs (capacity requested now serves one lead time from now, and the next chance
    to ask is one interval later). New capacity goes to preemptible when preemptible will still
    be available when it serves, otherwise to on-demand; the group being left keeps what the
    other one does not serve yet, so no capacity is dropped during a hand-over.
    """

    demand: Profile
    """Concurrent streams over time if every stream is admitted on arrival."""
    availability: AvailabilityTrace
    """Preemptible capacity over time."""
    on_demand_lead_s: float
    """Request to SERVING on on-demand capacity."""
    preemptible_lead_s: float
    """Request to SERVING on preemptible capacity."""
    name: str = "perfect forecast (reference)"
    interval_s: float = 5.0

    def _needed(self, now: float, lead_s: float, max_streams: int) -> int:
        """Instances the busiest moment of ``[now, now + lead + interval]`` needs."""
        times, active = self.demand.times, self.demand.active
        first = max(0, int(np.searchsorted(times, now, side="right")) - 1)
        last = int(np.searchsorted(times, now + lead_s + self.interval_s, side="right"))
        busiest = int(active[first:last].max(initial=0))
        return math.ceil(busiest / max_streams)

    def _preemptible_serves(self, now: float) -> bool:
        """Whether preemptible capacity requested now would be placed and then serve."""
        arrival = now + self.preemptible_lead_s + self.interval_s
        return self.availability.at(now) > 0 and self.availability.at(arrival) > 0

    def initial_fleet(self, instances: int, preemptible_available: int) -> tuple[int, int]:
        """Preemptible when there is any, otherwise on-demand."""
        preemptible = min(instances, preemptible_available)
        return instances - preemptible, preemptible

    def control(self, view: MeshView) -> Actions:
        """Hold what the next lead time needs, on the group that will serve it."""
        od, pe = view.on_demand, view.preemptible
        if self._preemptible_serves(view.now):
            need = self._needed(view.now, self.preemptible_lead_s, view.max_streams)
            return Actions(
                on_demand=towards(od, min(od.current, max(0, need - pe.serving))),
                preemptible=towards(pe, need),
            )
        need = self._needed(view.now, self.on_demand_lead_s, view.max_streams)
        return Actions(
            on_demand=towards(od, need),
            preemptible=towards(pe, min(pe.current, max(0, need - od.serving))),
        )
