"""Last-resort streams through the real router (``last_resort`` on): a draining instance with
drain time left takes a new stream when no accepting instance has room, instead of the
queue. Off, the default, a draining instance gets nothing new."""

from __future__ import annotations

import pytest

from tests.conditions import wait_until_async
from tests.doubles.fake_asr import FakeAsr, expected_finals
from tests.integration.router_harness import HeldStream, Mesh, mesh, pcm
from tests.streaming import recognize_request
from voxmesh.stt.v1 import stt_pb2, stt_pb2_grpc

pytestmark = pytest.mark.usefixtures("router_data_path")


async def _full_and_draining(
    m: Mesh, drain_s: float = 60.0, name: str = "draining"
) -> tuple[HeldStream, FakeAsr]:
    """Instance ``full`` (one slot, held by the returned stream) and instance ``name``
    (two slots) draining for ``drain_s``."""
    await m.add("full", max_streams=1)
    holder = await HeldStream(m.channel).open()
    await wait_until_async(holder.got_results)
    draining = await m.add(name, max_streams=2)
    await draining.begin_drain(timeout=drain_s)
    return holder, draining


async def _last_resort_known(m: Mesh, instance_id: str) -> None:
    def ready() -> bool:
        member = m.member(instance_id)
        return member is not None and member.last_resort()

    await wait_until_async(ready, timeout=5.0)


async def test_by_default_a_draining_instance_gets_nothing_new_and_the_stream_queues() -> None:
    async with mesh() as m:
        holder, draining = await _full_and_draining(m)
        await wait_until_async(
            lambda: (
                (mm := m.member("draining")) is not None
                and mm.snapshot is not None
                and mm.snapshot.HasField("drain_remaining")
            )
        )
        waiting = await HeldStream(m.channel).open(pcm(0.3, 9))
        await wait_until_async(lambda: m.queue().queued_realtime == 1)
        assert draining.last_resort_streams == 0 and draining.active == 0
        await holder.finish()
        await wait_until_async(waiting.got_results)
        assert (await waiting.finish()).instance_id == "full"
        assert m.metric("voxmesh_router_last_resort_total", pool="asr_small") == 0


async def test_a_draining_instance_takes_a_stream_when_nothing_else_has_room() -> None:
    async with mesh(last_resort=True) as m:
        holder, draining = await _full_and_draining(m)
        m.discovery.remove("draining")  # as Consul's ?passing drops it in maintenance
        await _last_resort_known(m, "draining")

        stream = await HeldStream(m.channel).open(pcm(0.5, 3))
        await wait_until_async(stream.got_results)
        await stream.send(pcm(0.8, 4))
        summary = await stream.finish()
        assert summary.instance_id == "draining"
        assert stream.finals() == expected_finals(stream.sent, 16000, 1000)
        assert draining.last_resort_streams == 1
        assert m.metric("voxmesh_router_last_resort_total", pool="asr_small") == 1
        (row,) = [r for r in m.snapshot().instances if r.instance_id == "draining"]
        assert row.state == stt_pb2.SERVING_STATE_DRAINING and not row.listed
        assert 30 < row.drain_remaining.ToMilliseconds() / 1000 <= 60
        assert m.queue().queued_realtime == 0
        await holder.finish()


async def test_accepting_instances_with_room_come_first() -> None:
    async with mesh(last_resort=True) as m:
        draining = await m.add("draining", max_streams=2)
        await draining.begin_drain(timeout=60.0)
        await _last_resort_known(m, "draining")
        await m.add("open", max_streams=2)
        stream = await HeldStream(m.channel).open(pcm(0.3))
        assert (await stream.finish()).instance_id == "open"
        assert draining.last_resort_streams == 0


async def test_a_drain_ending_soon_is_not_used_and_the_stream_queues() -> None:
    async with mesh(last_resort=True) as m:
        # A drain below the 30 s the router and the instance require.
        holder, ending = await _full_and_draining(m, drain_s=10.0, name="ending")
        await wait_until_async(
            lambda: (mm := m.member("ending")) is not None and not mm.accepting()
        )

        waiting = await HeldStream(m.channel).open(pcm(0.3, 5))
        await wait_until_async(lambda: m.queue().queued_realtime == 1)
        assert ending.last_resort_streams == 0
        await holder.finish()
        await wait_until_async(waiting.got_results)
        assert (await waiting.finish()).instance_id == "full"


async def test_a_last_resort_stream_outliving_the_drain_fails_over_intact() -> None:
    async with mesh(last_resort=True) as m:
        holder, draining = await _full_and_draining(m)
        m.discovery.remove("draining")
        await _last_resort_known(m, "draining")
        stream = await HeldStream(m.channel).open(pcm(1.5, 6))
        await wait_until_async(lambda: len(stream.finals()) >= 1)
        await holder.finish()  # room again on "full"
        await draining.stop(grace=0)  # the drain ends with the stream still running
        await stream.send(pcm(1.2, 7))
        summary = await stream.finish()
        assert summary.instance_id == "full" and summary.failovers == 1
        assert stream.finals() == expected_finals(stream.sent, 16000, 1000)
        # Gone for good: the router stops following it and closes its channel.
        await wait_until_async(
            lambda: "draining" not in {x.instance_id for x in m.router.membership.instances()}
        )


async def test_a_unary_request_takes_the_last_resort_too() -> None:
    async with mesh(last_resort=True) as m:
        holder, _ = await _full_and_draining(m)
        await _last_resort_known(m, "draining")
        audio = pcm(2.0, 8)
        request = recognize_request(audio)
        stub = stt_pb2_grpc.RecognizerServiceStub(m.channel)
        response = await stub.Recognize(request, timeout=10)
        assert response.summary.instance_id == "draining" and response.summary.failovers == 0
        finals = [r.alternatives[0].transcript for r in response.results]
        assert finals == expected_finals(audio, 16000, 1000)
        assert m.metric("voxmesh_router_last_resort_total", pool="asr_small") == 1
        await holder.finish()
