"""The autoscaler's gRPC API on a real server (port 0), wired by the real app.

The app runs its real loop, leader election and server; only the signal source, the
scale target and the lock are fakes (:mod:`tests.autoscaler_fakes`), so the test
decides the demand and sees every scale call.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from services.autoscaler.app import AutoscalerApp
from services.autoscaler.settings import load_settings
from tests.autoscaler_fakes import OD, POOL, FakeLock, FakeSource, FakeTarget
from tests.conditions import wait_until_async
from voxmesh.autoscaler.v1 import autoscaler_pb2 as pb
from voxmesh.autoscaler.v1 import autoscaler_pb2_grpc


@dataclass
class Running:
    app: AutoscalerApp
    source: FakeSource
    target: FakeTarget
    lock: FakeLock
    stub: autoscaler_pb2_grpc.AutoscalerServiceAsyncStub
    channel: grpc.aio.Channel


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    settings = load_settings(
        [
            "--port=0",
            "--metrics-port=0",
            "--instance-id=replica-a",
            "--pools=asr_small",
            "--interval=0.02",
            "--on-demand-max=asr_small=4",
            "--preemptible-max=asr_small=0",
            "--burst-sigmas=0",
            "--target-utilisation=1",
            "--drain-timeout=2",
            "--leader-retry=0.02",
        ],
        {},
    )
    source, target, lock = FakeSource(), FakeTarget(), FakeLock(grant=False)
    source.demand()
    app = AutoscalerApp(
        settings, registry=CollectorRegistry(), source=source, target=target, lock=lock
    )
    await app.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.server.port}")
    stub = autoscaler_pb2_grpc.AutoscalerServiceStub(channel)
    try:
        yield Running(app, source, target, lock, stub, channel)
    finally:
        await channel.close()
        await app.shutdown()


async def _status(r: Running, pool: str = "") -> pb.GetStatusResponse:
    return await r.stub.GetStatus(pb.GetStatusRequest(pool=pool), timeout=5)


Stream = grpc.aio.UnaryStreamCall[pb.WatchDecisionsRequest, pb.WatchDecisionsResponse]


async def _next(stream: Stream, until: Callable[[pb.Decision], bool] = bool) -> pb.Decision:
    """The next decision of the stream for which ``until`` holds (5 s deadline)."""
    async with asyncio.timeout(5):
        while True:
            message = await stream.read()
            assert isinstance(message, pb.WatchDecisionsResponse), "the stream ended"
            if until(message.decision):
                return message.decision


async def test_a_standby_reports_its_role_and_decides_nothing(running: Running) -> None:
    await wait_until_async(lambda: running.lock.tries >= 2, 5)
    status = await _status(running)
    assert (status.replica_id, status.role, status.target) == (
        "replica-a",
        pb.REPLICA_ROLE_STANDBY,
        "local",
    )
    (pool,) = status.pools
    assert pool.pool == POOL and pool.phase == pb.LOOP_PHASE_IDLE
    assert not pool.HasField("signals") and not pool.recent_decisions
    assert running.target.status_calls == 0


async def test_status_and_the_decision_stream_show_each_decision_with_its_reason(
    running: Running,
) -> None:
    running.lock.grant = True
    stream = running.stub.WatchDecisions(pb.WatchDecisionsRequest(pool=POOL, replay=5))
    first = await _next(stream)
    assert first.kind == pb.DECISION_KIND_HOLD

    running.source.demand(active=1, queued=2)
    decision = await _next(stream, lambda d: d.kind == pb.DECISION_KIND_SCALE)
    assert decision.pool == POOL and decision.sequence > first.sequence
    assert "queue of 2 realtime streams" in decision.reason
    on_demand = decision.actions[0]
    assert (on_demand.group, on_demand.capacity_class) == (OD, pb.CAPACITY_CLASS_ON_DEMAND)
    assert (on_demand.current, on_demand.desired, on_demand.outcome) == (
        1,
        3,
        pb.ACTION_OUTCOME_APPLIED,
    )
    settling = await _next(stream)  # the next evaluation: two instances starting
    assert settling.kind == pb.DECISION_KIND_HOLD
    assert (settling.actions[0].current, settling.actions[0].desired) == (3, 3)
    stream.cancel()

    status = await _status(running, POOL)
    assert status.role == pb.REPLICA_ROLE_LEADER
    (pool,) = status.pools
    assert pool.phase == pb.LOOP_PHASE_SCALING
    assert (pool.signals.active_streams, pool.signals.queued_realtime) == (1, 2)
    assert pool.signals.max_streams == 1 and pool.signals.age.ToMilliseconds() == 500
    group = pool.groups[0]
    assert (group.group, group.target_count, group.desired) == (OD, 3, 3)
    assert (group.serving, group.starting, group.min_count, group.max_count) == (1, 2, 1, 4)
    assert pool.groups[1].max_count == 0  # no preemptible group in this target
    assert [d.sequence for d in pool.recent_decisions][-2:] == [
        decision.sequence,
        settling.sequence,
    ]

    metrics_port = running.app.server.metrics_port
    text = await asyncio.to_thread(
        lambda: (
            urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
            .read()
            .decode()
        )
    )
    assert (
        'voxmesh_autoscaler_decisions_total{direction="up",group="asr_small/on-demand",'
        'pool="asr_small"} 1.0'
    ) in text
    assert 'voxmesh_autoscaler_desired_instances{group="asr_small/on-demand"' in text


async def test_a_paused_pool_is_not_scaled_until_resumed(running: Running) -> None:
    running.lock.grant = True
    await wait_until_async(lambda: running.app.loop.is_leader, 5)
    paused = await running.stub.PausePool(
        pb.PausePoolRequest(pool=POOL, reason="GPU maintenance"), timeout=5
    )
    assert paused.pool.paused and paused.pool.pause_reason == "GPU maintenance"
    running.source.demand(active=1, queued=1)
    stream = running.stub.WatchDecisions(pb.WatchDecisionsRequest(replay=10))
    decision = await _next(stream, lambda d: d.kind == pb.DECISION_KIND_SCALE)
    assert decision.actions[0].outcome == pb.ACTION_OUTCOME_PAUSED
    assert running.target.calls == []

    resumed = await running.stub.ResumePool(pb.ResumePoolRequest(pool=POOL), timeout=5)
    assert not resumed.pool.paused
    await _next(stream, lambda d: d.actions[0].outcome == pb.ACTION_OUTCOME_APPLIED)
    assert [c[1] for c in running.target.calls] == [2]
    stream.cancel()


async def test_a_standby_refuses_to_pause_or_resume(running: Running) -> None:
    """Only the leader applies decisions: a pause taken by a standby would be a lie."""
    await wait_until_async(lambda: running.lock.tries >= 2, 5)
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: running.stub.PausePool(pb.PausePoolRequest(pool=POOL, reason="x"), timeout=5),
        lambda: running.stub.ResumePool(pb.ResumePoolRequest(pool=POOL), timeout=5),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call()
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert (err.value.details() or "").startswith("replica-a is a standby")
    (pool,) = (await _status(running)).pools
    assert not pool.paused


async def test_unknown_pools_are_not_found(running: Running) -> None:
    stub = running.stub
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: stub.GetStatus(pb.GetStatusRequest(pool="asr_huge"), timeout=5),
        lambda: stub.PausePool(pb.PausePoolRequest(pool="asr_huge"), timeout=5),
        lambda: stub.ResumePool(pb.ResumePoolRequest(pool="asr_huge"), timeout=5),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call()
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert "asr_huge" in (err.value.details() or "")
    stream = running.stub.WatchDecisions(pb.WatchDecisionsRequest(pool="asr_huge"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stream.read()
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_negative_replay_is_an_invalid_argument(running: Running) -> None:
    stream = running.stub.WatchDecisions(pb.WatchDecisionsRequest(replay=-1))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stream.read()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "replay" in (err.value.details() or "")


async def test_shutdown_keeps_to_one_drain_timeout_with_a_call_hanging(
    running: Running,
) -> None:
    """Loop, tasks and server had drain_timeout each, one after the other: with a Nomad
    call hanging, shutdown took twice the drain timeout or more, past the scheduler's
    kill timeout, which killed the autoscaler before it released the leader lock."""
    running.target.status_stalls = True
    running.lock.grant = True
    await wait_until_async(lambda: running.target.status_calls >= 1, 5)
    drain_timeout = running.app.settings.drain_timeout
    await asyncio.wait_for(running.app.shutdown(), drain_timeout + 1.5)
    assert running.lock.released == 1 and not running.lock.is_leader


async def test_shutdown_ends_streams_releases_the_lock_and_reports_not_serving(
    running: Running,
) -> None:
    running.lock.grant = True
    await wait_until_async(lambda: running.target.status_calls >= 1, 5)
    health = health_pb2_grpc.HealthStub(running.channel)
    serving = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert serving.status == health_pb2.HealthCheckResponse.SERVING
    stream = running.stub.WatchDecisions(pb.WatchDecisionsRequest(replay=1))
    await _next(stream)

    await running.app.shutdown()
    await running.app.shutdown()  # idempotent
    assert await asyncio.wait_for(stream.read(), 5) == grpc.aio.EOF
    assert running.lock.released == 1 and not running.lock.is_leader
