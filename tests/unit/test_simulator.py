"""The autoscaler simulator (bench/sim): accounting, the reference policies, determinism and
the availability generator. Small workloads only: the whole file runs in a few seconds."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from bench.sim.availability import (
    AvailabilityTrace,
    always_available,
    load_trace,
    synthetic_spot_trace,
)
from bench.sim.baselines import HpaGpu, NomadTargetValue, SpotHedge, StaticPeak
from bench.sim.bound import PerfectForecast, perfect_forecast_bound, rises_beyond
from bench.sim.breakdown import cost_breakdown
from bench.sim.calibration import Calibration, load_calibration
from bench.sim.control import Actions, Controller, GroupView, MeshView
from bench.sim.engine import simulate
from bench.sim.mesh import MeshParams
from bench.sim.oracle import fractional_gpu_hours, oracle, profile
from bench.sim.ours import OurPolicy, policy_for
from bench.sim.record import RunRecord, percentile_wait
from bench.sim.report import metrics
from bench.sim.scenarios import LAST_RESORT_WINDOW_S
from bench.sim.workload import (
    AudioMapping,
    Workload,
    azure_trace,
    diurnal_replay,
    synthetic_bursts,
)

CAL = Calibration()
PARAMS = MeshParams(calibration=CAL, sample_s=30.0)
DAY_S = 86_400.0


def small_workload(seed: int = 3) -> Workload:
    return synthetic_bursts(seed, hours=0.6, base_rate=1.0, burst_every_s=900.0)


def outage_at(start_tick: int, ticks: int = 20, gap_s: float = 300.0) -> AvailabilityTrace:
    """Plenty of preemptible capacity, none from ``start_tick`` on."""
    data = tuple(1000 if i < start_tick else 0 for i in range(ticks))
    return AvailabilityTrace(name="test outage", gap_s=gap_s, data=data)


def controllers(
    workload: Workload, availability: AvailabilityTrace | None = None
) -> list[Controller]:
    peak = profile(workload).peak_instances(CAL.max_streams)
    return [
        OurPolicy(policy_for(CAL)),
        StaticPeak(peak),
        HpaGpu(),
        NomadTargetValue(),
        SpotHedge(),
        perfect_forecast(workload, availability or always_available()),
    ]


def perfect_forecast(workload: Workload, availability: AvailabilityTrace) -> PerfectForecast:
    return PerfectForecast(
        profile(workload), availability, CAL.on_demand_lead_s, CAL.preemptible_lead_s
    )


def run(
    controller: Controller,
    workload: Workload,
    availability: AvailabilityTrace | None = None,
    params: MeshParams = PARAMS,
) -> RunRecord:
    initial = profile(workload).instances_before(300.0, CAL.max_streams)
    return simulate(workload, availability or always_available(), controller, params, initial)


@pytest.mark.parametrize("notice_s", [30.0, 120.0])
def test_every_arrival_is_admitted_or_dropped_and_every_interruption_accounted(
    notice_s: float,
) -> None:
    workload = small_workload()
    params = replace(PARAMS, preemption_notice_s=notice_s)
    for controller in controllers(workload, outage_at(3)):
        record = run(controller, workload, outage_at(3), params)
        assert record.arrivals == len(workload.arrivals)
        assert record.admitted + record.dropped_waiting == record.arrivals, controller.name
        assert record.interrupted == record.resumed + record.dropped_preemption
        assert sum(record.missed) <= record.arrivals
        assert all(q <= d for q, d in zip(record.series.queued, record.series.demand, strict=True))
        assert len(record.waits) <= record.arrivals


def test_oracle_never_queues_and_uses_the_cheapest_capacity_available() -> None:
    workload = small_workload()
    availability = outage_at(3)
    record = oracle(workload, availability, PARAMS)
    series = record.series
    assert not any(series.queued)
    for demand, od, pe in zip(
        series.demand, series.on_demand_slots, series.preemptible_slots, strict=True
    ):
        assert od + pe >= demand
        assert od + pe < demand + CAL.max_streams  # no idle instance
    outage_start = 3 * availability.gap_s
    for t, od, pe in zip(series.t, series.on_demand_slots, series.preemptible_slots, strict=True):
        assert (od == 0) if t < outage_start else (pe == 0)
    assert record.slo_attainment == 1.0
    assert record.instance_hours[0] > 0 and record.instance_hours[1] > 0
    fractional = fractional_gpu_hours(workload, PARAMS)
    assert 0.8 * sum(record.instance_hours) < fractional < sum(record.instance_hours)


def test_static_peak_never_queues_but_one_instance_less_does() -> None:
    workload = small_workload()
    peak = profile(workload).peak_instances(CAL.max_streams)
    enough = run(StaticPeak(peak), workload)
    assert enough.slo_attainment == 1.0
    assert not enough.waits and not any(enough.series.queued)
    assert enough.instance_hours[0] == pytest.approx(peak * enough.horizon_s / 3600.0)
    short = run(StaticPeak(peak - 1), workload)
    assert short.waits, "one instance below the peak must make someone wait"


def test_results_are_deterministic_for_a_seed() -> None:
    first = run(OurPolicy(policy_for(CAL)), small_workload(5), outage_at(4))
    again = run(OurPolicy(policy_for(CAL)), small_workload(5), outage_at(4))
    other = run(OurPolicy(policy_for(CAL)), small_workload(6), outage_at(4))
    assert first.instance_hours == again.instance_hours
    assert first.missed == again.missed and first.waits == again.waits
    assert first.series == again.series
    assert first.instance_hours != other.instance_hours


@pytest.mark.parametrize(("zero_fraction", "mean_outage_h"), [(0.2, 1.5), (0.35, 4.0), (0.55, 7.0)])
def test_synthetic_availability_reproduces_the_published_ranges(
    zero_fraction: float, mean_outage_h: float
) -> None:
    trace = synthetic_spot_trace(
        11, 365 * DAY_S, zero_fraction=zero_fraction, mean_outage_h=mean_outage_h, capacity=50
    )
    stats = trace.stats()
    assert 0.16 - 0.03 <= stats.zero_fraction <= 0.62 + 0.03
    assert stats.zero_fraction == pytest.approx(zero_fraction, abs=0.06)
    assert 1.0 <= stats.mean_outage_h <= 8.0
    assert stats.mean_outage_h == pytest.approx(mean_outage_h, rel=0.25)
    assert stats.max_outage_h <= 86.0
    assert set(trace.data) == {0, 50}, "full availability otherwise"
    available_h = (1 - stats.zero_fraction) * 365 * 24 / stats.outages
    assert available_h > mean_outage_h * 0.5, "available for long stretches between outages"


def test_a_real_trace_json_is_loaded_and_repeats(tmp_path: Path) -> None:
    path = tmp_path / "trace.json"
    path.write_text(json.dumps({"metadata": {"gap_seconds": 600}, "data": [3, 0, 0, 5]}))
    trace = load_trace(path)
    assert (trace.gap_s, trace.data) == (600.0, (3, 0, 0, 5))
    assert [trace.at(t) for t in (0, 599, 600, 1800, 2400)] == [3, 3, 0, 5, 3]
    stats = trace.stats()
    assert (stats.zero_fraction, stats.outages, stats.max_outage_h) == (0.5, 1, 2 * 600 / 3600)


@dataclass
class HoldPreemptible:
    """Keeps one on-demand and three preemptible instances and never evaluates."""

    name: str = "hold"
    interval_s: float = math.inf

    def initial_fleet(self, instances: int, preemptible_available: int) -> tuple[int, int]:
        return 1, 3

    def control(self, view: MeshView) -> Actions:
        return Actions()


def test_a_reclaim_interrupts_streams_and_requeues_them_first() -> None:
    workload = Workload(
        name="steady",
        arrivals=tuple(float(t) for t in range(0, 900, 20)),
        durations=(200.0,) * 45,
        description="one 200 s stream every 20 s",
    )
    record = run(HoldPreemptible(), workload, outage_at(1))
    assert record.interrupted > 0
    assert record.dropped_preemption > 0, "one on-demand instance cannot take them all"
    assert record.interrupted == record.resumed + record.dropped_preemption
    assert record.instance_hours[1] == pytest.approx(3 * (300 + 120) / 3600.0)


def test_instances_under_notice_take_new_streams_only_within_the_last_resort_window() -> None:
    workload = Workload(
        name="steady",
        arrivals=tuple(float(t) for t in range(0, 900, 20)),
        durations=(200.0,) * 45,
        description="one 200 s stream every 20 s",
    )
    admitted = {}
    for window in (0.0, LAST_RESORT_WINDOW_S, math.inf):
        record = run(
            HoldPreemptible(), workload, outage_at(1), replace(PARAMS, overflow_window_s=window)
        )
        assert record.interrupted == record.resumed + record.dropped_preemption
        admitted[window] = record.admitted
    # Slots free up on the reclaimed instances all through the notice: the window lets the
    # early ones take new streams, an unbounded one (the instance alive to the end) more.
    assert admitted[0.0] < admitted[LAST_RESORT_WINDOW_S] < admitted[math.inf]


def test_our_policy_replaces_reclaimed_instances_on_the_notice() -> None:
    workload = small_workload()
    starts: list[tuple[float, int]] = []
    policy = OurPolicy(policy_for(CAL))

    @dataclass
    class Spy:
        name: str = "spy"
        interval_s: float = policy.interval_s

        def initial_fleet(self, instances: int, preemptible_available: int) -> tuple[int, int]:
            return policy.initial_fleet(instances, preemptible_available)

        def control(self, view: MeshView) -> Actions:
            actions = policy.control(view)
            if view.preemptible.reclaiming:
                starts.append((view.now, actions.on_demand.start))
            return actions

    params = replace(PARAMS, overflow_window_s=LAST_RESORT_WINDOW_S)
    record = run(Spy(), workload, outage_at(3), params)
    notice_at = 3 * 300.0
    first_at, first_start = starts[0]
    assert first_at - notice_at <= policy.interval_s
    assert first_start > 0, "on-demand replacements requested on the first evaluation"
    assert record.dropped_preemption == 0, "replacements serve before the 2 min notice ends"
    assert record.dropped_waiting == 0
    series = record.series
    after = [i for i, t in enumerate(series.t) if t >= notice_at + params.preemption_notice_s]
    assert after and all(series.preemptible_slots[i] == 0 for i in after)
    kill = after[0]
    assert series.on_demand_slots[kill] >= series.demand[kill], "no gap when the notice ends"


def test_our_policy_scales_from_zero_and_records_the_cold_start() -> None:
    starts = [*range(600, 1200, 30), *range(6000, 6600, 30)]
    workload = Workload(
        name="two sessions",
        arrivals=tuple(float(t) for t in starts),
        durations=(40.0,) * len(starts),
        description="two 10 minute sessions, 90 minutes apart",
    )
    params = replace(PARAMS, max_wait_s=180.0)
    policy = OurPolicy(policy_for(CAL, scale_to_zero=True))
    record = simulate(workload, always_available(), policy, params, 0)
    assert record.admitted == record.arrivals
    assert len(record.cold_starts) == 2
    assert all(
        CAL.preemptible_lead_s <= w <= CAL.preemptible_lead_s + 10 for w in record.cold_starts
    )
    assert percentile_wait(record, 1.0) >= CAL.preemptible_lead_s


def gpu_view(loads: tuple[int, ...], *, starting: int = 0, queued: int = 0) -> MeshView:
    group = GroupView(
        serving=len(loads),
        starting=starting,
        unplaced=0,
        draining=0,
        reclaiming=0,
        oldest_starting_s=0.0,
        serving_loads=loads,
    )
    empty = GroupView(0, 0, 0, 0, 0, 0.0, ())
    return MeshView(
        now=0.0,
        max_streams=4,
        active_streams=sum(loads),
        queued=queued,
        on_demand=group,
        preemptible=empty,
    )


def test_the_baselines_follow_their_documented_rules() -> None:
    # HPA: ceil(4 x 1.0 / 0.8) = 5; within the 0.1 tolerance nothing happens.
    assert HpaGpu().control(gpu_view((4, 4, 4, 4))).on_demand.start == 1
    assert HpaGpu().control(gpu_view((3, 4, 3, 4))).on_demand == Actions().on_demand
    # Nomad target-value: same factor, then a 5 minute cooldown...
    nomad = NomadTargetValue()
    assert nomad.control(gpu_view((4, 4, 4, 4))).on_demand.start == 1
    assert nomad.control(replace(gpu_view((4, 4, 4, 4, 4)), now=60.0)) == Actions()
    # ...and no metric, hence no scaling, without a running instance.
    assert NomadTargetValue().control(gpu_view((), queued=5)) == Actions()


def test_azure_trace_mapping_and_diurnal_replay(tmp_path: Path) -> None:
    csv = tmp_path / "trace.csv"
    csv.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.6805900,374,44\n"
        "2023-11-16 18:15:50.9951690,10,5\n"
        "2023-11-16 18:16:46.6805900,9000,1000\n"
    )
    base = azure_trace(csv, AudioMapping())
    assert base.arrivals == pytest.approx((0.0, 4.314579, 60.0))
    assert base.durations == pytest.approx((8.36, 2.0, 120.0))
    tiled = diurnal_replay(base, 1.0, seed=1, floor=0.0, volume=1.0)
    hours = [a / 3600.0 for a in tiled.arrivals]
    night = sum(1 for h in hours if h < 4 or h >= 22)
    afternoon = sum(1 for h in hours if 12 <= h < 16)
    assert afternoon > 5 * max(1, night)


def test_calibration_is_read_flat_or_nested_with_defaults_for_the_rest(tmp_path: Path) -> None:
    assert load_calibration(tmp_path / "missing.json") == Calibration()
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"asr_small.max_streams": 6, "asr_small.startup_seconds": 4.5}))
    calibration = load_calibration(flat, "asr_small")
    assert (calibration.max_streams, calibration.startup_s) == (6, 4.5)
    assert calibration.on_demand_provision_s == Calibration().on_demand_provision_s
    assert "max_streams" in calibration.source
    nested = tmp_path / "nested.json"
    nested.write_text(json.dumps({"asr_large": {"max_streams": 2}}))
    assert load_calibration(nested, "asr_large").max_streams == 2
    assert load_calibration(nested, "asr_small") == Calibration()


def test_the_perfect_forecast_bound_lies_between_the_oracle_and_the_reference_controller() -> None:
    workload = small_workload()
    for availability in (always_available(), outage_at(3)):
        orc = oracle(workload, availability, PARAMS)
        bound = perfect_forecast_bound(workload, availability, PARAMS)
        reference = run(perfect_forecast(workload, availability), workload, availability)
        cost = [metrics("", r, orc, orc, PARAMS).cost for r in (orc, bound, reference)]
        assert cost[0] < cost[1] <= cost[2], cost
        assert reference.slo_attainment >= 0.999, "a perfect forecast needs no margin"
    # With preemptible capacity all the time, the bound is the oracle plus one preemptible
    # lead time of the busiest moment ahead: more than the oracle, by less than the lead time
    # of every instance at all times.
    orc = oracle(workload, always_available(), PARAMS)
    bound = perfect_forecast_bound(workload, always_available(), PARAMS)
    assert bound.instance_hours[0] == 0.0
    peak = profile(workload).peak_instances(CAL.max_streams)
    assert bound.instance_hours[1] - orc.instance_hours[1] < peak * bound.horizon_s / 3600.0


def test_the_ledger_accounts_for_every_billed_hour_and_explains_the_cost_gap() -> None:
    workload = small_workload()
    availability = outage_at(3)
    policy = OurPolicy(policy_for(CAL))
    record = run(policy, workload, availability)
    orc = oracle(workload, availability, PARAMS)
    ledger = policy.ledger
    billed = sum(record.instance_hours)
    assert sum(ledger.hours.values()) == pytest.approx(billed, rel=0.02)
    assert sum(ledger.on_demand_hours.values()) == pytest.approx(record.instance_hours[0], rel=0.02)
    assert ledger.on_demand_hours["baseline (on-demand minimum)"] == pytest.approx(
        record.horizon_s / 3600.0, rel=0.02
    ), "one on-demand instance all the time"
    assert ledger.on_demand_hours["preemptible not trusted"] > 0, "the outage went on-demand"
    assert ledger.hours["starting (lead time)"] > 0 and ledger.hours["spare slots"] > 0
    breakdown = cost_breakdown(ledger, record, orc, PARAMS)
    gap = breakdown["cost"] - breakdown["cost_oracle"]
    assert gap > 0
    assert sum(breakdown["cost_above_oracle_by_cause"].values()) == pytest.approx(gap, abs=0.02)
    residual = "demand vs oracle (perfect packing, queueing, 5 s sampling)"
    assert abs(breakdown["cost_above_oracle_by_cause"][residual]) < 0.1 * gap


def test_rises_beyond_a_margin_are_counted_at_arrivals() -> None:
    steady = Workload(
        name="steady",
        arrivals=tuple(float(t) for t in range(0, 3600, 2)),
        durations=(20.0,) * 1800,
        description="one 20 s stream every 2 s",
    )
    sigmas, share = rises_beyond(steady, 3900.0, 98.0, spare_slots=30.0, skip_s=300.0)
    assert share == 0.0 and sigmas > 5
    bursty = small_workload()
    _, tight = rises_beyond(bursty, 2500.0, 98.0, spare_slots=1.0, skip_s=300.0)
    _, loose = rises_beyond(bursty, 2500.0, 98.0, spare_slots=40.0, skip_s=300.0)
    assert 0.0 <= loose < tight <= 1.0
