"""The router's own telemetry, metrics, health and graceful shutdown."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conditions import wait_until_async
from tests.integration.router_harness import HeldStream, mesh, pcm
from tests.streaming import config_request, run_stream
from voxmesh.stt.v1 import stt_pb2, stt_pb2_grpc

pytestmark = pytest.mark.usefixtures("router_data_path")


def instance_rows(snap: stt_pb2.TelemetrySnapshot) -> dict[str, stt_pb2.InstanceLoad]:
    """The router snapshot's instance rows by instance id."""
    return {row.instance_id: row for row in snap.instances}


async def test_router_telemetry_stream_carries_queue_stats_and_instance_rows() -> None:
    async with mesh() as m:
        small = await m.add("a", max_streams=3, region="eu", capacity_class="preemptible")
        big = await m.add("big", pool="asr_large", model="base", max_streams=5, gpu_type="L4")
        stub = stt_pb2_grpc.TelemetryServiceStub(m.channel)
        interval = duration_pb2.Duration()
        interval.FromMilliseconds(100)
        call = stub.WatchTelemetry(stt_pb2.WatchTelemetryRequest(interval=interval))
        replies = [await call.read(), await call.read()]
        call.cancel()
        first, second = (
            r.snapshot for r in replies if isinstance(r, stt_pb2.WatchTelemetryResponse)
        )
        assert first.role == stt_pb2.ROLE_ROUTER
        assert first.state == stt_pb2.SERVING_STATE_SERVING
        assert not first.gpu_available and first.gpu_unavailable_reason
        assert second.time.ToNanoseconds() > first.time.ToNanoseconds()
        queues = {q.pool: q for q in first.queues}
        assert set(queues) == {"asr_small", "asr_large"}
        assert (queues["asr_small"].instances, queues["asr_small"].capacity_streams) == (1, 3)
        assert (queues["asr_large"].instances, queues["asr_large"].capacity_streams) == (1, 5)
        assert first.max_streams == 8

        # One row per instance, sorted by pool: asr_large before asr_small.
        assert [row.instance_id for row in first.instances] == ["big", "a"]
        rows = instance_rows(first)
        assert (rows["a"].pool, rows["a"].model, rows["a"].address) == (
            "asr_small",
            "tiny.en",
            small.target,
        )
        assert (rows["a"].region, rows["a"].capacity_class) == ("eu", "preemptible")
        assert (rows["big"].address, rows["big"].gpu_type) == (big.target, "L4")
        assert (rows["a"].max_streams, rows["big"].max_streams) == (3, 5)
        for row in rows.values():
            assert row.state == stt_pb2.SERVING_STATE_SERVING
            assert row.accepting and row.listed
            assert (row.router_streams, row.active_streams) == (0, 0)
            assert not row.gpu_available and row.gpu_utilization_ratio == 0.0
            assert row.HasField("telemetry_age")
            assert 0.0 <= row.telemetry_age.ToTimedelta().total_seconds() < 5.0

        # A stream of the router on "a": its row counts it, the instance reports it.
        held = await HeldStream(m.channel).open()
        await wait_until_async(held.got_results)
        await m.known("a", active=1)
        rows = instance_rows(m.snapshot())
        assert (rows["a"].router_streams, rows["a"].active_streams) == (1, 1)
        assert rows["big"].router_streams == 0

        # Gone from discovery, "a" stays listed as gone while the stream lasts.
        m.discovery.remove("a")
        await wait_until_async(lambda: not instance_rows(m.snapshot())["a"].listed)
        row = instance_rows(m.snapshot())["a"]
        assert not row.accepting and row.router_streams == 1
        await held.finish()
        await wait_until_async(lambda: set(instance_rows(m.snapshot())) == {"big"})

        too_fast = duration_pb2.Duration()
        too_fast.FromMilliseconds(50)
        bad = stub.WatchTelemetry(stt_pb2.WatchTelemetryRequest(interval=too_fast))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await bad.read()
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_auto_model_routes_by_priority_to_both_pools() -> None:
    async with mesh() as m:
        await m.add("small")
        await m.add("large", pool="asr_large", model="base")
        realtime = await run_stream(m.channel, pcm(0.2), first=config_request(model="auto"))
        batch = await run_stream(
            m.channel, pcm(0.2), first=config_request(priority=stt_pb2.PRIORITY_BATCH)
        )
        assert realtime.summary is not None and realtime.summary.pool == "asr_small"
        assert batch.summary is not None and batch.summary.pool == "asr_large"
        assert m.metric("voxmesh_router_streams_total", pool="asr_large", code="OK") == 1


