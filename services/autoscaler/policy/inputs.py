"""What the policy sees of a pool at one evaluation: demand, instances per group, GPU load.

The signals source aggregates instance and router telemetry into one :class:`PoolSignals` per
pool; the scale target contributes the per-group instance counts. All counts are snapshots
taken at ``PoolSignals.age_s`` seconds before the evaluation.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from voxmesh.discovery.base import CAPACITY_ON_DEMAND, CAPACITY_PREEMPTIBLE

__all__ = ["CapacityGroup", "GroupSignals", "InstanceSignals", "PoolSignals"]


class CapacityGroup(enum.Enum):
    """The two capacity groups of a hybrid pool (values match discovery's ``capacity_class``)."""

    ON_DEMAND = CAPACITY_ON_DEMAND
    """Always obtainable, full price: the pool's baseline and the fallback."""
    PREEMPTIBLE = CAPACITY_PREEMPTIBLE
    """Cheaper, may be unobtainable or reclaimed with a short notice: where bursts go first."""


@dataclass(frozen=True)
class InstanceSignals:
    """The load of one serving instance, from its Telemetry stream."""

    group: CapacityGroup
    """The capacity group the instance runs in."""
    active_streams: int
    """Streams the instance is serving now."""
    gpu_utilisation: float | None = None
    """GPU busy ratio in [0, 1] (NVML); None when the instance has no GPU."""
    gpu_memory_ratio: float | None = None
    """Used / total GPU memory in [0, 1]; None when the instance has no GPU."""
    real_time_factor: float | None = None
    """Processing time over audio time of recent work; None before the first chunk."""


@dataclass(frozen=True)
class GroupSignals:
    """Instance counts of one capacity group, as the scale target reports them.

    The groups are disjoint: an instance is counted once, in the first state that applies
    among reclaiming, draining, serving and starting.
    """

    serving: int = 0
    """Instances that accept streams (running and SERVING, not draining, not reclaimed)."""
    starting: int = 0
    """Instances requested but not serving yet: placing, provisioning or loading the model."""
    draining: int = 0
    """Instances draining on our request: no new streams, removed once empty."""
    reclaiming: int = 0
    """Instances with a preemption notice (node drain, termination notice): about to vanish."""
    placement_failing: bool = False
    """True while the scheduler reports it cannot place new instances in this group
    (failed task-group allocations, a blocked evaluation)."""
    oldest_starting_s: float = 0.0
    """Age of the oldest starting instance in seconds (0 when none); a value past the group's
    placement deadline counts as a failing placement even when the scheduler says nothing."""

    def __post_init__(self) -> None:
        for name in ("serving", "starting", "draining", "reclaiming"):
            if getattr(self, name) < 0:
                raise ValueError(f"GroupSignals.{name} must be >= 0, got {getattr(self, name)}")

    @property
    def current(self) -> int:
        """Instances that count towards the group's desired size: serving plus starting."""
        return self.serving + self.starting


@dataclass(frozen=True)
class PoolSignals:
    """Everything the policy reads about one model pool at one evaluation."""

    pool: str
    """Pool name (``asr_small``, ``asr_large``)."""
    max_streams: int
    """Per-instance admission limit: the most concurrent streams one instance serves."""
    active_streams: int
    """Streams being served by any instance of the pool (draining and reclaimed ones too)."""
    queued_realtime: int = 0
    """Real-time streams waiting in the router's admission queue for a free slot."""
    queued_batch: int = 0
    """Batch (file) streams waiting in the router's admission queue."""
    on_demand: GroupSignals = GroupSignals()
    """Instance counts of the on-demand group."""
    preemptible: GroupSignals = GroupSignals()
    """Instance counts of the preemptible group."""
    instances: tuple[InstanceSignals, ...] = ()
    """Load of each serving instance, for the GPU guard; may be empty (no telemetry yet)."""
    age_s: float = 0.0
    """Seconds since the oldest signal used here was measured."""
    demand_age_s: float | None = None
    """Seconds since the oldest signal of the demand (the routers' queued and in-flight
    streams) was measured; ``None`` when the source does not tell it apart (then
    ``age_s``). Fresh demand with stale signals (an instance's telemetry is silent) may
    still grow the pool, never shrink it."""

    def __post_init__(self) -> None:
        if self.max_streams < 1:
            raise ValueError(f"PoolSignals.max_streams must be >= 1, got {self.max_streams}")
        for name in ("active_streams", "queued_realtime", "queued_batch"):
            if getattr(self, name) < 0:
                raise ValueError(f"PoolSignals.{name} must be >= 0, got {getattr(self, name)}")

    @property
    def demand_age(self) -> float:
        """Age of the demand: ``demand_age_s``, or ``age_s`` when that is not known."""
        return self.age_s if self.demand_age_s is None else self.demand_age_s

    @property
    def queued(self) -> int:
        """All streams waiting for a slot."""
        return self.queued_realtime + self.queued_batch

    @property
    def demand(self) -> int:
        """Streams that want a slot now: active plus queued."""
        return self.active_streams + self.queued
