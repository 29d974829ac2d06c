"""The telemetry signal source against a real router and fake ASR instances (real gRPC).

The router is the real one with its real admission queue; the instances are
:class:`~tests.doubles.fake_asr.FakeAsr` doubles; discovery is the in-memory double that
both the router and the source follow.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from services.autoscaler.signals.base import PoolLoad
from services.autoscaler.signals.telemetry import StaticWatcher, TelemetrySource
from tests.conditions import wait_until_async
from tests.doubles.fake_asr import FakeAsr, FakeAsrOptions
from tests.doubles.memory_discovery import MemoryDiscovery
from tests.integration.router_harness import HeldStream, Mesh, mesh, pcm
from voxmesh.discovery import InstanceInfo, Watcher
from voxmesh.stt.v1 import stt_pb2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _source(m: Mesh) -> TelemetrySource:
    """Follows the harness's asr_small instances and its router, polling fast."""
    return _fast_source(m.discovery.watcher, [m.router.target])


def _fast_source(
    instances: Callable[[str], Watcher], routers: list[str], silence_s: float | None = None
) -> TelemetrySource:
    """asr_small's instances from ``instances``, the routers listed, polling fast."""
    return TelemetrySource(
        ["asr_small"],
        instances,
        StaticWatcher(routers),
        interval_s=0.1,
        backoff_s=(0.05, 0.2),
        silence_s=silence_s,
    )


async def _until(source: TelemetrySource, check: Callable[[PoolLoad], bool]) -> PoolLoad:
    await wait_until_async(lambda: check(source.read("asr_small")), timeout=5.0)
    return source.read("asr_small")


async def test_demand_capacity_and_queue_come_from_instances_and_the_router() -> None:
    async with mesh(queue_max_wait_s=20.0) as m:
        fake = await m.add("a", max_streams=1, capacity_class="preemptible")
        source = _source(m)
        running = asyncio.create_task(source.run())
        try:
            idle = await _until(source, lambda load: not load.missing and bool(load.instances))
            assert (idle.active_streams, idle.queued_realtime, idle.max_streams) == (0, 0, 1)
            (instance,) = idle.instances
            assert (instance.instance_id, instance.capacity_class) == ("a", "preemptible")
            assert instance.serving and instance.gpu_utilisation is None

            first = await HeldStream(m.channel).open(pcm(0.2))
            await wait_until_async(first.got_results, 5)
            second = await HeldStream(m.channel).open(pcm(0.2, seed=1))  # no slot: it queues
            busy = await _until(source, lambda load: load.queued_realtime == 1)
            assert busy.active_streams == 1 and busy.age_s < 1.0
            assert source.instance_streams("a") == 1

            # The instance drains: it leaves discovery but its stream still counts.
            await fake.begin_drain()
            m.discovery.remove("a")
            draining = await _until(source, lambda load: not load.instances[0].serving)
            assert draining.active_streams == 1
            assert draining.max_streams is None  # nothing listed reports a limit any more

            await first.finish()
            await fake.stop()
            await _until(source, lambda load: not load.instances)  # followed to its end
            await second.cancel()
        finally:
            await source.shutdown()
            await source.shutdown()  # idempotent
            await asyncio.wait_for(running, 5)


async def test_without_router_telemetry_the_pool_is_missing_and_ages() -> None:
    async with mesh() as m:
        await m.add("a", max_streams=2)
        source = _fast_source(m.discovery.watcher, [f"127.0.0.1:{_free_port()}"])
        running = asyncio.create_task(source.run())
        try:
            load = await _until(source, lambda load: bool(load.instances))
            assert load.missing == "no telemetry from any router yet"
            older = await _until(source, lambda later: later.age_s > load.age_s + 0.2)
            assert older.missing and older.max_streams == 2
        finally:
            await source.shutdown()
            await asyncio.wait_for(running, 5)

        nothing = TelemetrySource(["asr_small"], m.discovery.watcher, StaticWatcher([]))
        assert nothing.read("asr_small").missing.startswith("no router to follow")


