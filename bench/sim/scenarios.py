"""The benchmark's scenarios and the policies compared in each.

A scenario is described by a small picklable spec so that worker processes can rebuild its
workload and availability deterministically from the seed.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.sim.availability import (
    AvailabilityTrace,
    always_available,
    load_trace,
    synthetic_spot_trace,
)
from bench.sim.baselines import HpaGpu, NomadTargetValue, SpotHedge, StaticPeak
from bench.sim.bound import PerfectForecast
from bench.sim.calibration import Calibration
from bench.sim.control import Controller
from bench.sim.mesh import MeshParams
from bench.sim.oracle import profile
from bench.sim.ours import OurPolicy, policy_for
from bench.sim.workload import (
    Workload,
    azure_trace,
    diurnal_replay,
    sparse_sessions,
    synthetic_bursts,
)

__all__ = [
    "CONTROLLERS",
    "LAST_RESORT_WINDOW_S",
    "ORACLE",
    "PERFECT",
    "Scenario",
    "default_scenarios",
    "initial_instances",
    "make_controller",
    "materialise",
    "sensitivity_scenarios",
]

ORACLE = "oracle"
LAST_RESORT_WINDOW_S = 70.0
"""How long after a notice a reclaimed instance takes last-resort streams with the router's
opt-in ``last_resort`` on: the preemptible jobs drain for 100 s and the router needs 30 s of
drain left (``nomad/README.md``)."""
PERFECT = "perfect"
"""The perfect-forecast reference controller: not a baseline, the floor a real one can reach."""
CONTROLLERS = ("ours", "static", "hpa", "nomad", "spothedge")


@dataclass(frozen=True)
class Scenario:
    """One benchmark scenario."""

    name: str
    """Name in the report and the PNG's file name."""
    workload: str
    """``bursts``, ``azure``, ``diurnal`` or ``sparse``."""
    seed: int
    """Seed of the synthetic parts."""
    params: MeshParams
    """Mesh parameters (calibration, queue limit, prices, notice, sampling)."""
    availability: str = "always"
    """``always``, ``synthetic`` (SkyPilot-like) or a path to a trace JSON."""
    days: float = 1.0
    """Length of the diurnal replay."""
    ramp_s: float = 600.0
    """Ramp time of the synthetic bursts."""
    scale_to_zero: bool = False
    """Whether our policy may take the pool to zero instances."""
    overrides: tuple[tuple[str, float], ...] = ()
    """``(PoolPolicy field, value)`` pairs overriding our policy's defaults (sensitivity runs
    only)."""
    note: str = ""
    """What the scenario shows."""


@functools.lru_cache(maxsize=8)
def materialise(scenario: Scenario) -> tuple[Workload, AvailabilityTrace]:
    """The scenario's workload and availability trace (deterministic, cached per process)."""
    if scenario.workload == "bursts":
        workload = synthetic_bursts(scenario.seed, ramp_s=scenario.ramp_s)
    elif scenario.workload == "azure":
        workload = azure_trace()
    elif scenario.workload == "diurnal":
        workload = diurnal_replay(azure_trace(), scenario.days, scenario.seed)
    elif scenario.workload == "sparse":
        workload = sparse_sessions(scenario.seed)
    else:
        raise ValueError(f"unknown workload {scenario.workload!r}")
    duration = workload.arrivals[-1] + scenario.params.tail_s if workload.arrivals else 0.0
    if scenario.availability == "always":
        availability = always_available()
    elif scenario.availability == "synthetic":
        availability = synthetic_spot_trace(scenario.seed, duration)
    else:
        availability = load_trace(Path(scenario.availability))
    return workload, availability


