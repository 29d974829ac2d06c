"""Where our policy's cost above the oracle goes: GPU-hours and cost by cause.

At every evaluation the :class:`Ledger` splits the instances our policy holds (until the next
evaluation) into causes, using the steps of the decision's :class:`Sizing`:

- serving instances, level by level: those that carry today's demand with no spare slot
  (``plain``), the spare slots (statistical margin, measured rises, target utilisation, GPU
  guard), the anticipated growth, the tolerance band / cooldown / bounds (minimum counts), the
  scale-down stabilisation, and any still above the decision (drained next);
- billed instances that do not serve: starting (the lead time), draining (streams cannot move,
  so an instance is billed until its last stream ends), reclaiming (under a preemption notice);
- on-demand instances by why they are on-demand: the group's minimum (the baseline that
  preemption cannot take), standing in while preemptible capacity is not trusted (outage,
  failing placement, notice), or neither (on-demand while preemptible was trusted).

:func:`cost_breakdown` turns that into the cost above the oracle, as an exact sum:
``cost - oracle cost = p_pre x (GPU-h - oracle GPU-h) + (p_od - p_pre) x (on-demand GPU-h -
oracle on-demand GPU-h)``, each term split by cause. Sampling at the evaluation interval (5 s)
leaves a small residual, reported with the demand term.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.sim.control import GroupView, MeshView
from bench.sim.mesh import MeshParams
from bench.sim.record import RunRecord
from services.autoscaler.policy import Decision, GroupSignals, PoolPolicy
from services.autoscaler.policy.hybrid import preemptible_unreliable

__all__ = ["LAYERS", "Ledger", "cost_breakdown"]

LAYERS = (
    "demand",
    "spare slots",
    "anticipated growth",
    "holds and minimums",
    "scale-down stabilisation",
    "drained next",
    "starting (lead time)",
    "draining",
    "reclaiming",
)
"""The causes GPU-hours are attributed to, in the order they are stacked."""
_OD_CAUSES = ("baseline (on-demand minimum)", "preemptible not trusted", "preemptible trusted")


def _billed_starting(group: GroupView) -> int:
    return group.starting - group.unplaced


@dataclass
class Ledger:
    """GPU-hours of our policy's capacity by cause, filled in at each evaluation."""

    hours: dict[str, float] = field(default_factory=lambda: dict.fromkeys(LAYERS, 0.0))
    """All billed GPU-hours by cause (both groups)."""
    on_demand_hours: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(_OD_CAUSES, 0.0)
    )
    """Billed on-demand GPU-hours by why they were on-demand."""
    shortfall_hours: float = 0.0
    """Instance-hours the pool was short of ``ceil(demand / max_streams)`` (a queue formed)."""
    covered_until: float = 0.0
    """End of the time attributed so far: each evaluation covers from there (the first one
    from the start of the run, through the warm-up) to the next evaluation."""

    def add(
        self, view: MeshView, decision: Decision, config: PoolPolicy, interval_s: float
    ) -> None:
        """Attribute what the pool holds after ``decision`` until the next evaluation."""
        sizing = decision.sizing
        if sizing is None:
            return
        od, pe = view.on_demand, view.preemptible
        drained = decision.on_demand.drain + decision.preemptible.drain
        serving = od.serving + pe.serving - drained
        levels = (
            sizing.plain,
            sizing.spare,
            sizing.grown,
            sizing.recommended,
            sizing.stabilised,
            serving,
        )
        dt = (view.now + interval_s - self.covered_until) / 3600.0
        self.covered_until = view.now + interval_s
        below = 0
        for name, level in zip(LAYERS[:6], levels, strict=True):
            top = max(below, min(serving, level))
            self.hours[name] += (top - below) * dt
            below = top
        self.shortfall_hours += max(0, sizing.plain - serving) * dt
        self.hours["starting (lead time)"] += (_billed_starting(od) + _billed_starting(pe)) * dt
        self.hours["draining"] += (od.draining + pe.draining + drained) * dt
        self.hours["reclaiming"] += (od.reclaiming + pe.reclaiming) * dt

        od_held = (
            od.serving + _billed_starting(od) + od.draining + od.reclaiming
        )  # drained ones still bill
        baseline = min(od_held, config.on_demand.min_count)
        trusted = not preemptible_unreliable(
            GroupSignals(
                serving=pe.serving,
                starting=pe.starting,
                reclaiming=pe.reclaiming,
                placement_failing=pe.unplaced > 0,
                oldest_starting_s=pe.oldest_starting_s,
            ),
            config,
        )
        rest = "preemptible trusted" if trusted else "preemptible not trusted"
        self.on_demand_hours["baseline (on-demand minimum)"] += baseline * dt
        self.on_demand_hours[rest] += (od_held - baseline) * dt


def _round(values: dict[str, float]) -> dict[str, float]:
    return {key: round(value, 2) for key, value in values.items()}


def cost_breakdown(
    ledger: Ledger, ours: RunRecord, oracle: RunRecord, params: MeshParams
) -> dict[str, Any]:
    """GPU-hours by cause and the cost above the oracle split into the same causes."""
    p_pre, p_od = params.preemptible_price, params.on_demand_price
    premium = p_od - p_pre
    billed, oracle_billed = sum(ours.instance_hours), sum(oracle.instance_hours)
    cost = ours.instance_hours[0] * p_od + ours.instance_hours[1] * p_pre
    oracle_cost = oracle.instance_hours[0] * p_od + oracle.instance_hours[1] * p_pre
    causes: dict[str, float] = {
        name: p_pre * hours for name, hours in ledger.hours.items() if name != "demand"
    }
    od = ledger.on_demand_hours
    causes["on-demand premium: baseline (on-demand minimum)"] = (
        premium * od["baseline (on-demand minimum)"]
    )
    causes["on-demand premium: preemptible not trusted, beyond the oracle's outage use"] = (
        premium * (od["preemptible not trusted"] - oracle.instance_hours[0])
    )
    causes["on-demand premium: preemptible trusted"] = premium * od["preemptible trusted"]
    gap = cost - oracle_cost
    causes["demand vs oracle (perfect packing, queueing, 5 s sampling)"] = gap - sum(
        causes.values()
    )
    return {
        "gpu_hours_billed": round(billed, 2),
        "gpu_hours_oracle": round(oracle_billed, 2),
        "gpu_hours_by_cause": _round(ledger.hours),
        "gpu_hours_by_cause_sampling_residual": round(billed - sum(ledger.hours.values()), 2),
        "shortfall_instance_hours": round(ledger.shortfall_hours, 2),
        "on_demand_gpu_hours_by_cause": _round(od),
        "on_demand_gpu_hours_oracle": round(oracle.instance_hours[0], 2),
        "cost": round(cost, 2),
        "cost_oracle": round(oracle_cost, 2),
        "cost_above_oracle_by_cause": _round(causes),
        "cost_above_oracle_share_by_cause": {
            key: round(value / gap, 3) if gap else 0.0 for key, value in causes.items()
        },
    }
