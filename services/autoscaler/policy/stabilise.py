"""Scale up fast, scale down slowly: tolerance band, cooldown, stabilisation window, step."""

from __future__ import annotations

from operator import attrgetter

from services.autoscaler.policy.config import PoolPolicy
from services.autoscaler.policy.decision import PolicyState, Recommendation
from services.autoscaler.policy.inputs import CapacityGroup

__all__ = ["in_cooldown", "stabilised", "trim_history", "within_tolerance"]


def within_tolerance(exact_need: float, current_total: int, config: PoolPolicy) -> bool:
    """Whether ``exact_need`` is close enough to the current size to leave it alone."""
    if current_total == 0:
        return exact_need == 0
    return abs(exact_need / current_total - 1.0) <= config.tolerance


def in_cooldown(state: PolicyState, config: PoolPolicy, now: float) -> bool:
    """Whether a trend-driven scale-up must wait for the previous one to settle."""
    last = state.last_scale_up_at
    return last is not None and now - last < config.scale_up_cooldown_s


def stabilised(
    group: CapacityGroup,
    recommended: int,
    current: int,
    history: tuple[Recommendation, ...],
    config: PoolPolicy,
    *,
    window_observed: bool,
) -> int:
    """The size a group moves to now, given this and recent recommendations.

    Up: at once. Down: to the largest recommendation inside the window (``history`` holds
    only those, this evaluation's included), never below ``current - scale_down_step`` and
    never below the group's minimum; not at all until a whole window has been observed.
    """
    if recommended >= current or not window_observed:
        return max(recommended, current)
    field = "on_demand" if group is CapacityGroup.ON_DEMAND else "preemptible"
    window_max = max(map(attrgetter(field), history), default=recommended)
    target = min(current, max(recommended, window_max))
    floor = max(current - config.scale_down_step, config.limits(group).min_count)
    return max(target, floor)


def trim_history(
    history: tuple[Recommendation, ...], now: float, window_s: float
) -> tuple[Recommendation, ...]:
    """Recommendations made within ``window_s`` before ``now``."""
    return tuple(r for r in history if r.at >= now - window_s)