def make_controller(name: str, scenario: Scenario) -> Controller:
    """A fresh controller for one run of ``scenario``."""
    calibration = scenario.params.calibration
    if name == "ours":
        config = policy_for(calibration, scale_to_zero=scenario.scale_to_zero)
        overrides: dict[str, Any] = dict(scenario.overrides)
        return OurPolicy(replace(config, **overrides))
    if name == "static":
        workload, _ = materialise(scenario)
        return StaticPeak(profile(workload).peak_instances(calibration.max_streams))
    if name == "hpa":
        return HpaGpu()
    if name == "nomad":
        return NomadTargetValue()
    if name == "spothedge":
        return SpotHedge(streams_per_replica=0.8 * calibration.max_streams)
    if name == PERFECT:
        workload, availability = materialise(scenario)
        return PerfectForecast(
            profile(workload),
            availability,
            calibration.on_demand_lead_s,
            calibration.preemptible_lead_s,
        )
    raise ValueError(f"unknown controller {name!r}")


def default_scenarios(
    calibration: Calibration,
    *,
    seed: int = 7,
    days: float = 4.0,
    availability: str = "synthetic",
) -> tuple[Scenario, ...]:
    """The benchmark's scenarios (see docs/autoscaling.md, "Benchmark")."""
    base = MeshParams(calibration=calibration, sample_s=30.0)
    daily = replace(base, sample_s=300.0)
    diurnal = f"azure_diurnal_{days:g}d"
    return (
        Scenario(
            name="synthetic_ramps",
            workload="bursts",
            seed=seed,
            params=base,
            ramp_s=600.0,
            note="bursts to 4x ramping over 10 minutes; preemptible always available",
        ),
        Scenario(
            name="synthetic_flash",
            workload="bursts",
            seed=seed,
            params=base,
            ramp_s=60.0,
            note="flash crowds: 4x within 1 minute, faster than any instance can start",
        ),
        Scenario(
            name="azure_conv_1h",
            workload="azure",
            seed=seed,
            params=base,
            note="the real one-hour trace at real speed; preemptible always available",
        ),
        Scenario(
            name=diurnal,
            workload="diurnal",
            seed=seed,
            params=daily,
            availability=availability,
            days=days,
            note="days of diurnal load, hours-long preemptible outages, 2 min notice; "
            "instances under notice drain and take no new stream (the router's default)",
        ),
        Scenario(
            name=f"{diurnal}_last_resort",
            workload="diurnal",
            seed=seed,
            params=replace(daily, overflow_window_s=LAST_RESORT_WINDOW_S),
            availability=availability,
            days=days,
            note="as above with the router's opt-in last resort: instances under notice take "
            f"new streams for the first {LAST_RESORT_WINDOW_S:g} s when no other slot is free",
        ),
        Scenario(
            name=f"{diurnal}_notice30",
            workload="diurnal",
            seed=seed,
            params=replace(daily, preemption_notice_s=30.0),
            availability=availability,
            days=days,
            note="as above with a 30 s notice (GCP, Azure), the preemptible drain set below "
            "it, so no last resort: replacements cannot arrive in time",
        ),
        Scenario(
            name="sparse_night",
            workload="sparse",
            seed=seed,
            params=replace(base, max_wait_s=180.0, sample_s=60.0),
            scale_to_zero=True,
            note="scale to zero and back (a large-model pool at night; the router holds a "
            "stream up to 180 s through a cold start); our policy may reach 0 instances, "
            "the baselines keep their minimum of 1",
        ),
    )


def sensitivity_scenarios(
    scenario: Scenario, variants: tuple[tuple[tuple[str, float], ...], ...]
) -> tuple[Scenario, ...]:
    """``scenario`` once per variant of our policy's settings (``(field, value)`` pairs)."""
    return tuple(
        replace(
            scenario,
            name=f"{scenario.name}@" + ",".join(f"{k}={v:g}" for k, v in overrides),
            overrides=overrides,
        )
        for overrides in variants
    )


def initial_instances(scenario: Scenario) -> int:
    """Instances the first five minutes need: every dynamic policy starts with them."""
    workload, _ = materialise(scenario)
    return profile(workload).instances_before(300.0, scenario.params.calibration.max_streams)
