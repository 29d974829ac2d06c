"""``decide``: one pure evaluation of a pool's scaling policy (algorithm: docs/autoscaling.md).

Evaluation order::

    demand stale? ── yes ─> hold every group (never scale down on missing information)
        │ no                 and restart the window's observation (the gap is unknown)
    other signals stale (a silent instance)? ── yes ─> as below, but no group shrinks,
        │                                               and the observation restarts
    demand + margin (Poisson, measured rises) + trend x lead time + GPU guard ─> need
        │
    tolerance band / scale-up cooldown (skipped while real-time streams queue)
        │
    bounds ─> recommended pool size
        │
    pool size: up at once; down to the window's largest recommendation, step-limited
        │
    hybrid split (baseline on-demand, bursts preemptible, on-demand fallback); on-demand
    leaves as soon as serving preemptible instances cover the pool; shrinking groups cancel
    starting instances before draining serving ones
"""

from __future__ import annotations

import math
from dataclasses import replace

from services.autoscaler.policy.config import PoolPolicy
from services.autoscaler.policy.decision import (
    Decision,
    GroupDecision,
    PolicyState,
    Recommendation,
    Sizing,
)
from services.autoscaler.policy.forecast import (
    Need,
    demand_slope,
    instances_needed,
    trim_samples,
)
from services.autoscaler.policy.hybrid import (
    Split,
    counted_preemptible,
    preemptible_unreliable,
    split_total,
)
from services.autoscaler.policy.inputs import CapacityGroup, GroupSignals, PoolSignals
from services.autoscaler.policy.rises import measure_rises
from services.autoscaler.policy.stabilise import (
    in_cooldown,
    stabilised_total,
    trim_history,
    within_tolerance,
)

__all__ = ["decide", "hold"]

_LABELS = {CapacityGroup.ON_DEMAND: "on-demand", CapacityGroup.PREEMPTIBLE: "preemptible"}


def decide(
    signals: PoolSignals, state: PolicyState, config: PoolPolicy, now: float
) -> tuple[Decision, PolicyState]:
    """Decide the size of each capacity group of one pool; pure: same inputs, same outputs.

    ``now`` is the caller's clock in seconds (monotonic); ``state`` is what the previous call
    returned for this pool (``PolicyState()`` the first time).
    """
    age = max(signals.age_s, signals.demand_age)
    if signals.demand_age > config.stale_after_s:
        # Nothing is known of the time the signals were stale: a whole window of fresh ones
        # must be observed again before anything shrinks.
        stale_hold = hold(signals, f"holding: signals stale for {age:.0f} s")
        return stale_hold, replace(state, observing_since=None)
    # The demand (from the routers) is fresh, another signal (an instance's) is not: the
    # pool may grow on the demand, but shrinks on nothing it cannot see.
    stale = signals.age_s > config.stale_after_s

    samples = trim_samples(
        (*state.demand_samples, (now, signals.demand)), now, config.trend_window_s
    )
    slope = demand_slope(samples, config.trend_window_s, config.trend_confidence_sigmas)
    open_rises, rises, rise = measure_rises(
        state.open_rises, state.rises, now, signals.demand, config
    )
    od_signals, pe_signals = signals.on_demand, signals.preemptible
    bursts_on_preemptible = (
        not preemptible_unreliable(pe_signals, config)
        and pe_signals.current < config.preemptible.max_count
    )
    growth_group = CapacityGroup.PREEMPTIBLE if bursts_on_preemptible else CapacityGroup.ON_DEMAND
    need = instances_needed(signals, slope, config.limits(growth_group).lead_time_s, config, rise)
    spare = instances_needed(signals, 0.0, 0.0, config, rise).instances

    # What the pool can count on going forward (preemptible requests that cannot be placed do
    # not count), and its size before any reclaim notice: replacing reclaimed instances is
    # neither a scale-up for the cooldown nor a change for the tolerance band.
    in_hand = od_signals.current + counted_preemptible(pe_signals, config)
    settled = in_hand + od_signals.reclaiming + pe_signals.reclaiming
    total, held = need.instances, ""
    if signals.queued_realtime == 0 and total != settled:
        if within_tolerance(need.exact, settled, config):
            total, held = settled, "within tolerance band"
        elif total > settled and in_cooldown(state, config, now) and spare <= settled:
            # Only the anticipated growth asks for more: let the last scale-up settle first.
            total, held = settled, "scale-up cooldown"
    lowest = config.on_demand.min_count + config.preemptible.min_count
    highest = config.on_demand.max_count + config.preemptible.max_count
    bounded = max(lowest, min(highest, total))

    history = trim_history(
        (*state.recommendations, Recommendation(now, bounded)), now, config.scale_down_window_s
    )
    observing_since = now if state.observing_since is None else state.observing_since
    observed = not stale and now - observing_since >= config.scale_down_window_s
    pool_size, split, od_desired, pe_desired = _group_sizes(
        bounded, in_hand, history, signals, config, window_observed=observed
    )
    od, pe = _group_decision(od_desired, od_signals), _group_decision(pe_desired, pe_signals)

    new_state = PolicyState(
        demand_samples=samples,
        recommendations=history,
        last_scale_up_at=now if pool_size > settled else state.last_scale_up_at,
        observing_since=None if stale else observing_since,
        open_rises=open_rises,
        rises=rises,
    )
    sizing = Sizing(
        demand=signals.demand,
        plain=math.ceil(signals.demand / signals.max_streams),
        spare=spare,
        grown=need.instances,
        recommended=bounded,
        stabilised=pool_size,
    )
    notes = _notes(need=need, sizing=sizing, held=held, split=split, od=od, pe=pe_signals)
    if stale:
        notes += f"; signals stale for {signals.age_s:.0f} s (demand fresh): nothing shrinks"
    reason = f"{_cause(signals, need, settled)}{notes}: {_effect(od, pe)}"
    return Decision(on_demand=od, preemptible=pe, reason=reason, sizing=sizing), new_state


