"""The scaling policy, driven with an injected clock and hand-built signals (no I/O)."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from services.autoscaler.policy import (
    CapacityGroup,
    Decision,
    GroupLimits,
    GroupSignals,
    InstanceSignals,
    PolicyState,
    PoolPolicy,
    PoolSignals,
    decide,
)
from services.autoscaler.policy.rises import (
    OpenRise,
    Rise,
    rise_quantile,
    track_rises,
)
from voxmesh.errors import SettingsError

MAX_STREAMS = 4


@dataclass
class Pool:
    """A tiny pool whose scale target applies every decision at once (instances serve at once).

    It keeps the policy state between calls and the clock, as the real evaluation loop does.
    """

    config: PoolPolicy = field(default_factory=PoolPolicy)
    on_demand: int = 1
    preemptible: int = 0
    state: PolicyState = field(default_factory=PolicyState)
    now: float = 0.0
    decisions: list[Decision] = field(default_factory=list)

    def evaluate(self, active: int, queued: int = 0, *, advance: float = 5.0) -> Decision:
        signals = PoolSignals(
            pool="asr_small",
            max_streams=MAX_STREAMS,
            active_streams=active,
            queued_realtime=queued,
            on_demand=GroupSignals(serving=self.on_demand),
            preemptible=GroupSignals(serving=self.preemptible),
        )
        decision, self.state = decide(signals, self.state, self.config, self.now)
        self.on_demand = decision.on_demand.desired
        self.preemptible = decision.preemptible.desired
        self.decisions.append(decision)
        self.now += advance
        return decision

    @property
    def total(self) -> int:
        return self.on_demand + self.preemptible


def signals(
    active: int,
    *,
    queued: int = 0,
    od: GroupSignals | None = None,
    pe: GroupSignals | None = None,
    instances: tuple[InstanceSignals, ...] = (),
    age_s: float = 0.0,
) -> PoolSignals:
    return PoolSignals(
        pool="asr_small",
        max_streams=MAX_STREAMS,
        active_streams=active,
        queued_realtime=queued,
        on_demand=od or GroupSignals(serving=1),
        preemptible=pe or GroupSignals(),
        instances=instances,
        age_s=age_s,
    )


def test_scales_up_in_the_same_evaluation_and_bursts_go_to_preemptible() -> None:
    pool = Pool()
    pool.evaluate(active=2)
    decision = pool.evaluate(active=40)
    assert decision.preemptible.delta > 0
    assert decision.on_demand.desired == 1
    assert pool.total * MAX_STREAMS >= 40 / pool.config.target_utilisation
    assert "+" in decision.reason and "preemptible" in decision.reason


def test_scales_down_only_after_the_stabilisation_window_and_by_steps() -> None:
    pool = Pool()
    pool.evaluate(active=60)
    peak = pool.total
    drop_at = pool.now
    while pool.now < drop_at + pool.config.scale_down_window_s:
        pool.evaluate(active=4)
        assert pool.total == peak, f"shrank at t={pool.now} inside the window"
    previous = pool.total
    while pool.total > 3:
        pool.evaluate(active=4)
        assert previous - pool.total <= pool.config.scale_down_step
        previous = pool.total
    assert pool.on_demand == 1


def test_oscillating_demand_does_not_flap() -> None:
    pool = Pool()
    for step in range(240):  # 20 minutes, demand swinging 8 <-> 40 every minute
        pool.evaluate(active=40 if (step // 12) % 2 else 8)
    totals = [d.on_demand.desired + d.preemptible.desired for d in pool.decisions]
    changes = [b - a for a, b in itertools.pairwise(totals) if b != a]
    reversals = sum(1 for a, b in itertools.pairwise(changes) if (a > 0) != (b > 0))
    assert reversals <= 1, changes
    peak_need = 15  # 40 streams: 40 + 3 * sqrt(40) = 59 slots
    assert min(totals[13:]) >= peak_need, "followed a trough down"


def test_tolerance_band_ignores_small_changes_but_not_a_realtime_queue() -> None:
    config = PoolPolicy(tolerance=0.2, burst_sigmas=0.0, target_utilisation=1.0)
    od, pe = GroupSignals(serving=1), GroupSignals(serving=9)
    # 10 instances hold 40 slots; 43 streams need 10.75 instances: within 20%.
    decision, _ = decide(signals(43, od=od, pe=pe), PolicyState(), config, 0.0)
    assert not decision.changes
    assert "held at 10 (within tolerance band)" in decision.reason
    decision, _ = decide(signals(40, queued=3, od=od, pe=pe), PolicyState(), config, 0.0)
    assert (decision.on_demand.desired, decision.preemptible.desired) == (1, 10)


def test_stale_signals_hold_even_when_demand_vanished() -> None:
    config = PoolPolicy()
    state = PolicyState()
    od, pe = GroupSignals(serving=3), GroupSignals(serving=5)
    decision, new_state = decide(signals(0, od=od, pe=pe, age_s=42.0), state, config, 100.0)
    assert (decision.on_demand.desired, decision.preemptible.desired) == (3, 5)
    assert not decision.changes
    assert decision.reason == "holding: signals stale for 42 s"
    assert new_state == state


def test_stale_signals_restart_the_observation_of_the_window() -> None:
    """What happened while the signals were stale is unknown: after them, a whole window
    must be observed again before anything shrinks."""
    observed = PolicyState(observing_since=0.0)
    _, state = decide(signals(0, age_s=42.0), observed, PoolPolicy(), 1000.0)
    assert state.observing_since is None
    assert replace(state, observing_since=0.0) == observed  # nothing else is forgotten


def test_a_silent_instance_holds_scale_downs_but_fresh_queues_still_scale_up() -> None:
    config = PoolPolicy(burst_sigmas=0.0, target_utilisation=1.0)
    od = GroupSignals(serving=1)
    # One instance's telemetry is 40 s old; the routers' (demand and queues) is fresh.
    fresh_queue = replace(signals(8, queued=4, od=od, age_s=40.0), demand_age_s=1.0)
    up, state = decide(fresh_queue, PolicyState(), config, 0.0)
    assert up.on_demand.desired + up.preemptible.desired == 3  # 12 streams, 4 per instance
    assert "signals stale for 40 s (demand fresh): nothing shrinks" in up.reason
    assert state.observing_since is None

    observed = PolicyState(observing_since=-1000.0)
    big = GroupSignals(serving=5)
    idle = replace(signals(0, od=big, age_s=40.0), demand_age_s=1.0)
    down, _ = decide(idle, observed, config, 0.0)
    assert not down.changes

    both, _ = decide(signals(8, queued=4, od=od, age_s=40.0), PolicyState(), config, 0.0)
    assert not both.changes
    assert both.reason == "holding: signals stale for 40 s"


def test_scales_from_zero_on_a_queued_stream_and_back_to_zero() -> None:
    config = PoolPolicy(
        allow_scale_to_zero=True,
        on_demand=GroupLimits(min_count=0, max_count=4, lead_time_s=68.0),
    )
    empty = GroupSignals()
    decision, state = decide(signals(0, od=empty, pe=empty), PolicyState(), config, 0.0)
    assert decision.on_demand.desired + decision.preemptible.desired == 0
    decision, state = decide(signals(0, queued=1, od=empty, pe=empty), state, config, 5.0)
    assert decision.preemptible.desired == 1
    assert decision.reason.startswith("scale from zero: 1 queued realtime stream")
    pe = GroupSignals(serving=1)
    now = 10.0
    while now < 10.0 + config.scale_down_window_s + 10:
        decision, state = decide(signals(0, od=empty, pe=pe), state, config, now)
        pe = GroupSignals(serving=decision.preemptible.desired)
        now += 5.0
    assert decision.preemptible.desired == 0


def test_pool_without_scale_to_zero_must_keep_an_on_demand_instance() -> None:
    with pytest.raises(SettingsError, match=r"on_demand\.min_count must be >= 1"):
        PoolPolicy(on_demand=GroupLimits(min_count=0))


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("rise_quantile", 0.0, r"rise_quantile must be in \(0, 1\], got 0.0"),
        ("rise_quantile", 1.5, r"rise_quantile must be in \(0, 1\], got 1.5"),
        ("rise_history_s", -1.0, r"rise_history_s must be >= 0, got -1.0"),
    ],
)
def test_invalid_rise_settings_name_the_setting(setting: str, value: float, message: str) -> None:
    overrides: dict[str, Any] = {setting: value}
    with pytest.raises(SettingsError, match=message):
        replace(PoolPolicy(), **overrides)


def test_gpu_guard_counts_a_saturated_instance_as_full() -> None:
    config = PoolPolicy(burst_sigmas=0.0, target_utilisation=1.0)

    def loads(hot_utilisation: float, hot_memory: float) -> tuple[InstanceSignals, ...]:
        return (
            InstanceSignals(CapacityGroup.ON_DEMAND, 1, hot_utilisation, 0.4),
            InstanceSignals(CapacityGroup.ON_DEMAND, 1, 0.5, hot_memory),
            InstanceSignals(CapacityGroup.ON_DEMAND, 4, 0.8, 0.5),
        )

    # 6 active + 2 queued fit in 3 instances by stream count (12 slots)...
    od, pe = GroupSignals(serving=1), GroupSignals(serving=2)
    plain = signals(6, queued=2, od=od, pe=pe, instances=loads(0.5, 0.5))
    decision, _ = decide(plain, PolicyState(), config, 0.0)
    assert not decision.changes
    # ...but not when two of them have a busy GPU or a full GPU memory.
    hot = signals(6, queued=2, od=od, pe=pe, instances=loads(0.97, 0.95))
    guarded, _ = decide(hot, PolicyState(), config, 0.0)
    assert guarded.preemptible.delta == 1
    assert "2 GPU-saturated instances counted full" in guarded.reason
    no_gpu = tuple(InstanceSignals(CapacityGroup.ON_DEMAND, 2) for _ in range(3))
    decision, _ = decide(signals(6, od=od, instances=no_gpu), PolicyState(), config, 0.0)
    assert "GPU-saturated" not in decision.reason


def test_growth_is_anticipated_over_the_lead_time() -> None:
    flat, rising = Pool(), Pool()
    for step in range(30):
        flat.evaluate(active=40)
        rising.evaluate(active=10 + step)
    assert rising.decisions[-1].reason.count("growing") == 1
    # 1 stream/5 s over a 98 s lead time: about 20 more streams expected than seen.
    assert rising.total > flat.total


def test_anticipated_growth_waits_for_the_cooldown_but_measured_demand_does_not() -> None:
    config = PoolPolicy(scale_up_cooldown_s=30.0)
    rising = tuple((float(t), 10 + (t + 110) // 5) for t in range(-110, 10, 5))  # 0.2/s
    state = PolicyState(demand_samples=rising, last_scale_up_at=0.0)
    # 34 streams need 13 instances now, about 19 one lead time ahead.
    od, pe = GroupSignals(serving=1), GroupSignals(serving=12)
    cooled, _ = decide(signals(34, od=od, pe=pe), state, config, 10.0)
    assert not cooled.changes and "held at 13 (scale-up cooldown)" in cooled.reason
    later, _ = decide(signals(34, od=od, pe=pe), state, config, 40.0)
    assert later.preemptible.delta > 0
    measured, _ = decide(signals(60, od=od, pe=pe), state, config, 10.0)
    assert measured.preemptible.delta > 0
    queued, _ = decide(signals(34, queued=2, od=od, pe=pe), state, config, 10.0)
    assert queued.preemptible.delta > 0


def test_failing_preemptible_placements_fall_back_to_on_demand_and_move_back() -> None:
    config = PoolPolicy(burst_sigmas=0.0, target_utilisation=1.0, rise_history_s=0.0)
    # An autoscaler that has been running for a whole window when placements start failing.
    state = PolicyState(observing_since=-config.scale_down_window_s)
    od = GroupSignals(serving=1)
    failing = GroupSignals(starting=4, placement_failing=True)
    decision, state = decide(signals(20, od=od, pe=failing), state, config, 0.0)
    assert decision.preemptible.desired == 4, "keep asking: placements resume when capacity does"
    assert decision.on_demand.desired == 5
    assert "preemptible placements failing: 4 on on-demand instead" in decision.reason

    # Capacity returns and the preemptible instances start: on-demand stays until they serve.
    od = GroupSignals(serving=5)
    young = GroupSignals(starting=4, oldest_starting_s=10.0)
    decision, _ = decide(signals(20, od=od, pe=young), state, config, 5.0)
    assert decision.on_demand.desired == 5, "a starting instance may never arrive"
    assert decision.preemptible.desired == 4

    # They serve: on-demand leaves at once, step by step, without waiting for the window.
    back = GroupSignals(serving=4)
    decision, state = decide(signals(20, od=od, pe=back), state, config, 5.0)
    assert decision.on_demand.desired == 5 - config.scale_down_step
    assert decision.on_demand.drain == config.scale_down_step
    assert decision.preemptible.desired == 4, "no preemptible instance added meanwhile"
    assert "on-demand leaves first (4 serving preemptible instances stay)" in decision.reason
    od = GroupSignals(serving=decision.on_demand.desired)
    decision, _ = decide(signals(20, od=od, pe=back), state, config, 10.0)
    assert (decision.on_demand.desired, decision.preemptible.desired) == (1, 4)
    assert config.scale_down_window_s > 10.0


def test_a_shrinking_pool_drains_on_demand_before_preemptible() -> None:
    config = PoolPolicy(burst_sigmas=0.0, target_utilisation=1.0, rise_history_s=0.0)
    state = PolicyState(observing_since=-config.scale_down_window_s)
    od, pe = GroupSignals(serving=3), GroupSignals(serving=4)
    # 12 streams need 3 instances; the pool has 7 and sheds two per decision.
    decision, _ = decide(signals(12, od=od, pe=pe), state, config, 0.0)
    assert (decision.on_demand.desired, decision.preemptible.desired) == (1, 4)
    assert decision.on_demand.drain == 2 and decision.preemptible.delta == 0
    assert "on-demand leaves first" in decision.reason


def test_measured_rises_widen_the_margin_for_bursty_demand() -> None:
    measuring = PoolPolicy(rise_history_s=600.0)  # trusted after five minutes
    bursty, poisson_only = Pool(config=measuring), Pool(config=PoolPolicy(rise_history_s=0.0))
    for step in range(120):  # ten minutes; a burst to twice the demand every minute
        active = 80 if step % 12 == 0 else 40
        bursty.evaluate(active=active)
        poisson_only.evaluate(active=active)
    last = bursty.decisions[-1]
    assert last.sizing is not None and poisson_only.decisions[-1].sizing is not None
    # 40 streams: 40 + 3 sqrt(40) = 59 slots (15 instances) from the Poisson margin alone;
    # demand rose by 40 = 6.3 sqrt(40) within every lead time: 80 slots (20 instances).
    assert poisson_only.decisions[-1].sizing.spare == 15
    assert last.sizing.spare == 20
    assert "spare for rises of 6.3 sqrt(demand) seen within a lead time" in last.reason


def test_rises_are_measured_over_one_lead_time_in_sqrt_demand_units() -> None:
    open_rises: tuple[OpenRise, ...] = ()
    rises: tuple[Rise, ...] = ()
    for now, demand in ((0.0, 16), (5.0, 20), (10.0, 36), (15.0, 9), (20.0, 9)):
        open_rises, rises = track_rises(open_rises, rises, now, demand, 10.0, 30.0)
    # 16 at t=0 saw at most 36 within the next 10 s: a rise of 20 = 5 sqrt(16); 20 at t=5
    # saw 36 too: 16 / sqrt(20). The evaluations younger than the lead time are still open.
    assert [at for at, _ in rises] == [0.0, 5.0]
    assert [value for _, value in rises] == pytest.approx([5.0, 16 / math.sqrt(20)])
    assert [at for at, _, _ in open_rises] == [10.0, 15.0, 20.0]
    # Falling demand is no rise; rises older than the history (30 s) are forgotten.
    open_rises, rises = track_rises(open_rises, rises, 40.0, 9, 10.0, 30.0)
    assert rises == ((10.0, 0.0), (15.0, 0.0), (20.0, 0.0))
    assert [at for at, _, _ in open_rises] == [40.0]


def test_the_rise_quantile_needs_enough_history() -> None:
    rises = tuple((float(t), float(t % 100)) for t in range(200))
    assert rise_quantile(rises, 0.95, now=250.0, min_span_s=300.0) is None
    assert rise_quantile(rises, 0.95, now=300.0, min_span_s=300.0) == 94.0
    assert rise_quantile(rises, 1.0, now=300.0, min_span_s=300.0) == 99.0
    falling = tuple((float(t), -1.0) for t in range(40))
    assert rise_quantile(falling, 0.5, now=40.0, min_span_s=0.0) == 0.0
    assert rise_quantile((), 0.5, now=40.0, min_span_s=0.0) is None


def test_a_spike_at_start_up_does_not_set_the_margin_for_the_next_hour() -> None:
    pool = Pool()
    pool.evaluate(active=4)
    pool.evaluate(active=40)
    for _ in range(72):  # six minutes of 4 streams
        decision = pool.evaluate(active=4)
    assert decision.sizing is not None
    assert decision.sizing.spare == 3, "4 + 3 sqrt(4) = 10 slots: the statistical margin"
    assert pool.total == 3, "and the pool is back down to it"


def test_steady_demand_keeps_the_statistical_margin() -> None:
    pool = Pool()
    for _ in range(120):
        pool.evaluate(active=40)
    sizing = pool.decisions[-1].sizing
    assert sizing is not None
    assert (sizing.plain, sizing.spare, sizing.grown) == (10, 15, 15)
    assert "rises" not in pool.decisions[-1].reason


def test_sizing_says_what_each_step_added() -> None:
    pool = Pool()
    pool.evaluate(active=60)
    for _ in range(10):
        decision = pool.evaluate(active=4)
    sizing = decision.sizing
    assert sizing is not None
    assert sizing.demand == 4 and sizing.plain == 1
    assert sizing.plain <= sizing.spare <= sizing.grown
    assert sizing.stabilised == pool.total > sizing.recommended, "held up by the window"


def test_pending_past_the_deadline_counts_as_failing() -> None:
    config = PoolPolicy(burst_sigmas=0.0, target_utilisation=1.0)
    slow = GroupSignals(starting=2, oldest_starting_s=config.preemptible.placement_deadline_s + 1)
    decision, _ = decide(signals(12, pe=slow), PolicyState(), config, 0.0)
    assert decision.on_demand.desired == 3
    assert "preemptible pending for" in decision.reason


def test_preemption_notice_requests_replacements_at_once() -> None:
    config = PoolPolicy(burst_sigmas=0.0, target_utilisation=1.0, scale_up_cooldown_s=60.0)
    od = GroupSignals(serving=1)
    pe = GroupSignals(serving=3, reclaiming=2)
    state = PolicyState(last_scale_up_at=0.0)  # inside the cooldown: replacements still go
    decision, _ = decide(signals(24, od=od, pe=pe), state, config, 1.0)
    assert decision.group(CapacityGroup.PREEMPTIBLE).desired == 5, "replacements requested"
    assert decision.on_demand.desired == 3, "and covered on on-demand until they serve"
    assert "2 preemptible being reclaimed" in decision.reason


def test_group_bounds_are_respected_and_overflow_goes_on_demand() -> None:
    config = PoolPolicy(
        on_demand=GroupLimits(min_count=2, max_count=5),
        preemptible=GroupLimits(min_count=1, max_count=3),
    )
    decision, _ = decide(signals(500, queued=50), PolicyState(), config, 0.0)
    assert (decision.on_demand.desired, decision.preemptible.desired) == (5, 3)
    assert "bounded to 8" in decision.reason
    decision, _ = decide(
        signals(0, od=GroupSignals(serving=2), pe=GroupSignals(serving=1)),
        PolicyState(),
        config,
        0.0,
    )
    assert (decision.on_demand.desired, decision.preemptible.desired) == (2, 1)


def test_shrinking_cancels_starting_instances_before_draining_serving_ones() -> None:
    config = PoolPolicy(scale_down_window_s=0.0, scale_down_step=10)
    pe = GroupSignals(serving=4, starting=3)
    decision, _ = decide(signals(4, pe=pe), PolicyState(), config, 0.0)
    assert decision.preemptible.desired < 4
    assert decision.preemptible.cancel == 3
    assert decision.preemptible.drain == 4 - decision.preemptible.desired
    assert "drain" in decision.reason
