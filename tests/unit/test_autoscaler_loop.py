"""The evaluation loop with a fake signal source, a fake scale target and an injected clock.

The fakes (:mod:`tests.autoscaler_fakes`) implement the real contracts; the policy is the
real one. Time is a number moved by the tests.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace

import pytest
from prometheus_client import CollectorRegistry

from services.autoscaler.loop import EvaluationLoop, LoopConfig, PoolSpec
from services.autoscaler.metrics import AutoscalerMetrics
from services.autoscaler.policy import GroupLimits, PoolPolicy
from services.autoscaler.records import Kind, Outcome, Phase
from services.autoscaler.signals.base import InstanceLoad, PoolLoad
from services.autoscaler.targets.base import CapacityClass, Reclaim, Refusal, ScalingEvent
from tests.autoscaler_fakes import (
    OD,
    PE,
    POOL,
    Clock,
    FakeGroup,
    FakeLock,
    FakeSource,
    FakeTarget,
)
from tests.conditions import wait_until_async
from voxmesh.errors import NotFound

WINDOW_S = 10.0
COOLDOWN_S = 5.0


def policy(*, od_max: int = 4, pe_max: int = 0) -> PoolPolicy:
    """Needs exactly demand / 1 stream per instance; 10 s window; nothing anticipated."""
    return PoolPolicy(
        on_demand=GroupLimits(min_count=1, max_count=od_max, lead_time_s=0.0),
        preemptible=GroupLimits(min_count=0, max_count=pe_max, lead_time_s=0.0),
        target_utilisation=1.0,
        burst_sigmas=0.0,
        tolerance=0.0,
        scale_down_window_s=WINDOW_S,
        scale_down_step=4,
        stale_after_s=15.0,
    )


@dataclass
class Harness:
    loop: EvaluationLoop
    source: FakeSource
    target: FakeTarget
    lock: FakeLock
    clock: Clock
    registry: CollectorRegistry

    async def step(self, seconds: float = 1.0) -> None:
        self.clock.advance(seconds)
        await self.loop.evaluate_once()

    def metric(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def records(self, kind: Kind | None = None) -> list[str]:
        return [r.reason for r in self.loop.log.recent() if kind is None or r.kind is kind]


def harness(
    target: FakeTarget | None = None,
    *,
    dry_run: bool = False,
    lock: FakeLock | None = None,
    interval_s: float = 1.0,
    pe_max: int = 0,
    pools: tuple[str, ...] = (POOL,),
    pool_policy: PoolPolicy | None = None,
) -> Harness:
    registry = CollectorRegistry()
    source, clock = FakeSource(), Clock()
    source.demand()
    fake_target = target or FakeTarget()
    fake_lock = lock or FakeLock()
    chosen = pool_policy or policy(pe_max=pe_max)
    loop = EvaluationLoop(
        LoopConfig(
            pools=tuple(PoolSpec(name, chosen, fallback_max_streams=1) for name in pools),
            interval_s=interval_s,
            cooldown_s=COOLDOWN_S,
            scaling_timeout_s=60.0,
            leader_retry_s=0.01,
            dry_run=dry_run,
        ),
        source,
        fake_target,
        fake_lock,
        metrics=AutoscalerMetrics(registry),
        clock=clock,
        wall_clock=clock.wall,
    )
    return Harness(loop, source, fake_target, fake_lock, clock, registry)


async def test_a_queue_scales_up_at_once_and_the_phase_goes_scaling_cooldown_idle() -> None:
    h = harness()
    h.source.demand(active=1, queued=2)
    await h.step()

    assert h.target.calls == [(OD, 3, h.target.calls[0][2])]
    assert "queue of 2 realtime streams" in h.target.calls[0][2]
    (record,) = [r for r in h.loop.log.recent() if r.kind is Kind.SCALE]
    assert record.actions[0].outcome is Outcome.APPLIED
    assert (record.actions[0].current, record.actions[0].desired) == (1, 3)
    assert h.loop.view(POOL).phase is Phase.SCALING

    await h.step()  # two instances still starting
    view = h.loop.view(POOL)
    assert view.phase is Phase.SCALING
    assert (view.groups[0].serving, view.groups[0].starting) == (1, 2)

    h.target.settle()
    await h.step()
    assert h.loop.view(POOL).phase is Phase.COOLDOWN
    await h.step(COOLDOWN_S)
    assert h.loop.view(POOL).phase is Phase.IDLE
    assert len(h.target.calls) == 1  # demand unchanged: nothing more to do


async def test_a_scale_down_waits_for_the_change_to_settle_the_cooldown_and_the_window() -> None:
    h = harness()
    h.source.demand(active=1, queued=2)
    await h.step()
    h.source.demand(active=0)  # the burst is over before the instances even start
    for _ in range(12):
        await h.step()
    assert [c[1] for c in h.target.calls] == [3]
    deferred = [r for r in h.loop.log.recent() if r.actions[0].outcome is Outcome.DEFERRED]
    assert deferred and "a change is settling" in deferred[0].actions[0].detail
    assert h.metric("voxmesh_autoscaler_scale_refused_total", reason="deferred") >= 1

    h.target.settle()
    await h.step()  # settled: cooldown starts, the scale-down still waits
    assert h.loop.view(POOL).phase is Phase.COOLDOWN
    assert [c[1] for c in h.target.calls] == [3]
    await h.step(COOLDOWN_S)
    assert [c[1] for c in h.target.calls] == [3, 1]
    down = h.loop.log.recent()[-1]
    assert down.actions[0].outcome is Outcome.APPLIED
    assert down.actions[0].drain == 2


async def test_missing_or_stale_signals_never_scale_down() -> None:
    h = harness(FakeTarget({OD: FakeGroup(CapacityClass.ON_DEMAND, 3, 3)}))
    h.source.loads[POOL] = PoolLoad(POOL, max_streams=1, missing="no telemetry from any router")
    for _ in range(3):
        await h.step(WINDOW_S)
    assert h.target.calls == []
    assert h.records(Kind.HOLD) == [
        "holding: no telemetry from any router (missing signals never scale down)"
    ]
    assert h.metric("voxmesh_autoscaler_signal_age_seconds", pool=POOL) == float("inf")

    h.source.demand(active=0, age_s=40.0)
    for _ in range(3):
        await h.step(WINDOW_S)
    assert h.target.calls == []
    assert "holding: signals stale for 40 s" in h.records(Kind.HOLD)


async def test_a_paused_pool_records_what_it_would_do_and_resume_applies_it() -> None:
    h = harness()
    view = h.loop.pause(POOL, "GPU maintenance")
    assert view.paused and view.pause_reason == "GPU maintenance"
    assert h.metric("voxmesh_autoscaler_paused", pool=POOL) == 1
    h.source.demand(active=1, queued=1)
    await h.step()
    await h.step()
    assert h.target.calls == []
    paused = [r for r in h.loop.log.recent() if r.kind is Kind.SCALE]
    assert len(paused) == 1  # the repeat is not re-recorded
    assert paused[0].actions[0].outcome is Outcome.PAUSED
    assert paused[0].actions[0].detail == "paused: GPU maintenance"

    assert not h.loop.resume(POOL).paused
    await h.step()
    assert [c[1] for c in h.target.calls] == [2]


async def test_dry_run_records_decisions_without_applying_them() -> None:
    h = harness(dry_run=True)
    h.source.demand(active=1, queued=3)
    await h.step()
    assert h.target.calls == []
    (record,) = [r for r in h.loop.log.recent() if r.kind is Kind.SCALE]
    assert record.actions[0].outcome is Outcome.DRY_RUN
    assert record.actions[0].desired == 4
    assert h.metric("voxmesh_autoscaler_scale_refused_total", reason="dry-run") == 1


async def test_a_refusal_is_recorded_once_and_counted_each_time() -> None:
    h = harness()
    h.target.refuse = Refusal.DEPLOYMENT_ACTIVE
    h.source.demand(active=1, queued=1)
    await h.step()
    await h.step()
    assert len(h.target.calls) == 2  # asked again: the refusal may have ended
    refused = [r for r in h.loop.log.recent() if r.kind is Kind.SCALE]
    assert len(refused) == 1
    assert refused[0].actions[0].outcome is Outcome.REFUSED
    assert refused[0].actions[0].detail == "deployment-active: busy"
    assert h.metric("voxmesh_autoscaler_scale_refused_total", reason="deployment-active") == 2
    assert h.loop.view(POOL).phase is Phase.IDLE


async def test_an_unreachable_target_is_a_recorded_hold_not_a_crash() -> None:
    h = harness()
    h.target.unavailable = True
    await h.step()
    await h.step()
    assert h.records() == [
        "holding: the scale target is unavailable: nomad answered 503: no leader"
    ]
    # Counted (and alerted on) like a refused scale call: it was only counted when a
    # scale call failed after a successful read, so a token without read-job was silent.
    assert h.metric("voxmesh_autoscaler_scale_refused_total", reason="target-unavailable") == 2
    h.target.unavailable = False
    h.source.demand(active=1, queued=1)
    await h.step()
    assert [c[1] for c in h.target.calls] == [2]


async def test_an_external_change_is_adopted_recorded_and_not_reverted_within_a_window() -> None:
    h = harness()
    for _ in range(int(WINDOW_S) + 1):  # a whole window observed at 1 instance
        await h.step()
    operator = ScalingEvent(
        time=h.clock.wall(), count=3, previous_count=1, message="nomad job scale"
    )
    h.target.groups[OD] = FakeGroup(CapacityClass.ON_DEMAND, 3, 3, external=operator)
    await h.step()
    await h.step()
    adopted = h.records(Kind.ADOPT)
    assert adopted == [
        "adopted external change of asr_small/on-demand: 1 -> 3 (nomad job scale, 1 s ago); "
        "not reverted: no scale-down for 9 s"
    ]
    assert (
        h.metric("voxmesh_autoscaler_decisions_total", pool=POOL, group=OD, direction="adopt") == 1
    )

    for _ in range(int(WINDOW_S) - 2):
        await h.step()
    assert h.target.calls == []  # demand is 0, yet the operator's count stands a window
    await h.step(2.0)
    assert [c[1] for c in h.target.calls] == [1]
    assert len(h.records(Kind.ADOPT)) == 1


async def test_a_preemptible_reclaim_falls_back_to_on_demand_at_once() -> None:
    target = FakeTarget(
        {
            OD: FakeGroup(CapacityClass.ON_DEMAND, 1, 1),
            PE: FakeGroup(CapacityClass.PREEMPTIBLE, 0, 0),
        }
    )
    h = harness(target, pe_max=8)
    h.source.demand(active=1, queued=2)
    await h.step()
    assert sorted((c[0], c[1]) for c in h.target.calls) == [(PE, 2)]

    # One preemptible instance runs on a node being reclaimed, the other is not placed yet:
    # neither can be counted on, so on-demand covers the whole burst while they are away.
    h.target.reclaims = [Reclaim(PE, "alloc-1", "spot-1", "node draining")]
    h.target.groups[PE].running = 1
    await h.step()
    assert [(c[0], c[1]) for c in h.target.calls[1:]] == [(OD, 3), (PE, 2)]
    record = h.loop.log.recent()[-1]
    assert "1 preemptible being reclaimed" in record.reason
    outcomes = {a.group: a.outcome for a in record.actions}
    assert outcomes == {OD: Outcome.APPLIED, PE: Outcome.UNCHANGED}
    view = {g.group: g for g in h.loop.view(POOL).groups}
    assert (view[PE].reclaiming, view[PE].serving, view[PE].starting) == (1, 0, 1)


async def test_every_decision_has_metrics() -> None:
    h = harness()
    h.source.demand(active=2, queued=1)
    h.source.loads[POOL] = PoolLoad(
        POOL,
        active_streams=2,
        queued_realtime=1,
        max_streams=1,
        age_s=0.7,
        instances=(
            InstanceLoad("i-1", "on-demand", 1, 1, serving=True),
            InstanceLoad("i-0", "on-demand", 1, 1, serving=False),
        ),
    )
    await h.step()
    await h.step()
    labels = {"pool": POOL, "group": OD}
    assert h.metric("voxmesh_autoscaler_decisions_total", **labels, direction="up") == 1
    assert h.metric("voxmesh_autoscaler_decisions_total", **labels, direction="hold") == 1
    assert h.metric("voxmesh_autoscaler_desired_instances", **labels) == 3
    assert h.metric("voxmesh_autoscaler_current_instances", **labels) == 3
    assert h.metric("voxmesh_autoscaler_signal_age_seconds", pool=POOL) == pytest.approx(0.7)
    assert h.metric("voxmesh_autoscaler_demand_streams", pool=POOL) == 3
    assert h.loop.view(POOL).groups[0].draining == 1  # the instance no longer serving


async def test_unknown_pools_are_not_found() -> None:
    h = harness()
    with pytest.raises(NotFound, match="asr_huge"):
        h.loop.pause("asr_huge")
    with pytest.raises(NotFound):
        h.loop.view("asr_huge")


async def test_only_the_leader_evaluates_and_a_lost_lock_stops_it_at_once() -> None:
    lock = FakeLock(grant=False)
    h = harness(lock=lock, interval_s=0.01)
    watch = h.loop.log.watch(replay=0)
    task = asyncio.create_task(h.loop.run())
    next_record = asyncio.ensure_future(anext(watch))
    await wait_until_async(lambda: lock.tries >= 3, 5)  # a standby only campaigns
    assert h.target.status_calls == 0
    assert h.metric("voxmesh_autoscaler_leader") == 0

    lock.grant = True
    await wait_until_async(lambda: h.target.status_calls >= 2, 5)
    assert h.metric("voxmesh_autoscaler_leader") == 1
    assert (await asyncio.wait_for(next_record, 5)).kind is Kind.HOLD

    lock.lose()
    await wait_until_async(lambda: h.metric("voxmesh_autoscaler_leader") == 0, 5)
    calls, tries = h.target.status_calls, lock.tries
    await wait_until_async(lambda: lock.tries >= tries + 3, 5)  # standing by again
    assert h.target.status_calls == calls

    await h.loop.shutdown()
    await h.loop.shutdown()  # idempotent
    assert task.done() and task.exception() is None
    assert lock.released == 1
    with pytest.raises(StopAsyncIteration):
        await anext(watch)  # the log's watchers end on shutdown


@pytest.mark.parametrize("outage", ["missing signals", "stale signals", "target unreachable"])
async def test_after_an_outage_a_whole_fresh_window_passes_before_a_scale_down(
    outage: str,
) -> None:
    """An outage longer than the window leaves no recommendations to stabilise on: the pool
    must observe a whole window of fresh signals again before it shrinks."""
    h = harness(FakeTarget({OD: FakeGroup(CapacityClass.ON_DEMAND, 4, 4)}))
    h.source.demand(active=4)
    for _ in range(int(WINDOW_S) + 2):  # a whole window observed at 4 streams
        await h.step()
    for _ in range(int(WINDOW_S) + 5):  # longer than the window
        if outage == "missing signals":
            h.source.loads[POOL] = PoolLoad(POOL, max_streams=1, missing="no router telemetry")
        elif outage == "stale signals":
            h.source.demand(active=4, age_s=40.0)
        else:
            h.target.unavailable = True
        await h.step()
    h.target.unavailable = False
    h.source.demand(active=0)  # the first fresh reading after the outage: idle
    for _ in range(int(WINDOW_S) - 1):
        await h.step()
    assert h.target.calls == [], "shrank before a whole fresh window was observed"
    await h.step(2.0)
    assert [c[1] for c in h.target.calls] == [1]


async def test_an_error_in_one_pool_is_a_recorded_hold_and_the_other_pools_still_scale(
    caplog: pytest.LogCaptureFixture,
) -> None:
    large = "asr_large/on-demand"
    target = FakeTarget(
        {
            OD: FakeGroup(CapacityClass.ON_DEMAND, 1, 1),
            large: FakeGroup(CapacityClass.ON_DEMAND, 1, 1),
        }
    )
    h = harness(target, pools=(POOL, "asr_large"))
    h.source.errors[POOL] = OSError(28, "No space left on device")
    h.source.loads["asr_large"] = PoolLoad(
        "asr_large", active_streams=1, queued_realtime=1, max_streams=1, age_s=0.5
    )
    await h.step()
    assert [(c[0], c[1]) for c in target.calls] == [(large, 2)]
    (failed,) = h.loop.log.recent(POOL)
    assert failed.kind is Kind.HOLD
    assert failed.reason == (
        "holding: the evaluation failed (OSError: [Errno 28] No space left on device); "
        "trying again next interval"
    )
    assert any(r.exc_info and "asr_small" in r.getMessage() for r in caplog.records)
    (scaled,) = h.loop.log.recent("asr_large")
    assert scaled.actions[0].outcome is Outcome.APPLIED

    del h.source.errors[POOL]  # the fault is gone: the pool scales on the next interval
    h.source.demand(active=1, queued=1)
    await h.step()
    assert (OD, 2) in [(c[0], c[1]) for c in target.calls[1:]]


async def test_a_group_that_fails_to_scale_leaves_the_other_groups_change_on_record() -> None:
    target = FakeTarget(
        {OD: FakeGroup(CapacityClass.ON_DEMAND, 1, 1), PE: FakeGroup(CapacityClass.PREEMPTIBLE)}
    )
    target.errors[PE] = RuntimeError("boom")
    h = harness(target, pe_max=4)
    h.target.groups[OD].count = h.target.groups[OD].running = 4  # room only on preemptible
    h.source.demand(active=2, queued=4)
    await h.step()
    record = h.loop.log.recent(POOL)[-1]
    outcomes = {a.group: (a.outcome, a.detail) for a in record.actions}
    assert outcomes[PE] == (Outcome.FAILED, "RuntimeError: boom")
    assert record.kind is Kind.SCALE


async def test_a_target_answer_it_cannot_read_holds_every_pool_and_restarts_observation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = harness(FakeTarget({OD: FakeGroup(CapacityClass.ON_DEMAND, 3, 3)}))
    for _ in range(int(WINDOW_S) + 2):  # a whole window at demand 0: ready to shrink
        await h.step()
    calls = len(h.target.calls)
    h.target.status_error = KeyError("TaskGroups")
    await h.step()
    assert h.records()[-1] == "holding: reading the scale target failed (KeyError: 'TaskGroups')"
    assert h.metric("voxmesh_autoscaler_scale_refused_total", reason="error") == 1
    h.target.status_error = None
    for _ in range(int(WINDOW_S) - 1):
        await h.step()
    assert len(h.target.calls) == calls, "shrank without a fresh window after the gap"


async def test_a_sustained_ramp_keeps_bursts_on_preemptible() -> None:
    """Every preemptible instance runs 30 s after its request and serves 30 s later, far
    inside its 240 s deadline; the group always has some starting (placing or loading),
    which is no failing placement."""
    target = FakeTarget(
        {
            OD: FakeGroup(CapacityClass.ON_DEMAND, 1, 1),
            PE: FakeGroup(CapacityClass.PREEMPTIBLE, 0, 0),
        }
    )
    h = harness(target, pe_max=64)
    requested: list[float] = []  # when each preemptible instance was asked for
    for second in range(400):
        h.source.demand(active=2 + second // 20)  # one more stream every 20 s
        group = target.groups[PE]
        requested = requested[: group.count]
        requested += [h.clock.now] * (group.count - len(requested))
        group.running = sum(1 for at in requested if h.clock.now - at >= 30.0)
        serving = sum(1 for at in requested if h.clock.now - at >= 60.0)
        h.source.loads[POOL] = replace(
            h.source.loads[POOL],
            instances=tuple(
                InstanceLoad(f"pe{i}", "preemptible", 0, 1, True) for i in range(serving)
            ),
        )
        await h.step()
    assert not [r for r in h.records() if "pending for" in r]
    assert [c for c in target.calls if c[0] == OD] == [], "fell back to on-demand"
    assert target.groups[PE].count >= 20


async def test_a_preemptible_instance_pending_past_its_deadline_falls_back() -> None:
    target = FakeTarget(
        {
            OD: FakeGroup(CapacityClass.ON_DEMAND, 1, 1),
            PE: FakeGroup(CapacityClass.PREEMPTIBLE, 0, 0),
        }
    )
    h = harness(target, pe_max=8)
    h.source.demand(active=2)
    deadline = policy().preemptible.placement_deadline_s
    for _ in range(int(deadline)):  # the instance is never placed
        await h.step()
    assert [(c[0], c[1]) for c in target.calls] == [(PE, 1)]
    await h.step(5.0)
    assert [(c[0], c[1]) for c in target.calls] == [(PE, 1), (OD, 2)]
    assert "preemptible pending for" in target.calls[-1][2]


async def test_a_preemptible_instance_that_runs_but_never_serves_falls_back() -> None:
    """Nomad runs both preemptible instances, but one never serves (its model load hangs):
    it is a starting instance past its deadline, and on-demand takes its place."""
    target = FakeTarget(
        {
            OD: FakeGroup(CapacityClass.ON_DEMAND, 1, 1),
            PE: FakeGroup(CapacityClass.PREEMPTIBLE, 2, 2),
        }
    )
    h = harness(target, pe_max=8)
    serving = (
        InstanceLoad("od", "on-demand", 1, 1, True),
        InstanceLoad("pe0", "preemptible", 1, 1, True),
    )
    h.source.loads[POOL] = PoolLoad(
        POOL, active_streams=3, max_streams=1, instances=serving, age_s=0.5
    )
    deadline = policy().preemptible.placement_deadline_s
    for _ in range(int(deadline)):
        await h.step()
    assert target.calls == []
    assert h.loop.view(POOL).groups[1].starting == 1
    await h.step(5.0)
    assert [(c[0], c[1]) for c in target.calls] == [(OD, 2)]
    # first seen unseen at the first evaluation, one interval after the clock's start
    assert f"preemptible pending for {deadline + 4:.0f} s" in target.calls[-1][2]


async def test_a_starting_instance_past_its_deadline_does_not_keep_the_pool_scaling() -> None:
    """Like a failing placement, a preemptible instance starting past its deadline is not a
    change still settling: once the on-demand stand-in serves, the pool cools down without
    waiting for the scaling timeout."""
    deadline = 20.0
    pool_policy = replace(
        policy(pe_max=8),
        preemptible=GroupLimits(
            min_count=0, max_count=8, lead_time_s=0.0, placement_deadline_s=deadline
        ),
    )
    target = FakeTarget(
        {
            OD: FakeGroup(CapacityClass.ON_DEMAND, 1, 1),
            PE: FakeGroup(CapacityClass.PREEMPTIBLE, 2, 2),
        }
    )
    h = harness(target, pool_policy=pool_policy)
    od, pe = (
        InstanceLoad("od", "on-demand", 1, 1, True),
        InstanceLoad("pe", "preemptible", 1, 1, True),
    )
    h.source.loads[POOL] = PoolLoad(
        POOL, active_streams=3, max_streams=1, instances=(od, pe), age_s=0.5
    )
    for _ in range(int(deadline) + 2):  # the second preemptible instance never serves
        await h.step()
    assert [(c[0], c[1]) for c in target.calls] == [(OD, 2)]
    assert h.loop.view(POOL).phase is Phase.SCALING

    target.settle()  # the on-demand stand-in starts and serves
    stand_in = InstanceLoad("od2", "on-demand", 1, 1, True)
    h.source.loads[POOL] = replace(h.source.loads[POOL], instances=(od, stand_in, pe))
    await h.step()
    assert h.loop.view(POOL).phase is Phase.COOLDOWN


async def test_an_operator_scale_down_stands_unless_realtime_streams_queue() -> None:
    h = harness(FakeTarget({OD: FakeGroup(CapacityClass.ON_DEMAND, 4, 4)}))
    h.source.demand(active=4)
    for _ in range(int(WINDOW_S) + 2):
        await h.step()
    operator = ScalingEvent(time=h.clock.wall(), count=1, previous_count=4, message="maintenance")
    h.target.groups[OD] = FakeGroup(CapacityClass.ON_DEMAND, 1, 1, external=operator)
    for _ in range(int(WINDOW_S) - 2):  # the streams of the stopped instances still count
        await h.step()
    assert h.target.calls == [], "the operator's scale-down was reverted"
    assert h.records(Kind.ADOPT) == [
        "adopted external change of asr_small/on-demand: 4 -> 1 (maintenance, 1 s ago); "
        "not reverted: no scale-up for 9 s unless realtime streams queue"
    ]
    held = h.loop.log.recent()[-1]
    assert held.kind is Kind.HOLD
    assert held.reason.startswith(
        "holding: asr_small/on-demand was scaled down by an operator 1 s ago (4 -> 1)"
    )

    h.source.demand(active=1, queued=2)  # streams now wait for a slot
    await h.step()
    assert [c[1] for c in h.target.calls] == [3]
    assert h.target.calls[0][2].endswith(
        "; realtime streams queue: the operator's scale-down of asr_small/on-demand "
        "(4 -> 1, 9 s ago) is overridden"
    )


async def test_a_silent_instance_holds_scale_downs_but_not_a_queue() -> None:
    h = harness(FakeTarget({OD: FakeGroup(CapacityClass.ON_DEMAND, 2, 2)}))
    h.source.demand(active=2)
    for _ in range(int(WINDOW_S) + 2):
        await h.step()
    # One instance has said nothing for 40 s; the routers' queues are fresh.
    h.source.loads[POOL] = PoolLoad(
        POOL, active_streams=2, queued_realtime=2, max_streams=1, age_s=40.0, router_age_s=0.5
    )
    await h.step()
    assert [c[1] for c in h.target.calls] == [4]
    assert "signals stale for 40 s" in h.target.calls[0][2]

    h.target.settle()
    h.source.loads[POOL] = PoolLoad(
        POOL, active_streams=0, max_streams=1, age_s=40.0, router_age_s=0.5
    )
    for _ in range(3 * int(WINDOW_S)):
        await h.step()
    assert [c[1] for c in h.target.calls] == [4], "shrank on stale signals"


async def test_a_scale_up_that_was_not_applied_starts_no_cooldown() -> None:
    trend = replace(
        policy(od_max=64),
        on_demand=GroupLimits(min_count=1, max_count=64, lead_time_s=10.0),
        trend_window_s=4.0,
        trend_confidence_sigmas=0.0,
        rise_history_s=0.0,
        scale_up_cooldown_s=30.0,
    )
    h = harness(FakeTarget({OD: FakeGroup(CapacityClass.ON_DEMAND, 10, 10)}), pool_policy=trend)
    h.target.refuse = Refusal.DEPLOYMENT_ACTIVE
    for demand in (1, 2, 3, 4):  # 10 instances hold it; the trend (+1/s) asks for more
        h.source.demand(active=demand)
        await h.step()
    assert h.target.calls, "the trend asked for a scale-up"
    assert h.target.groups[OD].count == 10

    h.target.refuse = None  # the deployment ended: nothing was added, so nothing settles
    h.source.demand(active=5)
    await h.step()
    assert h.target.groups[OD].count == 15
    assert h.loop.log.recent()[-1].actions[0].outcome is Outcome.APPLIED


async def test_a_new_leader_holds_back_only_what_is_left_of_an_operators_window() -> None:
    # The latest scaling event is an operator's of an hour ago; a new leader adopts it.
    h = harness(FakeTarget({OD: FakeGroup(CapacityClass.ON_DEMAND, 1, 1)}))
    operator = ScalingEvent(
        time=h.clock.wall() - 3600, count=1, previous_count=4, message="maintenance"
    )
    h.target.groups[OD].external = operator
    h.source.loads[POOL] = PoolLoad(
        POOL, active_streams=1, queued_batch=2, max_streams=1, age_s=0.5
    )
    await h.step()
    assert h.records(Kind.ADOPT) == [
        "adopted external change of asr_small/on-demand: 4 -> 1 (maintenance, 3601 s ago); "
        "older than the stabilisation window: nothing held back"
    ]
    assert [c[1] for c in h.target.calls] == [3], "an hour-old change held the queue back"


async def test_operator_changes_to_both_groups_each_stand() -> None:
    target = FakeTarget(
        {
            OD: FakeGroup(CapacityClass.ON_DEMAND, 2, 2),
            PE: FakeGroup(CapacityClass.PREEMPTIBLE, 3, 3),
        }
    )
    h = harness(target, pe_max=3)
    h.source.loads[POOL] = PoolLoad(POOL, active_streams=5, max_streams=1, age_s=0.5)
    for _ in range(int(WINDOW_S) + 2):
        await h.step()
    assert target.calls == []
    # An operator shrinks on-demand; a moment later preemptible records a change too.
    wall = h.clock.wall()
    target.groups[OD] = FakeGroup(
        CapacityClass.ON_DEMAND, 1, 1, external=ScalingEvent(wall, 1, 2, "shrink on-demand")
    )
    target.groups[PE].external = ScalingEvent(wall + 0.5, 3, 2, "preemptible up")
    for _ in range(int(WINDOW_S) - 2):
        await h.step()
    assert len(h.records(Kind.ADOPT)) == 2
    assert target.calls == [], "the on-demand scale-down was reverted"


async def test_on_demand_stays_until_the_preemptible_instances_serve() -> None:
    # Fallback: 4 on-demand serve; 3 preemptible were requested and are placed now.
    target = FakeTarget(
        {OD: FakeGroup(CapacityClass.ON_DEMAND, 4, 4), PE: FakeGroup(CapacityClass.PREEMPTIBLE, 3)}
    )
    h = harness(target, pe_max=8)
    on_demand = tuple(InstanceLoad(f"od-{i}", "on-demand", 1, 1, serving=True) for i in range(4))

    def load(preemptible_serving: bool) -> PoolLoad:
        preemptible = tuple(
            InstanceLoad(f"pe-{i}", "preemptible", 0, 1, serving=preemptible_serving)
            for i in range(3)
        )
        return PoolLoad(
            POOL, active_streams=4, max_streams=1, age_s=0.5, instances=on_demand + preemptible
        )

    h.source.loads[POOL] = load(False)
    for _ in range(int(WINDOW_S + COOLDOWN_S) + 2):
        await h.step()
    target.groups[PE].running = 3  # started (Nomad: running), still loading the model
    await h.step()
    assert not [c for c in target.calls if c[0] == OD], "on-demand went before its replacement"
    h.source.loads[POOL] = load(True)
    await h.step()
    assert [(c[0], c[1]) for c in target.calls if c[0] == OD] == [(OD, 1)]
    assert "3 serving preemptible instances stay" in target.calls[-1][2]