def _group_sizes(
    bounded: int,
    in_hand: int,
    history: tuple[Recommendation, ...],
    signals: PoolSignals,
    config: PoolPolicy,
    *,
    window_observed: bool,
) -> tuple[int, Split, int, int]:
    """``(pool size, its split, on-demand desired, preemptible desired)``.

    The pool size is stabilised as a whole, then split. Preemptible grows only as far as
    today's recommendation asks: a pool held up by the stabilisation sheds on-demand instances
    instead of starting preemptible ones. A restarted autoscaler, which knows no history,
    shrinks no group until it has observed a whole window.
    """
    pe_signals = signals.preemptible
    recommended = split_total(bounded, pe_signals, config)
    if not window_observed:
        return (
            max(bounded, in_hand),
            recommended,
            max(recommended.on_demand, signals.on_demand.current),
            max(recommended.preemptible, pe_signals.current),
        )
    pool_size = stabilised_total(bounded, in_hand, history, config)
    split = split_total(pool_size, pe_signals, config)
    return (
        pool_size,
        split,
        _on_demand_desired(split.on_demand, pool_size, signals),
        min(split.preemptible, max(pe_signals.current, recommended.preemptible)),
    )


def _on_demand_desired(recommended: int, pool_size: int, signals: PoolSignals) -> int:
    """The on-demand group's size: up at once; down only as far as the pool size is covered
    without it by *serving* preemptible instances (a starting one may never arrive).

    The pool size is already stabilised, so an on-demand instance whose place a serving
    preemptible one has taken goes at once: it is the most expensive capacity of the pool.
    """
    current = signals.on_demand.current
    if recommended >= current:
        return recommended
    return max(recommended, min(current, pool_size - signals.preemptible.serving))


def _group_decision(desired: int, signals: GroupSignals) -> GroupDecision:
    """A group's decision, and how many serving instances to drain to reach it."""
    shrink = max(0, signals.current - desired)
    return GroupDecision(
        desired=desired, current=signals.current, drain=max(0, shrink - signals.starting)
    )


def hold(signals: PoolSignals, reason: str) -> Decision:
    """A decision that changes nothing (also the loop's, when it cannot ask the policy)."""
    return Decision(
        on_demand=GroupDecision(signals.on_demand.current, signals.on_demand.current),
        preemptible=GroupDecision(signals.preemptible.current, signals.preemptible.current),
        reason=reason,
    )


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _cause(signals: PoolSignals, need: Need, settled: int) -> str:
    """The main driver of the decision, first in the reason."""
    if signals.queued_realtime and settled == 0:
        cause = f"scale from zero: {_plural(signals.queued_realtime, 'queued realtime stream')}"
    elif signals.queued_realtime:
        cause = f"queue of {_plural(signals.queued_realtime, 'realtime stream')}"
    elif signals.queued_batch:
        cause = f"queue of {_plural(signals.queued_batch, 'batch stream')}"
    else:
        cause = f"demand {_plural(signals.demand, 'stream')}"
    if need.predicted_demand - signals.demand >= 0.5:
        cause += f", growing {need.slope:.2f}/s (expect {need.predicted_demand:.0f})"
    return f"{cause} -> need {_plural(need.instances, 'instance')}"


def _notes(
    *,
    need: Need,
    sizing: Sizing,
    held: str,
    split: Split,
    od: GroupDecision,
    pe: GroupSignals,
) -> str:
    """Everything that moved the outcome away from the plain need."""
    notes: list[str] = []
    if need.rise_sets_margin and need.rise_sigmas is not None:
        notes.append(
            f"spare for rises of {need.rise_sigmas:.1f} sqrt(demand) seen within a lead time"
        )
    if need.saturated:
        notes.append(f"{_plural(need.saturated, 'GPU-saturated instance')} counted full")
    if held:
        notes.append(f"held at {sizing.recommended} ({held})")
    elif sizing.recommended != sizing.grown:
        notes.append(f"bounded to {sizing.recommended}")
    if sizing.stabilised > sizing.recommended:
        notes.append(f"scale-down stabilised at {sizing.stabilised}")
    if split.fallback:
        notes.append(f"{split.why_fallback}: {split.fallback} on on-demand instead")
    if od.delta < 0 and pe.serving:
        stay = _plural(pe.serving, "serving preemptible instance")
        notes.append(f"on-demand leaves first ({stay} stay)")
    return "".join(f"; {note}" for note in notes)


def _effect(od: GroupDecision, pe: GroupDecision) -> str:
    """What the target is asked to do, last in the reason."""
    parts: list[str] = []
    for group, decision in ((CapacityGroup.ON_DEMAND, od), (CapacityGroup.PREEMPTIBLE, pe)):
        if decision.delta > 0:
            parts.append(f"+{decision.delta} {_LABELS[group]}")
        elif decision.delta < 0:
            drain = f" (drain {decision.drain})" if decision.drain else ""
            parts.append(f"{decision.delta} {_LABELS[group]}{drain}")
    if not parts:
        return f"no change (on-demand {od.desired}, preemptible {pe.desired})"
    return ", ".join(parts) + f" -> on-demand {od.desired}, preemptible {pe.desired}"
