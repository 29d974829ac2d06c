"""Run every policy on every scenario (in parallel processes), then report and plot."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.sim.bound import perfect_forecast_bound, rises_beyond
from bench.sim.breakdown import Ledger, cost_breakdown
from bench.sim.engine import simulate
from bench.sim.oracle import fractional_gpu_hours, oracle, profile
from bench.sim.ours import OurPolicy
from bench.sim.plot import plot_scenario
from bench.sim.record import RunRecord, Series
from bench.sim.report import COST_TO_ORACLE_TARGET, Metrics, check_targets, metrics, table
from bench.sim.scenarios import (
    CONTROLLERS,
    ORACLE,
    PERFECT,
    Scenario,
    initial_instances,
    make_controller,
    materialise,
)

__all__ = ["PolicyRun", "run_benchmark", "run_one"]

_EXAMPLE_MARKERS = (
    "queue of",
    "growing",
    "being reclaimed",
    "placements failing",
    "on-demand leaves first",
    "scale from zero",
    "drain",
)


@dataclass(frozen=True)
class PolicyRun:
    """One policy's run of one scenario, as a worker process returns it."""

    scenario: str
    key: str
    name: str
    record: RunRecord
    reasons: list[str]
    ledger: Ledger | None


def run_one(task: tuple[Scenario, str]) -> PolicyRun:
    """One policy (or the oracle) on one scenario."""
    scenario, key = task
    workload, availability = materialise(scenario)
    if key == ORACLE:
        record = oracle(workload, availability, scenario.params)
        return PolicyRun(scenario.name, key, "oracle (no delay, cheapest)", record, [], None)
    controller = make_controller(key, scenario)
    record = simulate(
        workload, availability, controller, scenario.params, initial_instances(scenario)
    )
    if isinstance(controller, OurPolicy):
        return PolicyRun(
            scenario.name, key, controller.name, record, controller.reasons, controller.ledger
        )
    return PolicyRun(scenario.name, key, controller.name, record, [], None)


def _examples(reasons: list[str]) -> list[str]:
    """One decision reason per kind of situation, to show what the reasons look like."""
    picked: list[str] = []
    for marker in _EXAMPLE_MARKERS:
        found = next((r for r in reasons if marker in r and r not in picked), None)
        if found:
            picked.append(found)
    return picked


def _why_not_1_3x(
    scenario: Scenario, perfect: Metrics, oracle_cost: float, horizon_s: float
) -> dict[str, Any]:
    """How much spare capacity the 1.3x target leaves above the perfect-forecast controller,
    and how often demand outgrows that much within one lead time."""
    workload, _ = materialise(scenario)
    cal = scenario.params.calibration
    budget = COST_TO_ORACLE_TARGET * oracle_cost - perfect.cost
    price = perfect.cost / max(perfect.gpu_hours, 1e-9)
    spare_slots = budget / price * cal.max_streams / max(horizon_s / 3600.0, 1e-9)
    sigmas, share = rises_beyond(
        workload, horizon_s, cal.preemptible_lead_s, spare_slots, skip_s=300.0
    )
    return {
        "cost_left_by_1.3x_above_perfect_forecast": round(budget, 2),
        "spare_slots_it_buys_on_average": round(spare_slots, 1),
        "as_sqrt_demand_multiple": round(sigmas, 2),
        "share_of_arrivals_where_demand_rises_more_within_one_lead_time": round(share, 4),
    }


