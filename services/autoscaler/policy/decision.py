"""What the policy returns: a decision per capacity group, and the state it carries forward."""

from __future__ import annotations

from dataclasses import dataclass

from services.autoscaler.policy.inputs import CapacityGroup
from services.autoscaler.policy.rises import OpenRise, Rise

__all__ = ["Decision", "GroupDecision", "PolicyState", "Recommendation", "Sizing"]


@dataclass(frozen=True)
class Recommendation:
    """The pool's unstabilised size at one evaluation (both groups together)."""

    at: float
    """Evaluation time (the ``now`` given to ``decide``)."""
    total: int
    """Instances the pool needed then, after the tolerance band, cooldown and bounds."""


@dataclass(frozen=True)
class Sizing:
    """How one decision's pool size was built up, in instances, one step at a time.

    Each figure includes the ones before it (``plain <= spare``, usually ``spare <= grown``);
    the differences say what each step of the algorithm added. The simulator's cost breakdown
    reads them; they are also what a dashboard needs to explain a pool's size.
    """

    demand: int
    """Streams wanting a slot (active plus queued)."""
    plain: int
    """``ceil(demand / max_streams)``: instances with no spare slot at all."""
    spare: int
    """With the spare slots (statistical margin, measured rises, target utilisation) and the
    GPU guard, for today's demand."""
    grown: int
    """With the growth anticipated over the lead time: the policy's need."""
    recommended: int
    """After the tolerance band, the scale-up cooldown and the bounds."""
    stabilised: int
    """After the scale-down stabilisation: the pool size the groups are split from."""


@dataclass(frozen=True)
class PolicyState:
    """The policy's memory between evaluations of one pool; start from ``PolicyState()``."""

    demand_samples: tuple[tuple[float, int], ...] = ()
    """``(time, demand)`` of the evaluations inside the trend window, oldest first."""
    recommendations: tuple[Recommendation, ...] = ()
    """Recommendations inside the scale-down stabilisation window, oldest first."""
    last_scale_up_at: float | None = None
    """When the policy last raised the pool's total size; None if never. The loop puts the
    previous value back when the target did not apply the raise (refused, paused, dry
    run): only an applied scale-up has anything to settle."""
    observing_since: float | None = None
    """Time of the first evaluation on fresh signals since the last gap; no scale-down
    happens before a whole stabilisation window has been observed (a restarted autoscaler
    knows no history, and neither does one whose signals were missing or stale). Back to
    None whenever an evaluation cannot see the whole pool."""
    open_rises: tuple[OpenRise, ...] = ()
    """Evaluations younger than one lead time, whose rise is still being measured."""
    rises: tuple[Rise, ...] = ()
    """Measured rises of demand within one lead time, inside ``rise_history_s``."""


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
    sizing: Sizing | None = None
    """How the pool size was derived; None when the policy held (stale signals)."""

    def group(self, group: CapacityGroup) -> GroupDecision:
        """The decision for one capacity group."""
        return self.on_demand if group is CapacityGroup.ON_DEMAND else self.preemptible

    @property
    def changes(self) -> bool:
        """Whether the decision asks the target to do anything."""
        return self.on_demand.delta != 0 or self.preemptible.delta != 0