async def test_metrics_are_served_over_http() -> None:
    async with mesh(metrics_port=0) as m:
        await m.add("a")
        await run_stream(m.channel, pcm(0.3), first=config_request(model="asr_small"))
        url = f"http://127.0.0.1:{m.router.server.metrics_port}/metrics"
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url).read().decode())
        for name in (
            "voxmesh_router_queue_depth",
            "voxmesh_router_queue_wait_seconds_bucket",
            "voxmesh_router_streams_active",
            "voxmesh_router_added_latency_seconds_bucket",
            'voxmesh_router_streams_total{code="OK",pool="asr_small"} 1.0',
            # Event counters exist at 0 before their first event, for increase() to see it.
            'voxmesh_router_failovers_total{pool="asr_large"} 0.0',
            'voxmesh_router_rejected_total{pool="asr_small",reason="timeout"} 0.0',
            'voxmesh_router_last_resort_total{pool="asr_small"} 0.0',
        ):
            assert name in body


async def test_shutdown_drains_active_streams_and_refuses_new_ones() -> None:
    async with mesh() as m:
        await m.add("a")
        held = await HeldStream(m.channel).open()
        await wait_until_async(held.got_results)
        shutdown = asyncio.create_task(m.router.shutdown())
        health = health_pb2_grpc.HealthStub(m.channel)
        await wait_until_async(lambda: m.router.recognizer.draining)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        refused = await run_stream(m.channel, pcm(0.1), first=config_request(model="asr_small"))
        assert refused.error is not None
        assert refused.error.code() == grpc.StatusCode.UNAVAILABLE
        assert not shutdown.done()
        await held.send(pcm(1.0))
        summary = await held.finish()
        assert summary.instance_id == "a"
        await shutdown


async def test_a_silent_new_stream_is_refused_at_once_while_draining() -> None:
    """The refusal does not wait for the client's first request (the idle timeout is
    30 s here): a client learns at once to go to another router."""
    async with mesh(idle_timeout_s=30.0) as m:
        await m.add("a")
        held = await HeldStream(m.channel).open()
        await wait_until_async(held.got_results)
        shutdown = asyncio.create_task(m.router.shutdown())
        await wait_until_async(lambda: m.router.recognizer.draining)
        silent: Any = stt_pb2_grpc.RecognizerServiceStub(m.channel).StreamingRecognize(timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await silent.read()
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        await held.send(pcm(0.5))
        await held.finish()
        await shutdown


async def test_a_silent_stream_past_the_router_limit_is_refused_at_once() -> None:
    async with mesh(max_streams=1, idle_timeout_s=30.0) as m:
        await m.add("a")
        held = await HeldStream(m.channel).open()
        await wait_until_async(held.got_results)
        silent: Any = stt_pb2_grpc.RecognizerServiceStub(m.channel).StreamingRecognize(timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await silent.read()
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert m.metric("voxmesh_router_rejected_total", pool="any", reason="router_full") == 1
        await held.finish()


async def test_drain_timeout_cancels_what_is_left() -> None:
    async with mesh(drain_timeout_s=0.2) as m:
        fake = await m.add("a")
        held = await HeldStream(m.channel).open()
        await wait_until_async(held.got_results)
        await m.router.shutdown()
        assert await held.call.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
        await wait_until_async(lambda: fake.active == 0)


async def test_a_stream_left_after_the_drain_is_cancelled_at_once() -> None:
    """The native data path drained again after the router's drain (its own
    ``--drain-timeout``, cut by SIGKILL): a shutdown took two drains."""
    drain_s = 2.0
    async with mesh(drain_timeout_s=drain_s) as m:
        fake = await m.add("a")
        held = await HeldStream(m.channel).open()
        await wait_until_async(held.got_results)
        started = time.monotonic()
        await m.router.shutdown()
        took = time.monotonic() - started
        assert await held.call.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
        assert drain_s <= took < drain_s + 1.5
        if m.router.dataplane is not None:  # it exited of its own, not killed
            assert await m.router.dataplane.wait() == 0
        await wait_until_async(lambda: fake.active == 0)


async def test_shutdown_ends_telemetry_watches_once_the_streams_are_drained(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A watch left open would hold the native data path's drain (it waits for every call
    it forwards) until the router killed it."""
    async with mesh() as m:
        await m.add("a")
        held = await HeldStream(m.channel).open()
        await wait_until_async(held.got_results)
        interval = duration_pb2.Duration()
        interval.FromMilliseconds(100)
        stub = stt_pb2_grpc.TelemetryServiceStub(m.channel)
        call = stub.WatchTelemetry(stt_pb2.WatchTelemetryRequest(interval=interval), timeout=30)

        async def state() -> int:
            reply = await call.read()
            assert isinstance(reply, stt_pb2.WatchTelemetryResponse)
            return reply.snapshot.state

        assert await state() == stt_pb2.SERVING_STATE_SERVING
        shutdown = asyncio.create_task(m.router.shutdown())
        # While a stream is drained, the watch goes on and says so.
        while await state() != stt_pb2.SERVING_STATE_DRAINING:
            pass
        assert not shutdown.done()
        await held.send(pcm(0.5))
        await held.finish()
        while await call.read() != grpc.aio.EOF:
            pass
        assert await call.code() == grpc.StatusCode.OK
        await shutdown
        assert "killing it" not in caplog.text
