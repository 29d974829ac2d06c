"""``decide``: one pure evaluation of a pool's scaling policy (algorithm: docs/autoscaling.md).

Evaluation order::

    signals stale? ── yes ─> hold every group (never scale down on missing information)
        │ no
    demand + trend x lead time + GPU guard ─> total instances needed
        │
    tolerance band / scale-up cooldown (skipped while real-time streams queue)
        │
    bounds ─> hybrid split (baseline on-demand, bursts preemptible, on-demand fallback)
        │
    per group: up at once; down to the window's largest recommendation, step-limited,
    cancelling starting instances before draining serving ones
"""

from __future__ import annotations

from services.autoscaler.policy.config import PoolPolicy
from services.autoscaler.policy.decision import (
    Decision,
    GroupDecision,
    PolicyState,
    Recommendation,
)
from services.autoscaler.policy.forecast import (
    Need,
    demand_slope,
    instances_needed,
    trim_samples,
)
from services.autoscaler.policy.hybrid import Split, preemptible_unreliable, split_total
from services.autoscaler.policy.inputs import CapacityGroup, GroupSignals, PoolSignals
from services.autoscaler.policy.stabilise import (
    in_cooldown,
    stabilised,
    trim_history,
    within_tolerance,
)

__all__ = ["decide"]

_LABELS = {CapacityGroup.ON_DEMAND: "on-demand", CapacityGroup.PREEMPTIBLE: "preemptible"}


def decide(
    signals: PoolSignals, state: PolicyState, config: PoolPolicy, now: float
) -> tuple[Decision, PolicyState]:
    """Decide the size of each capacity group of one pool; pure: same inputs, same outputs.

    ``now`` is the caller's clock in seconds (monotonic); ``state`` is what the previous call
    returned for this pool (``PolicyState()`` the first time).
    """
    if signals.age_s > config.stale_after_s:
        return _hold(signals, f"holding: signals stale for {signals.age_s:.0f} s"), state

    samples = trim_samples(
        (*state.demand_samples, (now, signals.demand)), now, config.trend_window_s
    )
    slope = demand_slope(samples, config.trend_window_s, config.trend_confidence_sigmas)
    pe_signals = signals.preemptible
    bursts_on_preemptible = (
        not preemptible_unreliable(pe_signals, config)
        and pe_signals.current < config.preemptible.max_count
    )
    growth_group = CapacityGroup.PREEMPTIBLE if bursts_on_preemptible else CapacityGroup.ON_DEMAND
    need = instances_needed(signals, slope, config.limits(growth_group).lead_time_s, config)

    # The size the pool had before any reclaim: replacing reclaimed instances is not a scale-up.
    settled = (
        signals.on_demand.current
        + signals.on_demand.reclaiming
        + pe_signals.current
        + pe_signals.reclaiming
    )
    total, held = need.instances, ""
    if signals.queued_realtime == 0 and total != settled:
        if within_tolerance(need.exact, settled, config):
            total, held = settled, "within tolerance band"
        elif (
            total > settled
            and in_cooldown(state, config, now)
            and instances_needed(signals, 0.0, 0.0, config).instances <= settled
        ):
            # Only the anticipated growth asks for more: let the last scale-up settle first.
            total, held = settled, "scale-up cooldown"
    lowest = config.on_demand.min_count + config.preemptible.min_count
    highest = config.on_demand.max_count + config.preemptible.max_count
    bounded = max(lowest, min(highest, total))

    split = split_total(bounded, pe_signals, config)
    recommendation = Recommendation(now, split.on_demand, split.preemptible)
    history = trim_history(
        (*state.recommendations, recommendation), now, config.scale_down_window_s
    )
    observing_since = now if state.observing_since is None else state.observing_since
    observed = now - observing_since >= config.scale_down_window_s
    od = _group_decision(
        CapacityGroup.ON_DEMAND,
        split.on_demand,
        signals.on_demand,
        history=history,
        config=config,
        window_observed=observed,
    )
    pe = _group_decision(
        CapacityGroup.PREEMPTIBLE,
        split.preemptible,
        pe_signals,
        history=history,
        config=config,
        window_observed=observed,
    )

    scaled_up = od.desired + pe.desired > settled
    new_state = PolicyState(
        demand_samples=samples,
        recommendations=history,
        last_scale_up_at=now if scaled_up else state.last_scale_up_at,
        observing_since=observing_since,
    )
    notes = _notes(
        need=need,
        total=total,
        bounded=bounded,
        held=held,
        split=split,
        decisions=(od, pe),
        recommended=(split.on_demand, split.preemptible),
    )
    reason = f"{_cause(signals, need, settled)}{notes}: {_effect(od, pe)}"
    return Decision(on_demand=od, preemptible=pe, reason=reason), new_state


def _group_decision(
    group: CapacityGroup,
    recommended: int,
    signals: GroupSignals,
    *,
    history: tuple[Recommendation, ...],
    config: PoolPolicy,
    window_observed: bool,
) -> GroupDecision:
    """Stabilise one group's recommendation and say how many serving instances to drain."""
    desired = stabilised(
        group, recommended, signals.current, history, config, window_observed=window_observed
    )
    shrink = max(0, signals.current - desired)
    return GroupDecision(
        desired=desired, current=signals.current, drain=max(0, shrink - signals.starting)
    )


def _hold(signals: PoolSignals, reason: str) -> Decision:
    """A decision that changes nothing."""
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
    total: int,
    bounded: int,
    held: str,
    split: Split,
    decisions: tuple[GroupDecision, GroupDecision],
    recommended: tuple[int, int],
) -> str:
    """Everything that moved the outcome away from the plain need."""
    notes: list[str] = []
    if need.saturated:
        notes.append(f"{_plural(need.saturated, 'GPU-saturated instance')} counted full")
    if held:
        notes.append(f"held at {total} ({held})")
    if bounded != total:
        notes.append(f"bounded to {bounded}")
    if split.fallback:
        notes.append(f"{split.why_fallback}: {split.fallback} on on-demand instead")
    for group, decision, rec in zip(CapacityGroup, decisions, recommended, strict=True):
        if decision.desired > rec:
            notes.append(f"{_LABELS[group]} scale-down stabilised at {decision.desired}")
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
