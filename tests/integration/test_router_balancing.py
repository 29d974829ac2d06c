"""Balancing through the real router: live load, draining, region/GPU/capacity preferences."""

from __future__ import annotations

import grpc
import pytest

from tests.conditions import wait_until_async
from tests.doubles.fake_asr import expected_finals
from tests.integration.router_harness import HeldStream, mesh, pcm
from tests.streaming import config_request, run_stream
from voxmesh.discovery import CAPACITY_ON_DEMAND, CAPACITY_PREEMPTIBLE
from voxmesh.stt.v1 import stt_pb2

pytestmark = pytest.mark.usefixtures("router_data_path")


async def test_routes_to_the_less_loaded_instance_by_its_telemetry() -> None:
    async with mesh() as m:
        busy = await m.add("busy", max_streams=4)
        await m.add("idle", max_streams=4)
        # Load "busy" behind the router's back: only its telemetry can tell.
        async with grpc.aio.insecure_channel(busy.target) as direct:
            held = [await HeldStream(direct).open() for _ in range(3)]
            await m.known("busy", active=3)
            for seed in range(4):
                audio = pcm(0.5, seed)
                run = await run_stream(m.channel, audio, first=config_request(model="asr_small"))
                assert run.error is None
                assert run.summary is not None and run.summary.instance_id == "idle"
                assert [f.alternatives[0].transcript for f in run.finals] == expected_finals(
                    audio, 16000, 1000
                )
            for h in held:
                await h.finish()


async def test_draining_instance_gets_no_new_streams_but_finishes_its_own() -> None:
    async with mesh() as m:
        draining = await m.add("draining")
        held = await HeldStream(m.channel).open()
        await wait_until_async(held.got_results)
        await m.add("other")
        await draining.begin_drain()
        await wait_until_async(lambda: not m.member("draining").accepting())  # type: ignore[union-attr]
        for seed in range(3):
            run = await run_stream(
                m.channel, pcm(0.3, seed), first=config_request(model="asr_small")
            )
            assert run.error is None and run.summary is not None
            assert run.summary.instance_id == "other"
        await held.send(pcm(1.0, 9))
        summary = await held.finish()
        assert summary.instance_id == "draining"
        assert summary.failovers == 0
        assert held.finals() == expected_finals(held.sent, 16000, 1000)


async def test_region_preference_spills_over_when_the_region_is_full() -> None:
    async with mesh(region="eu") as m:
        await m.add("eu-1", region="eu", max_streams=1)
        await m.add("us-1", region="us", max_streams=4)
        first = await HeldStream(m.channel).open()
        # Placed before the second one arrives: two streams opened at once reach the
        # router (and, natively, its control plane) in no promised order.
        await wait_until_async(first.got_results)
        second = await HeldStream(m.channel).open()
        # And the second placed while the first still holds eu-1, before either ends.
        await wait_until_async(second.got_results)
        s1, s2 = await first.finish(), await second.finish()
        assert s1.instance_id == "eu-1"
        assert s2.instance_id == "us-1"


async def test_gpu_preference_and_capacity_class_by_priority() -> None:
    async with mesh(gpu_preference=("H100",)) as m:
        await m.add("h100-od", gpu_type="H100", capacity_class=CAPACITY_ON_DEMAND)
        await m.add("h100-pre", gpu_type="H100", capacity_class=CAPACITY_PREEMPTIBLE)
        await m.add("l4-od", gpu_type="L4", capacity_class=CAPACITY_ON_DEMAND)
        realtime = await run_stream(m.channel, pcm(0.2), first=config_request(model="asr_small"))
        batch = await run_stream(
            m.channel,
            pcm(0.2),
            first=config_request(model="asr_small", priority=stt_pb2.PRIORITY_BATCH),
        )
        assert realtime.summary is not None and realtime.summary.instance_id == "h100-od"
        assert batch.summary is not None and batch.summary.instance_id == "h100-pre"
