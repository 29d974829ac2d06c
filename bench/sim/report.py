"""Figures per policy, the targets check, and the side-by-side table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.sim.mesh import MeshParams
from bench.sim.record import RunRecord, percentile_wait

__all__ = ["SLO_TARGET", "Metrics", "check_targets", "metrics", "table"]

SLO_TARGET = 0.999
"""Streams admitted within the SLO wait, the level a policy must reach."""
COST_TO_ORACLE_TARGET = 1.3
SAVING_TARGET = 0.43


@dataclass(frozen=True)
class Metrics:
    """What the report shows for one policy in one scenario."""

    policy: str
    slo_attainment: float
    p99_wait_s: float
    gpu_hours_on_demand: float
    gpu_hours_preemptible: float
    cost: float
    cost_to_oracle: float
    saving_vs_static: float
    dropped_waiting: int
    dropped_preemption: int
    interrupted: int
    cold_starts: int
    cold_start_max_s: float
    cold_start_mean_s: float

    @property
    def gpu_hours(self) -> float:
        """All billed GPU-hours."""
        return self.gpu_hours_on_demand + self.gpu_hours_preemptible

    @property
    def meets_slo(self) -> bool:
        """Whether the SLO target is met."""
        return self.slo_attainment >= SLO_TARGET

    def as_json(self) -> dict[str, Any]:
        """Rounded for the committed JSON."""
        return {
            "slo_attainment": round(self.slo_attainment, 6),
            "meets_slo": self.meets_slo,
            "p99_admission_wait_s": round(self.p99_wait_s, 3),
            "gpu_hours": round(self.gpu_hours, 2),
            "gpu_hours_on_demand": round(self.gpu_hours_on_demand, 2),
            "gpu_hours_preemptible": round(self.gpu_hours_preemptible, 2),
            "cost": round(self.cost, 2),
            "cost_ratio_to_oracle": round(self.cost_to_oracle, 3),
            "saving_vs_static_on_demand": round(self.saving_vs_static, 3),
            "dropped_waiting": self.dropped_waiting,
            "dropped_by_preemption": self.dropped_preemption,
            "interruptions": self.interrupted,
            "cold_starts": self.cold_starts,
            "cold_start_wait_max_s": round(self.cold_start_max_s, 1),
            "cold_start_wait_mean_s": round(self.cold_start_mean_s, 1),
        }


def _cost(record: RunRecord, params: MeshParams) -> float:
    od, pe = record.instance_hours
    return od * params.on_demand_price + pe * params.preemptible_price


def metrics(
    policy: str, record: RunRecord, oracle: RunRecord, static: RunRecord, params: MeshParams
) -> Metrics:
    """The reported figures of ``record`` relative to the oracle and static provisioning."""
    cost = _cost(record, params)
    cold = record.cold_starts
    return Metrics(
        policy=policy,
        slo_attainment=record.slo_attainment,
        p99_wait_s=percentile_wait(record, 0.99),
        gpu_hours_on_demand=record.instance_hours[0],
        gpu_hours_preemptible=record.instance_hours[1],
        cost=cost,
        cost_to_oracle=cost / max(_cost(oracle, params), 1e-9),
        saving_vs_static=1.0 - cost / max(_cost(static, params), 1e-9),
        dropped_waiting=record.dropped_waiting,
        dropped_preemption=record.dropped_preemption,
        interrupted=record.interrupted,
        cold_starts=len(cold),
        cold_start_max_s=max(cold, default=0.0),
        cold_start_mean_s=sum(cold) / len(cold) if cold else 0.0,
    )


def check_targets(ours: Metrics, baselines: list[Metrics]) -> dict[str, Any]:
    """The issue's targets for our policy, each with the value that decided it."""
    meeting = [m for m in baselines if m.meets_slo]
    cheapest = min(meeting, key=lambda m: m.cost, default=None)
    return {
        "slo_at_least_99.9%": {"value": round(ours.slo_attainment, 6), "met": ours.meets_slo},
        "cost_at_most_1.3x_oracle": {
            "value": round(ours.cost_to_oracle, 3),
            "met": ours.cost_to_oracle <= COST_TO_ORACLE_TARGET,
        },
        "saving_at_least_43%_vs_static_on_demand": {
            "value": round(ours.saving_vs_static, 3),
            "met": ours.saving_vs_static >= SAVING_TARGET,
        },
        "cheaper_than_every_baseline_meeting_the_slo": {
            "value": None if cheapest is None else f"{cheapest.policy}: {cheapest.cost:.2f}",
            "met": ours.meets_slo and (cheapest is None or ours.cost < cheapest.cost),
        },
    }


def table(scenario: str, rows: list[Metrics]) -> str:
    """A fixed-width table of the policies side by side."""
    head = (
        f"{'policy':<31}{'SLO':>9}{'p99 wait':>10}{'GPU-h':>9}{'(pre)':>8}{'cost':>9}"
        f"{'x oracle':>9}{'vs static':>10}{'drop q':>8}{'drop pre':>9}{'cold max':>9}"
    )
    lines = [f"== {scenario}", head, "-" * len(head)]
    for m in rows:
        lines.append(
            f"{m.policy:<31}{m.slo_attainment:>9.3%}{m.p99_wait_s:>9.1f}s{m.gpu_hours:>9.1f}"
            f"{m.gpu_hours_preemptible:>8.1f}{m.cost:>9.1f}{m.cost_to_oracle:>9.2f}"
            f"{m.saving_vs_static:>10.1%}{m.dropped_waiting:>8}{m.dropped_preemption:>9}"
            f"{m.cold_start_max_s:>8.0f}s"
        )
    return "\n".join(lines)
