"""The admission queue through the real router: forms, drains, orders, times out."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tests.conditions import wait_until_async
from tests.doubles.fake_asr import expected_finals
from tests.integration.router_harness import HeldStream, mesh, pcm
from tests.streaming import config_request, recognize_request, run_stream
from voxmesh.rpc.status import retry_after_of
from voxmesh.stt.v1 import stt_pb2, stt_pb2_grpc

pytestmark = pytest.mark.usefixtures("router_data_path")


async def test_queue_forms_when_full_and_drains_when_an_instance_frees() -> None:
    async with mesh() as m:
        fake = await m.add("a", max_streams=1)
        holder = await HeldStream(m.channel).open()
        await wait_until_async(holder.got_results)
        waiting = await HeldStream(m.channel).open(pcm(0.5, 1))
        await wait_until_async(lambda: m.queue().queued_bytes == len(pcm(0.5, 1)))
        queue = m.queue()
        assert queue.queued_realtime == 1
        assert (queue.instances, queue.active_streams, queue.capacity_streams) == (1, 1, 1)
        assert m.metric("voxmesh_router_queue_depth", pool="asr_small", priority="realtime") == 1
        assert fake.active == 1 and not waiting.got_results()
        await holder.finish()
        await wait_until_async(waiting.got_results)
        await waiting.send(pcm(0.7, 2))
        summary = await waiting.finish()
        assert summary.instance_id == "a"
        # The audio buffered while queued reached the instance intact.
        assert waiting.finals() == expected_finals(waiting.sent, 16000, 1000)
        assert m.queue().queued_realtime == 0
        assert m.queue().admitted_total == 2


async def test_queue_drains_when_a_new_instance_appears() -> None:
    async with mesh() as m:
        waiting = await HeldStream(m.channel).open(pcm(0.3))
        await wait_until_async(lambda: m.queue().queued_realtime == 1)
        await m.add("late")
        await wait_until_async(waiting.got_results)
        assert (await waiting.finish()).instance_id == "late"


async def test_realtime_waits_ahead_of_batch() -> None:
    async with mesh() as m:
        await m.add("a", max_streams=1)
        holder = await HeldStream(m.channel).open()
        await wait_until_async(holder.got_results)
        batch = await HeldStream(
            m.channel, config_request(model="asr_small", priority=stt_pb2.PRIORITY_BATCH)
        ).open()
        await wait_until_async(lambda: m.queue().queued_batch == 1)
        realtime = await HeldStream(m.channel).open()
        await wait_until_async(lambda: m.queue().queued_realtime == 1)
        await holder.finish()
        await wait_until_async(realtime.got_results)
        assert not batch.got_results()
        await realtime.finish()
        await wait_until_async(batch.got_results)
        await batch.finish()


async def test_queue_timeout_is_resource_exhausted_with_a_retry_hint() -> None:
    async with mesh(queue_max_wait_s=0.2, queue_retry_after_s=1.5) as m:
        await m.add("a", max_streams=1)
        holder = await HeldStream(m.channel).open()
        await wait_until_async(holder.got_results)
        run = await run_stream(m.channel, pcm(0.2), first=config_request(model="asr_small"))
        assert run.error is not None
        assert run.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert retry_after_of(run.error) == 1.5
        status = rpc_status.from_call(run.error)
        assert status is not None
        info = error_details_pb2.RetryInfo()
        assert status.details[0].Unpack(info)
        assert info.retry_delay.ToMilliseconds() == 1500
        assert m.queue().rejected_total == 1
        assert m.metric("voxmesh_router_rejected_total", pool="asr_small", reason="timeout") == 1
        await holder.finish()


async def test_full_queue_rejects_at_once() -> None:
    async with mesh(queue_max_streams=1) as m:
        waiting = await HeldStream(m.channel).open()
        await wait_until_async(lambda: m.queue().queued_realtime == 1)
        run = await run_stream(m.channel, pcm(0.1), first=config_request(model="asr_small"))
        assert run.error is not None
        assert run.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "queue is full" in (run.error.details() or "")
        await waiting.cancel()


async def test_instance_resource_exhausted_is_absorbed() -> None:
    # The router's telemetry view is stale (long interval): "a" looks free but
    # refuses; the stream must land on "b" without the client noticing.
    async with mesh(telemetry_interval_s=30.0, region="eu") as m:
        a = await m.add("a", max_streams=4, region="eu")
        await m.add("b", max_streams=4, region="us")
        a.set_capacity(0)
        for seed in range(3):
            audio = pcm(0.3, seed)
            run = await run_stream(m.channel, audio, first=config_request(model="asr_small"))
            assert run.error is None
            assert run.summary is not None and run.summary.instance_id == "b"
            assert [f.alternatives[0].transcript for f in run.finals] == expected_finals(
                audio, 16000, 1000
            )
        assert m.metric("voxmesh_router_instance_rejections_total", pool="asr_small") == 1


async def test_a_refusal_does_not_hand_the_instance_to_the_next_queued_stream() -> None:
    # "a" refuses every stream while the router's view (30 s old) still has room for
    # one: the refused stream and the one queued behind it both wait for news.
    async with mesh(telemetry_interval_s=30.0) as m:
        a = await m.add("a", max_streams=1)
        a.set_capacity(0)
        first = await HeldStream(m.channel).open(pcm(0.3, 1))
        second = await HeldStream(m.channel).open(pcm(0.3, 2))
        await wait_until_async(lambda: m.queue().queued_realtime == 2)
        assert m.metric("voxmesh_router_instance_rejections_total", pool="asr_small") == 1
        await m.add("b", max_streams=2)
        for held in (first, second):
            assert (await held.finish()).instance_id == "b"
            assert held.finals() == expected_finals(held.sent, 16000, 1000)
        assert m.metric("voxmesh_router_instance_rejections_total", pool="asr_small") == 1


async def test_unary_request_refused_by_a_full_instance_goes_to_another() -> None:
    # As above for Recognize: the preferred "a" looks free but refuses; the request
    # must not be sent back to it until it reports again.
    async with mesh(telemetry_interval_s=30.0, region="eu") as m:
        a = await m.add("a", max_streams=4, region="eu")
        await m.add("b", max_streams=4, region="us")
        a.set_capacity(0)
        audio = pcm(1.5, 7)
        request = recognize_request(audio, model="tiny.en")
        stub = stt_pb2_grpc.RecognizerServiceStub(m.channel)
        response = await stub.Recognize(request, timeout=5.0)
        texts = [r.alternatives[0].transcript for r in response.results]
        assert texts == expected_finals(audio, 16000, 1000)
        assert (response.summary.instance_id, response.summary.failovers) == ("b", 0)
        assert m.metric("voxmesh_router_instance_rejections_total", pool="asr_small") == 1


async def test_a_request_an_instance_is_too_small_for_is_not_taken_for_a_full_instance() -> None:
    """gRPC's own RESOURCE_EXHAUSTED (a message over the instance's size limit) was
    taken for "instance full": the request went back to the queue and was sent again,
    every instance marked full in turn, until the queue timed out."""
    async with mesh() as m:
        await m.add("a", max_streams=4, max_message_bytes=1 << 20)
        stub = stt_pb2_grpc.RecognizerServiceStub(m.channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Recognize(recognize_request(pcm(40.0, 5)), timeout=5.0)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert retry_after_of(info.value) is None
        assert m.metric("voxmesh_router_instance_rejections_total", pool="asr_small") == 0
        audio = pcm(1.0, 6)
        response = await stub.Recognize(recognize_request(audio), timeout=5.0)
        assert response.summary.instance_id == "a"


async def test_router_sheds_load_past_its_own_limit() -> None:
    async with mesh(max_streams=1, queue_retry_after_s=0.5) as m:
        await m.add("a", max_streams=4)
        holder = await HeldStream(m.channel).open()
        await wait_until_async(holder.got_results)
        run = await run_stream(m.channel, pcm(0.1), first=config_request(model="asr_small"))
        assert run.error is not None
        assert run.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "router is at capacity" in (run.error.details() or "")
        assert retry_after_of(run.error) == 0.5
        await holder.finish()
        again = await run_stream(m.channel, pcm(0.1), first=config_request(model="asr_small"))
        assert again.error is None


async def test_a_queued_unary_request_counts_as_a_stream_with_its_audio() -> None:
    async with mesh() as m:
        audio = pcm(2.0, 4)
        request = recognize_request(audio)
        call = stt_pb2_grpc.RecognizerServiceStub(m.channel).Recognize(request, timeout=10.0)
        await wait_until_async(lambda: m.queue().queued_realtime == 1)
        assert m.metric("voxmesh_router_streams_active", pool="asr_small") == 1
        assert m.queue().queued_bytes == len(audio)
        assert m.metric("voxmesh_router_queue_bytes", pool="asr_small") == len(audio)
        await m.add("a", max_streams=4)
        await call
        assert m.metric("voxmesh_router_streams_active", pool="asr_small") == 0
        assert m.metric("voxmesh_router_queue_bytes", pool="asr_small") == 0


async def test_a_unary_request_refused_as_not_accepting_waits_for_another_instance() -> None:
    async with mesh(telemetry_interval_s=30.0, max_failovers=0) as m:
        starting = await m.add("starting")
        starting.refuse_as_starting()
        request = recognize_request(pcm(1.2, 3))
        call = stt_pb2_grpc.RecognizerServiceStub(m.channel).Recognize(request, timeout=10.0)
        await wait_until_async(lambda: m.queue().queued_realtime == 1)
        await m.add("ready")
        response = await call
        assert (response.summary.instance_id, response.summary.failovers) == ("ready", 0)
