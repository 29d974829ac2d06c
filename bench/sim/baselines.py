"""The usual autoscalers, re-implemented from their documented rules, as simulator controllers.

- static peak: the peak's instances on on-demand, all the time;
- Kubernetes HPA on GPU utilisation: ``desired = ceil(current x metric / target)``, tolerance
  0.1, 15 s sync, no scale-up stabilisation, 300 s scale-down stabilisation (largest
  recommendation in the window), scale-up limited to max(+4 pods, +100 %) per sync, pods not
  ready yet counted at 0 % when scaling up;
- Nomad Autoscaler target-value on GPU utilisation: ``factor = metric / target``, no action
  within ``1 +- threshold`` (0.01), ``count = ceil(count x factor)``, 10 s evaluation, 5 min
  cooldown after an action; with no running instance there is no metric, so it cannot scale
  from zero;
- SkyServe SpotHedge-style: request-rate autoscaling (demand averaged over 60 s, 20 s
  decisions, 300 s upscale / 1200 s downscale hysteresis) on spot replicas plus
  ``overprovision`` extra, and dynamic on-demand fallback for ``spot target - ready spot``
  (at most the target: no fallback for the extra replicas).
  Like SkyServe it does not act on preemption notices: a replica counts as ready until it is
  gone.

GPU utilisation is simulated as ``active streams / max_streams`` per instance (an instance at
its stream limit keeps its GPU busy).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from bench.sim.control import Actions, GroupView, MeshView, towards

__all__ = ["HpaGpu", "NomadTargetValue", "SpotHedge", "StaticPeak"]


def _mean_gpu_utilisation(group: GroupView, max_streams: int) -> float | None:
    if not group.serving_loads:
        return None
    return sum(group.serving_loads) / (len(group.serving_loads) * max_streams)


@dataclass
class StaticPeak:
    """Provision for the peak on on-demand and never change."""

    peak_instances: int
    """Instances that serve the workload's peak concurrency."""
    name: str = "static peak (on-demand)"
    interval_s: float = math.inf

    def initial_fleet(self, instances: int, preemptible_available: int) -> tuple[int, int]:
        """The peak fleet, from the start."""
        return self.peak_instances, 0

    def control(self, view: MeshView) -> Actions:
        """Never called (infinite interval)."""
        return Actions()


@dataclass
class HpaGpu:
    """Kubernetes HorizontalPodAutoscaler on GPU utilisation, on on-demand nodes."""

    target: float = 0.8
    tolerance: float = 0.1
    stabilisation_s: float = 300.0
    min_replicas: int = 1
    max_replicas: int = 256
    name: str = "Kubernetes HPA (GPU util)"
    interval_s: float = 15.0
    _recommendations: deque[tuple[float, int]] = field(default_factory=deque)

    def initial_fleet(self, instances: int, preemptible_available: int) -> tuple[int, int]:
        """All on on-demand."""
        return instances, 0

    def control(self, view: MeshView) -> Actions:
        """One HPA sync."""
        group = view.on_demand
        current = group.current
        utilisation = _mean_gpu_utilisation(group, view.max_streams)
        desired = current
        if utilisation is not None:
            ratio = utilisation / self.target
            if ratio > 1.0 and group.starting:
                # Pods not ready yet count as 0 % when scaling up.
                ratio = sum(group.serving_loads) / view.max_streams / current / self.target
            if abs(ratio - 1.0) > self.tolerance:
                base = current if ratio > 1.0 else group.serving
                desired = math.ceil(ratio * base)
        desired = min(desired, max(2 * current, current + 4))
        desired = max(self.min_replicas, min(self.max_replicas, desired))
        self._recommendations.append((view.now, desired))
        while self._recommendations[0][0] < view.now - self.stabilisation_s:
            self._recommendations.popleft()
        if desired < current:
            desired = min(current, max(r for _, r in self._recommendations))
        return Actions(on_demand=towards(group, desired))


@dataclass
class NomadTargetValue:
    """Nomad Autoscaler's target-value strategy on average GPU utilisation, on on-demand."""

    target: float = 0.8
    threshold: float = 0.01
    cooldown_s: float = 300.0
    min_count: int = 1
    max_count: int = 256
    name: str = "Nomad target-value (GPU util)"
    interval_s: float = 10.0
    _cooldown_until: float = -math.inf

    def initial_fleet(self, instances: int, preemptible_available: int) -> tuple[int, int]:
        """All on on-demand."""
        return instances, 0

    def control(self, view: MeshView) -> Actions:
        """One policy evaluation."""
        group = view.on_demand
        metric = _mean_gpu_utilisation(group, view.max_streams)
        if view.now < self._cooldown_until or metric is None:
            return Actions()  # in cooldown, or no metric (no running allocation)
        count = group.current
        factor = metric / self.target
        if 1.0 - self.threshold < factor < 1.0 + self.threshold:
            return Actions()
        new = math.ceil(count * factor) if count else math.ceil(factor)
        new = max(self.min_count, min(self.max_count, new))
        if new == count:
            return Actions()
        self._cooldown_until = view.now + self.cooldown_s
        return Actions(on_demand=towards(group, new))


@dataclass
class SpotHedge:
    """SkyServe's fallback request-rate autoscaler with spot over-provisioning."""

    streams_per_replica: float = 3.2
    """SkyServe's ``target_qps_per_replica`` translated to streams (Little's law): 80 % of an
    instance's stream limit by default."""
    overprovision: int = 2
    base_on_demand: int = 0
    min_replicas: int = 1
    max_replicas: int = 256
    window_s: float = 60.0
    upscale_delay_s: float = 300.0
    downscale_delay_s: float = 1200.0
    name: str = "SkyServe SpotHedge-style"
    interval_s: float = 20.0
    _demand: deque[tuple[float, int]] = field(default_factory=deque)
    _target: int = 0
    _up: int = 0
    _down: int = 0

    def initial_fleet(self, instances: int, preemptible_available: int) -> tuple[int, int]:
        """Spot replicas plus the over-provisioned ones, on-demand for what spot lacks."""
        self._target = max(self.min_replicas, instances)
        spot_target = self._target + self.overprovision - self.base_on_demand
        spot = min(preemptible_available, spot_target)
        return min(self.base_on_demand + spot_target - spot, self._target), spot

    def control(self, view: MeshView) -> Actions:
        """One decision interval."""
        self._demand.append((view.now, view.active_streams + view.queued))
        while self._demand[0][0] < view.now - self.window_s:
            self._demand.popleft()
        mean = sum(d for _, d in self._demand) / len(self._demand)
        wanted = math.ceil(mean / self.streams_per_replica)
        wanted = max(self.min_replicas, min(self.max_replicas, wanted))
        if self._target in (0, wanted):
            self._up = self._down = 0
            self._target = wanted if self._target == 0 else self._target
        elif wanted > self._target:
            self._up, self._down = self._up + 1, 0
            if self._up >= self.upscale_delay_s / self.interval_s:
                self._target, self._up = wanted, 0
        else:
            self._down, self._up = self._down + 1, 0
            if self._down >= self.downscale_delay_s / self.interval_s:
                self._target, self._down = wanted, 0
        spot_target = self._target + self.overprovision - self.base_on_demand
        spot = view.preemptible
        ready_spot = spot.serving + spot.reclaiming
        # No on-demand fallback for the over-provisioned replicas.
        on_demand = min(self.base_on_demand + max(0, spot_target - ready_spot), self._target)
        return Actions(
            on_demand=towards(view.on_demand, on_demand),
            preemptible=towards(spot, spot_target),
        )
