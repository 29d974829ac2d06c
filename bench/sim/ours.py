"""Our policy (``services.autoscaler.policy.decide``) driven the way the real evaluation loop
drives it: every ``interval_s`` build the pool's signals, decide, apply the decision."""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.sim.breakdown import Ledger
from bench.sim.calibration import Calibration
from bench.sim.control import Actions, GroupActions, GroupView, MeshView
from services.autoscaler.policy import (
    CapacityGroup,
    GroupDecision,
    GroupLimits,
    GroupSignals,
    InstanceSignals,
    PolicyState,
    PoolPolicy,
    PoolSignals,
    decide,
)

__all__ = ["OurPolicy", "policy_for"]


def policy_for(calibration: Calibration, *, scale_to_zero: bool = False) -> PoolPolicy:
    """The policy's defaults with the lead times of ``calibration`` and roomy bounds."""
    return PoolPolicy(
        on_demand=GroupLimits(
            min_count=0 if scale_to_zero else 1,
            max_count=256,
            lead_time_s=calibration.on_demand_lead_s,
            placement_deadline_s=2 * calibration.on_demand_lead_s,
        ),
        preemptible=GroupLimits(
            min_count=0,
            max_count=256,
            lead_time_s=calibration.preemptible_lead_s,
            placement_deadline_s=2 * calibration.preemptible_lead_s,
        ),
        allow_scale_to_zero=scale_to_zero,
    )


def _group_signals(group: GroupView) -> GroupSignals:
    return GroupSignals(
        serving=group.serving,
        starting=group.starting,
        draining=group.draining,
        reclaiming=group.reclaiming,
        placement_failing=group.unplaced > 0,
        oldest_starting_s=group.oldest_starting_s,
    )


def _actions(decision: GroupDecision) -> GroupActions:
    return GroupActions(start=max(0, decision.delta), cancel=decision.cancel, drain=decision.drain)


@dataclass
class OurPolicy:
    """The voxmesh policy as a simulator controller."""

    config: PoolPolicy
    """The pool's policy configuration."""
    name: str = "voxmesh policy"
    interval_s: float = 5.0
    state: PolicyState = field(default_factory=PolicyState)
    """Carried between evaluations, as the real loop does."""
    reasons: list[str] = field(default_factory=list)
    """Reasons of the decisions that changed something (for the report's examples)."""
    ledger: Ledger = field(default_factory=Ledger)
    """GPU-hours held, by cause (for the report's cost breakdown)."""

    def initial_fleet(self, instances: int, preemptible_available: int) -> tuple[int, int]:
        """The split the policy steers to: baseline on on-demand, the rest preemptible."""
        od_min = self.config.on_demand.min_count
        preemptible = min(max(0, instances - od_min), preemptible_available)
        return instances - preemptible, preemptible

    def control(self, view: MeshView) -> Actions:
        """One evaluation of the real policy."""
        loads = [
            InstanceSignals(group, active, gpu_utilisation=active / view.max_streams)
            for group, members in (
                (CapacityGroup.ON_DEMAND, view.on_demand),
                (CapacityGroup.PREEMPTIBLE, view.preemptible),
            )
            for active in members.serving_loads
        ]
        signals = PoolSignals(
            pool="sim",
            max_streams=view.max_streams,
            active_streams=view.active_streams,
            queued_realtime=view.queued,
            on_demand=_group_signals(view.on_demand),
            preemptible=_group_signals(view.preemptible),
            instances=tuple(loads),
        )
        decision, self.state = decide(signals, self.state, self.config, view.now)
        self.ledger.add(view, decision, self.config, self.interval_s)
        if decision.changes:
            self.reasons.append(f"t={view.now:.0f}s {decision.reason}")
        return Actions(
            on_demand=_actions(decision.on_demand), preemptible=_actions(decision.preemptible)
        )
