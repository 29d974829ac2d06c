"""What the policy returns: a decision per capacity group, and the state it carries forward."""

from __future__ import annotations

from dataclasses import dataclass

from services.autoscaler.policy.inputs import CapacityGroup

__all__ = ["Decision", "GroupDecision", "PolicyState", "Recommendation"]


@dataclass(frozen=True)
class Recommendation:
    """The unstabilised per-group sizes one evaluation asked for."""

    at: float
    """Evaluation time (the ``now`` given to ``decide``)."""
    on_demand: int
    """On-demand instances recommended."""
    preemptible: int
    """Preemptible instances recommended."""


@dataclass(frozen=True)
class PolicyState:
    """The policy's memory between evaluations of one pool; start from ``PolicyState()``."""

    demand_samples: tuple[tuple[float, int], ...] = ()
    """``(time, demand)`` of the evaluations inside the trend window, oldest first."""
    recommendations: tuple[Recommendation, ...] = ()
    """Recommendations inside the scale-down stabilisation window, oldest first."""
    last_scale_up_at: float | None = None
    """When the policy last raised the pool's total size; None if never."""
    observing_since: float | None = None
    """Time of the first evaluation on fresh signals; no scale-down happens before a whole
    stabilisation window has been observed (a restarted autoscaler knows no history)."""


@dataclass(frozen=True)
class GroupDecision:
    """The size one capacity group should have, and how to get there without losing a stream.

    The scale target starts ``desired - current`` instances when that is positive. When it is
    negative it first cancels starting instances (they have no streams), then drains ``drain``
    serving instances (fewest active streams first) and removes each one only once it is empty.
    """

    desired: int
    """Serving plus starting instances the group should have (draining and reclaimed ones
    are not counted: they are on their way out)."""
    current: int
    """Serving plus starting instances the group had when the decision was made."""
    drain: int = 0
    """Serving instances to drain now; 0 unless the group shrinks past its starting ones."""

    @property
    def delta(self) -> int:
        """Instances added (positive) or removed (negative)."""
        return self.desired - self.current

    @property
    def cancel(self) -> int:
        """Starting instances to cancel (the part of a shrink that needs no drain)."""
        return max(0, -self.delta) - self.drain


@dataclass(frozen=True)
class Decision:
    """One evaluation's outcome for a pool."""

    on_demand: GroupDecision
    """What to do with the on-demand group."""
    preemptible: GroupDecision
    """What to do with the preemptible group."""
    reason: str
    """Why, for people: ``"queue of 3 realtime streams: preemptible 2->4"``."""

    def group(self, group: CapacityGroup) -> GroupDecision:
        """The decision for one capacity group."""
        return self.on_demand if group is CapacityGroup.ON_DEMAND else self.preemptible

    @property
    def changes(self) -> bool:
        """Whether the decision asks the target to do anything."""
        return self.on_demand.delta != 0 or self.preemptible.delta != 0
