"""A pool's scaling configuration: bounds per capacity group and the policy's knobs.

Invalid values raise :class:`voxmesh.errors.SettingsError` naming the setting and the value.

Defaults are chosen by reasoning (docs/autoscaling.md, "Defaults"), not fitted to a trace.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.autoscaler.policy.inputs import CapacityGroup
from voxmesh.errors import SettingsError

__all__ = ["GroupLimits", "PoolPolicy"]


@dataclass(frozen=True)
class GroupLimits:
    """Bounds and timings of one capacity group."""

    min_count: int = 0
    """Fewest instances the group keeps (serving plus starting)."""
    max_count: int = 64
    """Most instances the group may have."""
    lead_time_s: float = 98.0
    """Seconds from requesting an instance to it SERVING (placement, provisioning, start-up)."""
    placement_deadline_s: float = 300.0
    """A starting instance older than this counts as a failed placement."""

    def __post_init__(self) -> None:
        if self.min_count < 0:
            raise SettingsError(f"GroupLimits.min_count must be >= 0, got {self.min_count}")
        if self.max_count < self.min_count:
            raise SettingsError(
                f"GroupLimits.max_count must be >= min_count ({self.min_count}), "
                f"got {self.max_count}"
            )
        if self.lead_time_s < 0:
            raise SettingsError(f"GroupLimits.lead_time_s must be >= 0, got {self.lead_time_s}")
        if self.placement_deadline_s <= 0:
            raise SettingsError(
                f"GroupLimits.placement_deadline_s must be > 0, got {self.placement_deadline_s}"
            )

    def clamp(self, count: int) -> int:
        """``count`` within ``[min_count, max_count]``."""
        return max(self.min_count, min(self.max_count, count))


def _on_demand_defaults() -> GroupLimits:
    return GroupLimits(min_count=1, max_count=64, lead_time_s=68.0, placement_deadline_s=240.0)


def _preemptible_defaults() -> GroupLimits:
    return GroupLimits(min_count=0, max_count=64, lead_time_s=98.0, placement_deadline_s=240.0)


@dataclass(frozen=True)
class PoolPolicy:
    """How one pool scales. Validated on construction; errors name the setting and value."""

    on_demand: GroupLimits = field(default_factory=_on_demand_defaults)
    """The on-demand group: the baseline (its ``min_count``) and the fallback."""
    preemptible: GroupLimits = field(default_factory=_preemptible_defaults)
    """The preemptible group: where bursts go first."""
    allow_scale_to_zero: bool = False
    """Whether ``on_demand.min_count`` may be 0 (a pool idle at night); otherwise it must be
    at least 1 so the pool always has an instance that cannot be reclaimed."""
    target_utilisation: float = 0.9
    """Fraction of the slots the policy plans to fill; the rest absorbs per-instance imbalance."""
    burst_sigmas: float = 3.0
    """Spare slots as a multiple of sqrt(demand): the Poisson-like fluctuation of the number
    of concurrent streams over one lead time (3 sigma: ~0.1% chance of running out)."""
    rise_quantile: float = 0.95
    """Spare slots also cover this quantile of the rises of demand within one lead time,
    measured over ``rise_history_s`` in units of sqrt(demand): the traffic's own burstiness,
    where ``burst_sigmas`` assumes independent arrivals."""
    rise_history_s: float = 3600.0
    """How much history the measured rises come from; they count once they span half of it
    (a short history is whatever happened in it). 0 disables the measurement."""
    trend_window_s: float = 120.0
    """Demand history used to estimate the growth rate (least-squares slope)."""
    trend_confidence_sigmas: float = 1.0
    """Growth is anticipated only beyond this many standard errors of the slope estimate."""
    tolerance: float = 0.05
    """Relative band around the current size in which a recommendation is ignored
    (unless real-time streams are queued)."""
    scale_up_cooldown_s: float = 10.0
    """After a scale-up, a scale-up asked only by the anticipated growth waits this long;
    measured demand, queued real-time streams and preemption replacements never wait."""
    scale_down_window_s: float = 200.0
    """Scale-down stabilisation: the pool's size is the largest recommendation in this window
    (the groups are split from it)."""
    scale_down_step: int = 2
    """Most instances one decision removes from the pool."""
    gpu_utilisation_limit: float = 0.9
    """An instance whose GPU is busier than this counts as full, whatever its stream count."""
    gpu_memory_limit: float = 0.9
    """An instance whose GPU memory is fuller than this counts as full."""
    real_time_factor_limit: float = 0.9
    """An instance whose real-time factor is above this counts as full (it barely keeps up)."""
    stale_after_s: float = 15.0
    """Signals older than this make the policy hold: no scale-down on missing information."""

    def __post_init__(self) -> None:
        if self.on_demand.min_count < 1 and not self.allow_scale_to_zero:
            raise SettingsError(
                "PoolPolicy.on_demand.min_count must be >= 1 unless allow_scale_to_zero, "
                f"got {self.on_demand.min_count}"
            )
        for name in (
            "target_utilisation",
            "gpu_utilisation_limit",
            "gpu_memory_limit",
            "rise_quantile",
        ):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise SettingsError(f"PoolPolicy.{name} must be in (0, 1], got {value}")
        if self.real_time_factor_limit <= 0:
            raise SettingsError(
                f"PoolPolicy.real_time_factor_limit must be > 0, got {self.real_time_factor_limit}"
            )
        for name in (
            "burst_sigmas",
            "tolerance",
            "scale_up_cooldown_s",
            "scale_down_window_s",
            "trend_window_s",
            "trend_confidence_sigmas",
            "rise_history_s",
            "stale_after_s",
        ):
            value = getattr(self, name)
            if value < 0:
                raise SettingsError(f"PoolPolicy.{name} must be >= 0, got {value}")
        if self.scale_down_step < 1:
            raise SettingsError(
                f"PoolPolicy.scale_down_step must be >= 1, got {self.scale_down_step}"
            )

    @property
    def longest_lead_time_s(self) -> float:
        """The slower group's lead time: the horizon over which rises are measured."""
        return max(self.on_demand.lead_time_s, self.preemptible.lead_time_s)

    def limits(self, group: CapacityGroup) -> GroupLimits:
        """The limits of one capacity group."""
        return self.on_demand if group is CapacityGroup.ON_DEMAND else self.preemptible