def _scenario_report(
    scenario: Scenario, runs: dict[str, PolicyRun], out_dir: Path
) -> tuple[dict[str, Any], str]:
    workload, availability = materialise(scenario)
    params = scenario.params
    oracle_record, static_record = runs[ORACLE].record, runs["static"].record
    rows: dict[str, Metrics] = {
        key: metrics(run.name, run.record, oracle_record, static_record, params)
        for key, run in runs.items()
    }
    bound = metrics(
        "perfect-forecast lower bound",
        perfect_forecast_bound(workload, availability, params),
        oracle_record,
        static_record,
        params,
    )
    baselines = [rows[key] for key in CONTROLLERS if key != "ours"]
    series: dict[str, Series] = {run.name: run.record.series for run in runs.values()}
    png = out_dir / f"autoscaler_sim_{scenario.name}.png"
    plot_scenario(f"{scenario.name}: {scenario.note}", series, png)
    stats = availability.stats()
    cal = params.calibration
    ledger = runs["ours"].ledger
    if ledger is None:
        raise ValueError("our policy's run carries no ledger")
    result = {
        "note": scenario.note,
        "workload": {
            "description": workload.description,
            "streams": len(workload.arrivals),
            "hours": round(oracle_record.horizon_s / 3600.0, 2),
            "peak_instances": profile(workload).peak_instances(cal.max_streams),
            "initial_instances": initial_instances(scenario),
        },
        "availability": {"trace": availability.name, **asdict(stats)},
        "mesh": {k: v for k, v in asdict(params).items() if k != "calibration"},
        "policies": {rows[key].policy: rows[key].as_json() for key in runs},
        "oracle_if_instances_were_fractional_gpu_hours": round(
            fractional_gpu_hours(workload, params), 2
        ),
        "perfect_forecast_lower_bound": {
            "gpu_hours": round(bound.gpu_hours, 2),
            "cost": round(bound.cost, 2),
            "cost_ratio_to_oracle": round(bound.cost_to_oracle, 3),
        },
        "targets_for_our_policy": check_targets(rows["ours"], baselines),
        "cost_breakdown_of_our_policy": cost_breakdown(
            ledger, runs["ours"].record, oracle_record, params
        ),
        "why_not_1.3x": _why_not_1_3x(
            scenario, rows[PERFECT], rows[ORACLE].cost, oracle_record.horizon_s
        ),
        "example_reasons": _examples(runs["ours"].reasons),
        "plot": png.name,
    }
    return result, table(scenario.name, [*(rows[key] for key in runs), bound])


def _sensitivity_row(
    scenario: Scenario, record: RunRecord, base: dict[str, PolicyRun]
) -> dict[str, Any]:
    row = metrics("ours", record, base[ORACLE].record, base["static"].record, scenario.params)
    return {"overrides": dict(scenario.overrides), **row.as_json()}


def run_benchmark(
    scenarios: Sequence[Scenario],
    out_dir: Path,
    workers: int | None = None,
    sensitivity: Sequence[tuple[str, Scenario]] = (),
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]], str]:
    """All policies, the perfect-forecast reference and the oracle on all scenarios, plus our
    policy alone on each ``(base scenario name, variant)`` of ``sensitivity``; returns the
    per-scenario results, the sensitivity rows and the printed tables."""
    keys = (*CONTROLLERS, PERFECT, ORACLE)
    tasks = [(scenario, key) for scenario in scenarios for key in keys]
    tasks += [(variant, "ours") for _, variant in sensitivity]
    tasks.sort(key=lambda task: -len(materialise(task[0])[0].arrivals))
    workers = workers or os.cpu_count() or 1
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            outputs = list(pool.map(run_one, tasks))
    else:
        outputs = [run_one(task) for task in tasks]
    by_scenario: dict[str, dict[str, PolicyRun]] = {}
    for run in outputs:
        by_scenario.setdefault(run.scenario, {})[run.key] = run
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    tables: list[str] = []
    for scenario in scenarios:
        runs = {key: by_scenario[scenario.name][key] for key in keys}
        results[scenario.name], text = _scenario_report(scenario, runs, out_dir)
        tables.append(text)
    rows: dict[str, list[dict[str, Any]]] = {}
    for base_name, variant in sensitivity:
        record = by_scenario[variant.name]["ours"].record
        rows.setdefault(base_name, []).append(
            _sensitivity_row(variant, record, by_scenario[base_name])
        )
    return results, rows, "\n\n".join(tables)