async def test_a_silent_instance_ages_the_signals_but_not_the_routers_demand() -> None:
    """The routers' queues and in-flight counts give the demand on their own: an instance
    that says nothing makes the signals stale (no scale-down), not the demand."""
    async with mesh() as m:
        await m.add("a", max_streams=2)
        port = _free_port()  # listed, but nothing answers there
        m.discovery.put(InstanceInfo("b", "asr_small", "", "127.0.0.1", port, max_streams=2))
        source = _source(m)
        running = asyncio.create_task(source.run())
        try:
            load = await _until(source, lambda load: not load.missing and load.age_s > 1.0)
            assert load.router_age_s < 1.0 < load.age_s
        finally:
            await source.shutdown()
            await asyncio.wait_for(running, 5)


class _CountingAsr(FakeAsr):
    """A :class:`FakeAsr` that counts the WatchTelemetry streams open on it."""

    watching = 0

    async def WatchTelemetry(
        self, request: stt_pb2.WatchTelemetryRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[stt_pb2.WatchTelemetryResponse]:
        self.watching += 1
        try:
            async for response in super().WatchTelemetry(request, context):
                yield response
        finally:
            self.watching -= 1


async def test_an_instance_listed_at_a_new_address_is_followed_there_alone() -> None:
    """The same instance id re-registered at a new address (restarted elsewhere): the
    subscription to the old address ends at once, and shutdown leaves none behind."""
    old, new = (_CountingAsr(FakeAsrOptions(instance_id="x", max_streams=n)) for n in (1, 2))
    await old.start()
    await new.start()
    discovery = MemoryDiscovery()
    source = _fast_source(discovery.watcher, [])
    running = asyncio.create_task(source.run())
    try:
        discovery.put(old.info)
        await _until(source, lambda load: [i.max_streams for i in load.instances] == [1])
        assert old.watching == 1

        discovery.put(new.info)  # same id, new port
        await _until(source, lambda load: [i.max_streams for i in load.instances] == [2])
        await wait_until_async(lambda: old.watching == 0, 5)
        assert new.watching == 1
    finally:
        await source.shutdown()
        await asyncio.wait_for(running, 5)
        await wait_until_async(lambda: old.watching == new.watching == 0, 5)
        await old.stop()
        await new.stop()


class _FrozenAsr(_CountingAsr):
    """A :class:`FakeAsr` that sends one snapshot, then nothing, and never ends the stream:
    what the source sees of a host that vanished without a reset (a reclaimed node)."""

    async def WatchTelemetry(
        self, request: stt_pb2.WatchTelemetryRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[stt_pb2.WatchTelemetryResponse]:
        self.watching += 1
        try:
            yield stt_pb2.WatchTelemetryResponse(snapshot=self.snapshot())
            await asyncio.Event().wait()
        finally:
            self.watching -= 1


async def test_a_stream_gone_silent_after_its_instance_left_discovery_stops_counting() -> None:
    """An instance that left discovery counts as demand while its stream lives; a stream
    that says nothing any more is no live stream: its last snapshot stops counting and
    its subscription ends, rather than add phantom demand (and a feed) for ever."""
    frozen = _FrozenAsr(FakeAsrOptions(instance_id="x", max_streams=2))
    frozen.active = 2  # its last word: two streams
    await frozen.start()
    discovery = MemoryDiscovery()
    source = _fast_source(discovery.watcher, [], silence_s=0.5)
    running = asyncio.create_task(source.run())
    try:
        discovery.put(frozen.info)
        await _until(source, lambda load: load.active_streams == 2)
        discovery.remove("x")  # the node is gone; its stream never ends on its own
        gone = await _until(source, lambda load: not load.instances)
        assert gone.active_streams == 0
        await wait_until_async(lambda: frozen.watching == 0, 5)
    finally:
        await source.shutdown()
        await asyncio.wait_for(running, 5)
        await frozen.stop()


@pytest.mark.usefixtures("router_data_path")
async def test_a_router_that_drains_and_stops_is_news_not_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with mesh() as m:
        await m.add("a", max_streams=2)
        source = _source(m)
        running = asyncio.create_task(source.run())
        try:
            await _until(source, lambda load: not load.missing)
            with caplog.at_level(logging.INFO, logger="services.autoscaler.signals.telemetry"):
                await m.router.shutdown()
                await wait_until_async(lambda: m.router.target in caplog.text)
            # However it ended (OK, or cancelled with the server as the Python data path
            # stops it), its last snapshot said DRAINING.
            ended = [r for r in caplog.records if m.router.target in r.getMessage()]
            assert [r.levelno for r in ended] == [logging.INFO], caplog.text
        finally:
            await source.shutdown()
            await asyncio.wait_for(running, 5)
