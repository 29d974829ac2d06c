"""The event loop: replays a workload against one controller on the mesh model.

At equal times, events run in this order: instance and stream events, availability ticks,
controller evaluations, samples, arrivals. Controllers first evaluate after
``MeshParams.warmup_s`` and then every ``interval_s``, as a real evaluation loop would.
"""

from __future__ import annotations

import heapq
import math

from bench.sim.availability import AvailabilityTrace
from bench.sim.control import Controller
from bench.sim.mesh import OD, PE, Mesh, MeshParams
from bench.sim.record import RunRecord, Series
from bench.sim.workload import Workload

__all__ = ["simulate"]


def simulate(
    workload: Workload,
    availability: AvailabilityTrace,
    controller: Controller,
    params: MeshParams,
    initial_instances: int,
) -> RunRecord:
    """Replay ``workload`` against ``controller`` and return what happened."""
    mesh = Mesh(workload, availability, params)
    od0, pe0 = controller.initial_fleet(initial_instances, availability.at(0.0))
    mesh.start(OD, od0, 0.0, serving=True)
    mesh.start(PE, min(pe0, availability.at(0.0)), 0.0, serving=True)
    arrivals, heap = workload.arrivals, mesh.heap
    horizon = (arrivals[-1] if arrivals else 0.0) + params.tail_s
    n, i = len(arrivals), 0
    next_control = params.warmup_s if math.isfinite(controller.interval_s) else math.inf
    next_tick, next_sample = 0.0, 0.0
    series = Series()
    while True:
        t_arrival = arrivals[i] if i < n else math.inf
        t_event = heap[0][0] if heap else math.inf
        now = min(t_arrival, t_event, next_control, next_tick, next_sample)
        if now > horizon:
            break
        if now == t_event:
            at, seq, kind, payload = heapq.heappop(heap)
            mesh.event(at, seq, kind, payload)
        elif now == next_tick:
            mesh.availability_tick(now)
            mesh.admit(now)
            next_tick += availability.gap_s
        elif now == next_control:
            actions = controller.control(mesh.view(now))
            mesh.apply(OD, actions.on_demand, now)
            mesh.apply(PE, actions.preemptible, now)
            mesh.admit(now)
            next_control += controller.interval_s
        elif now == next_sample:
            mesh.sample(series, now)
            next_sample += params.sample_s
        else:
            mesh.arrive(i, now)
            i += 1
    mesh.admit(math.inf)
    mesh.close(horizon)
    mesh.record.series = series
    mesh.record.horizon_s = horizon
    return mesh.record
