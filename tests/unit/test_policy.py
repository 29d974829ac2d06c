"""The scaling policy, driven with an injected clock and hand-built signals (no I/O)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

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
    config = PoolPolicy(burst_sigmas=0.0, target_utilisation=1.0)
    od = GroupSignals(serving=1)
    failing = GroupSignals(starting=4, placement_failing=True)
    decision, state = decide(signals(20, od=od, pe=failing), PolicyState(), config, 0.0)
    assert decision.preemptible.desired == 4, "keep asking: placements resume when capacity does"
    assert decision.on_demand.desired == 5
    assert "preemptible placements failing: 4 on on-demand instead" in decision.reason

    # Capacity returns: the preemptible instances serve, on-demand leaves slowly.
    od, back = GroupSignals(serving=5), GroupSignals(serving=4)
    now = 5.0
    decision, state = decide(signals(20, od=od, pe=back), state, config, now)
    assert decision.on_demand.desired == 5 and decision.preemptible.desired == 4
    while decision.on_demand.desired == 5:
        now += 5.0
        decision, state = decide(signals(20, od=od, pe=back), state, config, now)
    assert now > config.scale_down_window_s
    assert decision.on_demand.desired == 5 - config.scale_down_step
    assert decision.on_demand.drain == config.scale_down_step


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
