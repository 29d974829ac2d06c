"""Scale up fast, scale down slowly: tolerance band, cooldown, stabilisation window, step."""

from __future__ import annotations

from services.autoscaler.policy.config import PoolPolicy
from services.autoscaler.policy.decision import PolicyState, Recommendation

__all__ = ["in_cooldown", "stabilised_total", "trim_history", "within_tolerance"]


def within_tolerance(exact_need: float, current_total: int, config: PoolPolicy) -> bool:
    """Whether ``exact_need`` is close enough to the current size to leave it alone."""
    if current_total == 0:
        return exact_need == 0
    return abs(exact_need / current_total - 1.0) <= config.tolerance


def in_cooldown(state: PolicyState, config: PoolPolicy, now: float) -> bool:
    """Whether a trend-driven scale-up must wait for the previous one to settle."""
    last = state.last_scale_up_at
    return last is not None and now - last < config.scale_up_cooldown_s


def stabilised_total(
    recommended: int,
    current: int,
    history: tuple[Recommendation, ...],
    config: PoolPolicy,
) -> int:
    """The pool size to move to now, given this and recent recommendations.

    Up: at once. Down: to the largest recommendation inside the window (``history`` holds
    only those, this evaluation's included), by at most ``scale_down_step`` instances. The
    pool size is stabilised, not each group: a group that shrinks because the other one took
    its place is not a scale-down.
    """
    if recommended >= current:
        return recommended
    window_max = max((r.total for r in history), default=recommended)
    return max(recommended, min(current, window_max), current - config.scale_down_step)


def trim_history(
    history: tuple[Recommendation, ...], now: float, window_s: float
) -> tuple[Recommendation, ...]:
    """Recommendations made within ``window_s`` before ``now``."""
    return tuple(r for r in history if r.at >= now - window_s)
