"""Run every policy on every scenario (in parallel processes), then report and plot."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.sim.engine import simulate
from bench.sim.oracle import oracle, profile
from bench.sim.ours import OurPolicy
from bench.sim.plot import plot_scenario
from bench.sim.record import RunRecord, Series
from bench.sim.report import Metrics, check_targets, metrics, table
from bench.sim.scenarios import (
    CONTROLLERS,
    ORACLE,
    Scenario,
    initial_instances,
    make_controller,
    materialise,
)

__all__ = ["run_benchmark"]

_EXAMPLE_MARKERS = (
    "queue of",
    "growing",
    "being reclaimed",
    "placements failing",
    "scale from zero",
    "drain",
)


def _run_one(task: tuple[Scenario, str]) -> tuple[str, str, str, RunRecord, list[str]]:
    """One policy on one scenario: ``(scenario, policy key, display name, record, reasons)``."""
    scenario, key = task
    workload, availability = materialise(scenario)
    if key == ORACLE:
        return (
            scenario.name,
            key,
            "oracle (no delay, cheapest)",
            oracle(workload, availability, scenario.params),
            [],
        )
    controller = make_controller(key, scenario)
    record = simulate(
        workload, availability, controller, scenario.params, initial_instances(scenario)
    )
    reasons = controller.reasons if isinstance(controller, OurPolicy) else []
    return scenario.name, key, controller.name, record, reasons


def _examples(reasons: list[str]) -> list[str]:
    """One decision reason per kind of situation, to show what the reasons look like."""
    picked: list[str] = []
    for marker in _EXAMPLE_MARKERS:
        found = next((r for r in reasons if marker in r and r not in picked), None)
        if found:
            picked.append(found)
    return picked


def _scenario_report(
    scenario: Scenario,
    runs: dict[str, tuple[str, RunRecord, list[str]]],
    out_dir: Path,
) -> tuple[dict[str, Any], str]:
    workload, availability = materialise(scenario)
    params = scenario.params
    oracle_record, static_record = runs[ORACLE][1], runs["static"][1]
    rows: dict[str, Metrics] = {
        key: metrics(name, record, oracle_record, static_record, params)
        for key, (name, record, _) in runs.items()
    }
    baselines = [rows[key] for key in CONTROLLERS if key != "ours"]
    series: dict[str, Series] = {name: record.series for name, record, _ in runs.values()}
    png = out_dir / f"autoscaler_sim_{scenario.name}.png"
    plot_scenario(f"{scenario.name}: {scenario.note}", series, png)
    stats = availability.stats()
    cal = params.calibration
    result = {
        "note": scenario.note,
        "workload": {
            "description": workload.description,
            "streams": len(workload.arrivals),
            "hours": round(runs[ORACLE][1].horizon_s / 3600.0, 2),
            "peak_instances": profile(workload).peak_instances(cal.max_streams),
            "initial_instances": initial_instances(scenario),
        },
        "availability": {"trace": availability.name, **asdict(stats)},
        "mesh": {k: v for k, v in asdict(params).items() if k != "calibration"},
        "policies": {rows[key].policy: rows[key].as_json() for key in runs},
        "targets_for_our_policy": check_targets(rows["ours"], baselines),
        "example_reasons": _examples(runs["ours"][2]),
        "plot": png.name,
    }
    return result, table(scenario.name, [rows[key] for key in runs])


def _sensitivity_row(
    scenario: Scenario, record: RunRecord, base: dict[str, tuple[str, RunRecord, list[str]]]
) -> dict[str, Any]:
    row = metrics("ours", record, base[ORACLE][1], base["static"][1], scenario.params)
    return {"burst_sigmas": scenario.burst_sigmas, **row.as_json()}


def run_benchmark(
    scenarios: Sequence[Scenario],
    out_dir: Path,
    workers: int | None = None,
    sensitivity: Sequence[tuple[str, Scenario]] = (),
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]], str]:
    """All policies on all scenarios, plus our policy alone on each ``(base scenario name,
    variant)`` of ``sensitivity``; returns the per-scenario results, the sensitivity rows
    and the printed tables."""
    keys = (*CONTROLLERS, ORACLE)
    tasks = [(scenario, key) for scenario in scenarios for key in keys]
    tasks += [(variant, "ours") for _, variant in sensitivity]
    tasks.sort(key=lambda task: -len(materialise(task[0])[0].arrivals))
    workers = workers or os.cpu_count() or 1
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            outputs = list(pool.map(_run_one, tasks))
    else:
        outputs = [_run_one(task) for task in tasks]
    by_scenario: dict[str, dict[str, tuple[str, RunRecord, list[str]]]] = {}
    for scenario_name, key, name, record, reasons in outputs:
        by_scenario.setdefault(scenario_name, {})[key] = (name, record, reasons)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    tables: list[str] = []
    for scenario in scenarios:
        runs = {key: by_scenario[scenario.name][key] for key in keys}
        results[scenario.name], text = _scenario_report(scenario, runs, out_dir)
        tables.append(text)
    rows: dict[str, list[dict[str, Any]]] = {}
    for base_name, variant in sensitivity:
        record = by_scenario[variant.name]["ours"][1]
        rows.setdefault(base_name, []).append(
            _sensitivity_row(variant, record, by_scenario[base_name])
        )
    return results, rows, "\n\n".join(tables)
