"""How long our policy's scale-down stabilisation window should be: a sweep.

Our policy on every scenario of ``bench.autoscaler_sim`` (all but the scale-to-zero
one, whose cost is its cold starts) with the window at 200 s (the default), 150 s
and 100 s (one preemptible lead time), over three seeds of the synthetic parts;
SLO attainment and cost relative to the oracle of each. A shorter window is
cheaper everywhere; the question is where it stops meeting the SLO.

    python -m bench.autoscaler_window [--windows 200,150,100] [--seeds 7,11,13]
"""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from bench.common import write_result
from bench.sim.calibration import DEFAULT_CALIBRATION_PATH, load_calibration
from bench.sim.mesh import MeshParams
from bench.sim.report import metrics
from bench.sim.runner import PolicyRun, run_one
from bench.sim.scenarios import ORACLE, Scenario, default_scenarios, sensitivity_scenarios

SLO = 0.999


@dataclass(frozen=True)
class _Task:
    seed: int
    scenario: Scenario
    base: str
    key: str
    """``oracle``, ``static`` or the window (seconds) as text."""


def _tasks(seeds: list[int], windows: list[float]) -> list[_Task]:
    calibration = load_calibration(DEFAULT_CALIBRATION_PATH, "asr_small")
    tasks = []
    for seed in seeds:
        for scenario in default_scenarios(calibration, seed=seed):
            if scenario.name == "sparse_night":
                continue
            tasks.append(_Task(seed, scenario, scenario.name, ORACLE))
            tasks.append(_Task(seed, scenario, scenario.name, "static"))
            for window in windows:
                variant = sensitivity_scenarios(scenario, ((("scale_down_window_s", window),),))
                tasks.append(_Task(seed, variant[0], scenario.name, f"{window:g}"))
    return tasks


def _run(task: _Task) -> tuple[_Task, PolicyRun]:
    policy = task.key if task.key in (ORACLE, "static") else "ours"
    return task, run_one((task.scenario, policy))


def main() -> None:
    """Runs the sweep, prints a table, writes bench/results/autoscaler_window.json."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", default="200,150,100", help="seconds, comma-separated")
    parser.add_argument("--seeds", default="7,11,13")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    windows = [float(w) for w in args.windows.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        done = list(pool.map(_run, _tasks(seeds, windows)))
    runs: dict[tuple[int, str], dict[str, tuple[PolicyRun, MeshParams]]] = {}
    for task, run in done:
        runs.setdefault((task.seed, task.base), {})[task.key] = (run, task.scenario.params)
    rows: list[dict[str, Any]] = []
    for (seed, name), by_key in sorted(runs.items()):
        oracle, static = by_key[ORACLE][0].record, by_key["static"][0].record
        line = f"seed {seed:>3} {name:<27}"
        for window in windows:
            run, params = by_key[f"{window:g}"]
            figures = metrics("ours", run.record, oracle, static, params).as_json()
            slo, ratio = figures["slo_attainment"], figures["cost_ratio_to_oracle"]
            line += f" | {window:g} s: {slo:8.3%} {ratio:.3f}x"
            rows.append(
                {
                    "seed": seed,
                    "scenario": name,
                    "scale_down_window_s": window,
                    "slo_attainment": slo,
                    "meets_slo": slo >= SLO,
                    "cost_ratio_to_oracle": ratio,
                }
            )
        print(line, flush=True)
    verdict: dict[str, dict[str, Any]] = {}
    for window in windows:
        mine = [r for r in rows if r["scale_down_window_s"] == window]
        verdict[f"{window:g}"] = {
            "meets_slo_in": sum(r["meets_slo"] for r in mine),
            "of": len(mine),
            "mean_cost_ratio_to_oracle": round(
                sum(r["cost_ratio_to_oracle"] for r in mine) / len(mine), 3
            ),
        }
        print(f"window {window:g} s: {verdict[f'{window:g}']}")
    write_result(
        "autoscaler_window",
        {"slo": SLO, "windows_s": windows, "seeds": seeds, "summary": verdict, "runs": rows},
    )


if __name__ == "__main__":
    main()
