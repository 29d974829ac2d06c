"""The control plane of the native data path: ``DataPlaneService.Attach`` and
``Connect`` on the router's Unix socket, driven by a stand-in for the data path
(:class:`AttachStandIn` and :class:`ConnectStandIn`, test doubles, not ``dataplane/``),
against fake instances. Every test runs with both calls (the ``stand_in`` fixture).

Where the Python relay has an answer for the same case, the test takes it from a
router with ``data_path=python`` beside the native one and compares: the client of
either data path must get the same status, message and metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from services.router.control import relay_limits
from services.router.relay import RelayLimits
from tests.conditions import wait_until_async
from tests.doubles.dataplane_standin import AttachStandIn, ConnectStandIn
from tests.integration.router_harness import CHUNK, HeldStream, Mesh, mesh, native_mesh, pcm
from tests.streaming import config_request, send_requests
from voxmesh.router.v1 import dataplane_pb2
from voxmesh.rpc.status import RETRY_AFTER_KEY
from voxmesh.stt.v1 import stt_pb2, stt_pb2_grpc

Request = stt_pb2.StreamingRecognizeRequest
Ended = dataplane_pb2.AttemptEndedEvent
Status = tuple[grpc.StatusCode, str, float | None]
"""A call's code, details and retry hint."""


StandInFactory = Callable[[grpc.aio.Channel], AttachStandIn]
"""Makes the data path's stand-in for one stream on a channel to the control plane."""


@pytest.fixture(params=["attach", "connect"])
async def stand_in(request: pytest.FixtureRequest) -> AsyncIterator[StandInFactory]:
    """Each test runs with streams on Attach calls of their own, and with streams carried
    by one Connect call per channel (what the data path uses): the same events must get
    the same answers and statuses either way."""
    if request.param == "attach":
        yield AttachStandIn
        return
    connects: dict[int, ConnectStandIn] = {}

    def carried(channel: grpc.aio.Channel) -> AttachStandIn:
        connect = connects.get(id(channel))
        if connect is None:
            connect = connects[id(channel)] = ConnectStandIn(channel)
        return connect.stream()

    yield carried
    for connect in connects.values():
        await connect.close()


def audio(n: int) -> Request:
    return Request(audio_content=b"\1" * n)


def config(**changes: Any) -> Request:
    request = config_request(model="asr_small")
    for key, value in changes.items():
        setattr(request.streaming_config.config, key, value)
    return request


async def python_status(target: str, requests: Sequence[Request]) -> Status:
    """What the Python relay answers a client that sends ``requests`` and half-closes."""
    async with grpc.aio.insecure_channel(target) as channel:
        return await _status(await send_requests(channel, requests, timeout=30))


async def ends(stream: AttachStandIn, *steps: Awaitable[Any]) -> Status:
    """Takes ``steps`` (the call may end under any of them); the call's final status."""
    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError, AssertionError):
        for step in steps:
            await step
    return await _status(stream.call)


async def _status(call: Any) -> Status:
    retry = None
    for key, value in await call.trailing_metadata() or ():
        if key == RETRY_AFTER_KEY:
            retry = int(value) / 1000
    return await call.code(), await call.details(), retry


def streams_total(m: Mesh) -> dict[tuple[str, str], float]:
    """``voxmesh_router_streams_total`` by (pool, code), zeros left out."""
    out = {}
    for family in m.router.registry.collect():
        for sample in family.samples:
            if sample.name == "voxmesh_router_streams_total" and sample.value:
                out[(sample.labels["pool"], sample.labels["code"])] = sample.value
    return out


async def test_open_is_answered_with_the_route_and_the_config_for_the_instances(
    tmp_path: Path, stand_in: StandInFactory
) -> None:
    settings: dict[str, Any] = {
        "queue_max_bytes": 5000,
        "relay_buffer_bytes": 6000,
        "replay_max_bytes": 7000,
        "max_chunk_bytes": 8000,
        "failover_context_s": 2.5,
        "idle_timeout_s": 12.25,
    }
    async with native_mesh(tmp_path, **settings) as (m, channel):
        await m.add("a")  # its model tiny.en is then served by asr_small
        named = stand_in(channel)
        first = config_request(model="tiny.en", stream_id="call-7", rate=8000)
        route = await named.open(first)
        expected = Request()
        expected.CopyFrom(first)
        expected.streaming_config.config.model = "asr_small"
        assert route.config == expected
        assert (route.pool, route.stream_id) == ("asr_small", "call-7")
        assert (route.linear16, route.sample_rate_hertz) == (True, 8000)
        assert route.limits == dataplane_pb2.RelayLimits(
            queue_max_bytes=5000,
            relay_buffer_bytes=6000,
            replay_max_bytes=7000,
            max_chunk_bytes=8000,
            failover_context_ms=2500,
            idle_timeout_ms=12250,
        )

        batch = stand_in(channel)
        container = config_request(
            encoding=stt_pb2.AUDIO_ENCODING_CONTAINER, priority=stt_pb2.PRIORITY_BATCH
        )
        route = await batch.open(container)
        assert route.pool == "asr_large"  # "auto": batch goes to the batch pool
        assert route.stream_id and route.config.streaming_config.stream_id == route.stream_id
        assert route.config.streaming_config.config.model == "asr_large"
        assert (route.linear16, route.sample_rate_hertz) == (False, 0)

        assert m.router.recognizer.active_streams == 2
        assert m.metric("voxmesh_router_streams_active", pool="asr_small") == 1
        assert m.metric("voxmesh_router_streams_active", pool="asr_large") == 1
        assert m.snapshot().active_streams == 2
        for stream in (named, batch):
            await stream.finished()
        assert m.metric("voxmesh_router_streams_active", pool="asr_small") == 0
        assert m.router.recognizer.active_streams == 0


def test_relay_limits_carry_the_router_settings_in_whole_milliseconds() -> None:
    limits = RelayLimits(1, 2, 3, 4, max_failovers=5, failover_context_s=0.0004, idle_timeout_s=30)
    wire = relay_limits(limits)
    assert (wire.failover_context_ms, wire.idle_timeout_ms) == (0, 30000)


BAD_FIRST_REQUESTS: dict[str, Request | None] = {
    "empty stream": None,
    "audio before config": audio(3200),
    "a first request carrying nothing": Request(),
    "unknown model": config(model="whisper-huge"),
    "unsupported encoding": config(encoding=stt_pb2.AUDIO_ENCODING_UNSPECIFIED),
    "sample rate too low": config(sample_rate_hertz=4000),
    "no priority": config(priority=stt_pb2.PRIORITY_UNSPECIFIED),
    "bad language": config(language_code="english!"),
    "bad stream id": config_request(model="asr_small", stream_id="has space"),
}


async def test_a_bad_first_request_ends_the_call_as_the_python_relay_ends_the_stream(
    tmp_path: Path, stand_in: StandInFactory
) -> None:
    async with mesh() as py:
        await py.add("a")
        expected = {
            case: await python_status(py.router.target, [] if first is None else [first])
            for case, first in BAD_FIRST_REQUESTS.items()
        }
        python_totals = streams_total(py)
    async with native_mesh(tmp_path) as (native, channel):
        await native.add("a")
        for case, first in BAD_FIRST_REQUESTS.items():
            assert expected[case][0] in (
                grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.NOT_FOUND,
            ), case
            stream = stand_in(channel)
            assert await ends(stream, stream.open(first)) == expected[case], case
        assert streams_total(native) == python_totals
        assert native.router.recognizer.active_streams == 0


# A request the relay refuses, and the reject the data path sends for it.
REJECTED_REQUESTS: dict[str, tuple[Request, dataplane_pb2.RejectEvent]] = {
    "second config": (config(), dataplane_pb2.RejectEvent(bad_request=config())),
    "request carrying nothing": (Request(), dataplane_pb2.RejectEvent(bad_request=Request())),
    "odd-length pcm": (audio(33), dataplane_pb2.RejectEvent(bad_chunk_bytes=33)),
    "oversized chunk": (
        audio((1 << 20) + 2),
        dataplane_pb2.RejectEvent(bad_chunk_bytes=(1 << 20) + 2),
    ),
}


async def test_each_reject_ends_the_call_as_the_python_relay_ends_the_stream(
    tmp_path: Path, stand_in: StandInFactory
) -> None:
    async with mesh(idle_timeout_s=0.5) as py:
        await py.add("a")
        expected = {
            case: await python_status(py.router.target, [config(), audio(3200), bad])
            for case, (bad, _) in REJECTED_REQUESTS.items()
        }
        # A client that half-closes after its config.
        no_audio = await python_status(py.router.target, [config()])
        assert no_audio[1] == "empty stream: no audio was sent after the config"
        # A client that sends no config for the idle timeout.
        silent: Any = stt_pb2_grpc.RecognizerServiceStub(py.channel).StreamingRecognize()
        with contextlib.suppress(grpc.aio.AioRpcError):
            await silent.read()
        stalled = await _status(silent)
        assert stalled[0] == grpc.StatusCode.OUT_OF_RANGE
        python_totals = streams_total(py)
        await wait_until_async(lambda: py.router.recognizer.active_streams == 0)
        python_audio = py.router.recognizer.audio_seconds_total

    async with native_mesh(tmp_path, idle_timeout_s=0.5) as (native, channel):
        await native.add("a")
        for case, (_, reject) in REJECTED_REQUESTS.items():
            stream = stand_in(channel)
            await stream.open(config())
            sent = stream.send(reject=reject, audio_seconds=0.1)  # audio(3200) came first
            assert await ends(stream, sent) == expected[case], case

        stream = stand_in(channel)
        await stream.open(config())
        reject = dataplane_pb2.RejectEvent(no_audio=True)
        assert await ends(stream, stream.send(reject=reject)) == no_audio

        # The data path has no first request to open with: the reject comes first.
        stream = stand_in(channel)
        reject = dataplane_pb2.RejectEvent(stalled_waiting_for="streaming_config")
        assert await ends(stream, stream.send(reject=reject)) == stalled

        # The client has the status a moment before the handler has counted its end.
        await wait_until_async(lambda: native.router.recognizer.active_streams == 0)
        assert streams_total(native) == python_totals
        assert native.router.recognizer.audio_seconds_total == pytest.approx(python_audio)
        assert python_audio == pytest.approx(0.1 * len(REJECTED_REQUESTS))


async def test_a_stall_after_a_failover_is_answered_as_the_python_relay_answers_it(
    tmp_path: Path, stand_in: StandInFactory
) -> None:
    """The Python relay's case: finals cover all the audio when the instance dies, and
    the client sends nothing more."""
    async with mesh(idle_timeout_s=0.5) as py:
        first = await py.add("first")
        held = await HeldStream(py.channel).open(pcm(1.0, 2))
        await wait_until_async(lambda: len(held.finals()) == 1)
        await first.stop(grace=0)
        await wait_until_async(lambda: held.error is not None, timeout=10.0)
        expected = await _status(held.call)
    async with native_mesh(tmp_path, idle_timeout_s=0.5) as (native, channel):
        await native.add("a")
        stream = stand_in(channel)
        await stream.open(config())
        reject = dataplane_pb2.RejectEvent(stalled_waiting_for="audio")
        assert await ends(stream, stream.send(reject=reject)) == expected
        assert expected[:2] == (
            grpc.StatusCode.OUT_OF_RANGE,
            "no audio received for 0.5 s: send audio close to real time, and half-close "
            "the stream at its end",
        )


async def test_an_unreplayable_stream_is_answered_as_the_python_relay_answers_it(
    tmp_path: Path, stand_in: StandInFactory
) -> None:
    async with mesh(replay_max_bytes=4 * CHUNK) as py:
        first = await py.add("first", utterance_ms=60_000)  # no final: nothing is trimmed
        held = await HeldStream(py.channel).open(pcm(1.0))
        await wait_until_async(held.got_results)
        await py.add("second")
        first.fail_streams()
        await held.send(pcm(0.2, 1))
        expected = await _status(held.call)
    async with native_mesh(tmp_path, replay_max_bytes=4 * CHUNK) as (native, channel):
        stream = stand_in(channel)
        await stream.open(config())
        reject = dataplane_pb2.RejectEvent(unreplayable=True)
        assert await ends(stream, stream.send(reject=reject)) == expected
        assert expected[0] == grpc.StatusCode.UNAVAILABLE
        assert native.metric("voxmesh_router_streams_total", pool="asr_small", code="UNAVAILABLE")


async def test_place_is_answered_with_a_reserved_instance(
    tmp_path: Path, stand_in: StandInFactory
) -> None:
    async with native_mesh(tmp_path) as (m, channel):
        fake = await m.add("a", max_streams=3)
        stream = stand_in(channel)
        await stream.open(config())
        placement = await stream.placement()
        assert (placement.instance_id, placement.target, placement.model) == (
            "a",
            fake.target,
            "tiny.en",
        )
        assert list(placement.metadata) == []
        member = m.member("a")
        assert member is not None and member.inflight == 1
        assert m.queue().admitted_total == 1
        await stream.ended(Ended.OUTCOME_DONE)
        await wait_until_async(lambda: member.inflight == 0)
        await stream.finished(audio_seconds=1.5)
        assert m.metric("voxmesh_router_streams_total", pool="asr_small", code="OK") == 1
        assert m.router.recognizer.audio_seconds_total == 1.5
        assert m.snapshot().audio_seconds_total == 1.5


async def test_open_asking_for_an_instance_gets_one_with_the_route_when_one_has_room(
    tmp_path: Path, stand_in: StandInFactory
) -> None:
    # Telemetry every 30 s: only the router's own marks say which instance has room.
    async with native_mesh(tmp_path, telemetry_interval_s=30.0) as (m, channel):
        fake = await m.add("a", max_streams=1)
        first = stand_in(channel)
        route = await first.open(config(), place=True)
        assert (route.pool, route.placement.instance_id) == ("asr_small", "a")
        assert route.placement.target == fake.target
        member = m.member("a")
        assert member is not None and member.inflight == 1

        # No room at once: the route comes alone, the placement once there is room.
        second = stand_in(channel)
        route = await second.open(config(), place=True)
        assert route.pool == "asr_small" and not route.HasField("placement")
        await wait_until_async(lambda: m.queue().queued_realtime == 1)

        # finished ends the attempt it names (the instance goes to the queue) and
        # carries the last latencies.
        latency = dataplane_pb2.LatencyEvent(upstream_seconds=[0.001], downstream_seconds=[0.002])
        await first.finished(last_attempt=Ended.OUTCOME_DONE, latency=latency)
        assert (await second.answer("placement")).placement.instance_id == "a"
        assert member.inflight == 1
        name = "voxmesh_router_added_latency_seconds"
        assert m.metric(f"{name}_count", direction="upstream") == 1
        assert m.metric(f"{name}_count", direction="downstream") == 1
        await second.finished(
            last_attempt=Ended.OUTCOME_ERROR, code=grpc.StatusCode.ABORTED.value[0]
        )
        assert member.inflight == 0
        assert m.metric("voxmesh_router_instance_rejections_total", pool="asr_small") == 0
        assert m.metric("voxmesh_router_streams_total", pool="asr_small", code="OK") == 1
        assert m.metric("voxmesh_router_streams_total", pool="asr_small", code="ABORTED") == 1


async def test_a_refused_stream_waits_again_in_the_place_it_had(
    tmp_path: Path, stand_in: StandInFactory
) -> None:
    # Telemetry every 30 s: only the router's own marks say which instance has room.
    async with native_mesh(tmp_path, telemetry_interval_s=30.0) as (m, channel):
        await m.add("a", max_streams=1)
        refused, behind = stand_in(channel), stand_in(channel)
        await refused.open(config())
        await behind.open(config())
        assert (await refused.placement()).instance_id == "a"
        await behind.place()
        await wait_until_async(lambda: m.queue().queued_realtime == 1)
        await refused.ended(Ended.OUTCOME_FULL)  # "a" is full after all, until it reports
        await refused.place()
        await wait_until_async(lambda: m.queue().queued_realtime == 2)
        assert m.metric("voxmesh_router_instance_rejections_total", pool="asr_small") == 1
        await m.add("b", max_streams=1)
        # The refused stream came first: its place is still ahead of the one behind.
        assert (await refused.answer("placement")).placement.instance_id == "b"
        assert m.queue().queued_realtime == 1
        assert m.queue().admitted_total == 1  # admitted once, refused or not
        await refused.ended(Ended.OUTCOME_DONE)
        await refused.finished()
        await behind.finished()  # while queued: it leaves the queue
        await wait_until_async(lambda: m.queue().queued_realtime == 0)
        assert m.metric("voxmesh_router_streams_total", pool="asr_small", code="OK") == 2


async def test_a_failed_instance_is_excluded_and_the_stream_gives_up_past_max_failovers(
    tmp_path: Path, stand_in: StandInFactory
) -> None:
    async with native_mesh(tmp_path, telemetry_interval_s=30.0, max_failovers=1) as (m, channel):
        await m.add("a")
        await m.add("b")
        stream = stand_in(channel)
        await stream.open(config())
        first = (await stream.placement()).instance_id
        await stream.ended(Ended.OUTCOME_FAILED)
        second = (await stream.placement()).instance_id
        assert {first, second} == {"a", "b"}
        failed = m.member(first)
        assert failed is not None and not failed.accepting()  # unreachable until it reports
        assert m.metric("voxmesh_router_failovers_total", pool="asr_small") == 1
        code, details, _ = await ends(stream, stream.ended(Ended.OUTCOME_FAILED))
        assert (code, details) == (
            grpc.StatusCode.UNAVAILABLE,
            "stream failed on 2 instances; giving up",
        )
        assert m.metric("voxmesh_router_failovers_total", pool="asr_small") == 2
        assert [mm.inflight for mm in m.router.membership.instances()] == [0, 0]
        assert m.metric("voxmesh_router_streams_total", pool="asr_small", code="UNAVAILABLE") == 1


async def test_a_failed_over_stream_is_served_ahead_of_new_ones(
    tmp_path: Path, stand_in: StandInFactory
) -> None:
    async with native_mesh(tmp_path, telemetry_interval_s=30.0) as (m, channel):
        await m.add("a", max_streams=1)
        on_a = stand_in(channel)
        await on_a.open(config())
        assert (await on_a.placement()).instance_id == "a"
        await m.add("b", max_streams=1)
        on_b, new = stand_in(channel), stand_in(channel)
        await on_b.open(config())
        assert (await on_b.placement()).instance_id == "b"
        await new.open(config())
        await new.place()
        await wait_until_async(lambda: m.queue().queued_realtime == 1)
        await on_a.ended(Ended.OUTCOME_FAILED)
        await on_a.place()
        await wait_until_async(lambda: m.queue().queued_realtime == 2)
        await on_b.ended(Ended.OUTCOME_DONE)  # "b" frees: the failed-over stream goes first
        assert (await on_a.answer("placement")).placement.instance_id == "b"
        assert m.queue().queued_realtime == 1
        for stream in (on_a, on_b, new):
            await stream.finished()


async def test_a_last_resort_placement_carries_its_mark(
    tmp_path: Path, stand_in: StandInFactory
) -> None:
    async with native_mesh(tmp_path, last_resort=True) as (m, channel):
        await m.add("full", max_streams=1)
        holder = stand_in(channel)
        await holder.open(config())
        assert (await holder.placement()).instance_id == "full"
        draining = await m.add("draining", max_streams=2)
        await draining.begin_drain(timeout=60.0)
        m.discovery.remove("draining")

        def last_resort_known() -> bool:
            member = m.member("draining")
            return member is not None and member.last_resort()

        await wait_until_async(last_resort_known)
        stream = stand_in(channel)
        await stream.open(config())
        placement = await stream.placement()
        assert placement.instance_id == "draining"
        assert [(e.key, e.value) for e in placement.metadata] == [("voxmesh-last-resort", "1")]
        assert m.metric("voxmesh_router_last_resort_total", pool="asr_small") == 1
        for held in (holder, stream):
            await held.ended(Ended.OUTCOME_DONE)
            await held.finished()


async def test_a_draining_router_refuses_new_streams(
    tmp_path: Path, stand_in: StandInFactory
) -> None:
    async with native_mesh(tmp_path) as (m, channel):
        held = stand_in(channel)
        await held.open(config())
        shutdown = asyncio.create_task(m.router.shutdown())
        await wait_until_async(lambda: m.router.recognizer.draining)
        refused = stand_in(channel)
        assert await ends(refused, refused.open(config())) == (
            grpc.StatusCode.UNAVAILABLE,
            "the router is draining; retry on another router",
            None,
        )
        assert not shutdown.done()  # the held stream has its drain
        await held.finished()
        await shutdown
        assert m.metric("voxmesh_router_streams_total", pool="unknown", code="UNAVAILABLE") == 1


async def test_the_router_limit_counts_native_streams(
    tmp_path: Path, stand_in: StandInFactory
) -> None:
    async with native_mesh(tmp_path, max_streams=1, queue_retry_after_s=0.5) as (m, channel):
        held = stand_in(channel)
        await held.open(config())
        refused = stand_in(channel)
        assert await ends(refused, refused.open(config())) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "the router is at capacity (1 streams); retry later",
            0.5,
        )
        assert m.metric("voxmesh_router_rejected_total", pool="any", reason="router_full") == 1
        await wait_until_async(lambda: m.router.recognizer.active_streams == 1)
        await held.finished()
        again = stand_in(channel)
        assert (await again.open(config())).pool == "asr_small"
        await again.finished()


async def test_an_attach_call_that_ends_leaves_nothing_held(
    tmp_path: Path, stand_in: StandInFactory
) -> None:
    async with native_mesh(tmp_path, telemetry_interval_s=30.0) as (m, channel):
        await m.add("a", max_streams=1)
        placed, queued = stand_in(channel), stand_in(channel)
        await placed.open(config())
        assert (await placed.placement()).instance_id == "a"
        await queued.open(config())
        await queued.place()
        await queued.send(buffered=dataplane_pb2.BufferedEvent(bytes=4321))
        await wait_until_async(lambda: m.queue().queued_bytes == 4321)
        assert m.queue().queued_realtime == 1

        queued.call.cancel()  # cancelled while queued: it leaves the queue
        await wait_until_async(lambda: m.queue().queued_realtime == 0)
        assert m.metric("voxmesh_router_queue_bytes", pool="asr_small") == 0
        await wait_until_async(lambda: m.router.recognizer.active_streams == 1)

        member = m.member("a")
        assert member is not None and member.inflight == 1
        await channel.close()  # the data path goes away with the stream placed
        await wait_until_async(lambda: m.router.recognizer.active_streams == 0)
        assert member.inflight == 0
        assert m.metric("voxmesh_router_streams_active", pool="asr_small") == 0
        assert m.metric("voxmesh_router_streams_total", pool="asr_small", code="CANCELLED") == 2


async def test_latency_samples_land_in_the_added_latency_histogram(
    tmp_path: Path, stand_in: StandInFactory
) -> None:
    async with native_mesh(tmp_path) as (m, channel):
        stream = stand_in(channel)
        await stream.open(config())
        latency = dataplane_pb2.LatencyEvent(
            upstream_seconds=[0.001, 0.002], downstream_seconds=[0.004]
        )
        await stream.send(latency=latency)
        name = "voxmesh_router_added_latency_seconds"
        await wait_until_async(lambda: m.metric(f"{name}_count", direction="upstream") == 2)
        assert m.metric(f"{name}_sum", direction="upstream") == pytest.approx(0.003)
        assert m.metric(f"{name}_count", direction="downstream") == 1
        assert m.metric(f"{name}_bucket", direction="downstream", le="0.005") == 1
        await stream.finished()


async def test_finished_counts_the_code_the_client_got(
    tmp_path: Path, stand_in: StandInFactory
) -> None:
    async with native_mesh(tmp_path) as (m, channel):
        for code in (grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED):
            stream = stand_in(channel)
            await stream.open(config())
            await stream.finished(code=code.value[0], audio_seconds=0.25)
        for code_name in ("OK", "DEADLINE_EXCEEDED"):
            assert m.metric("voxmesh_router_streams_total", pool="asr_small", code=code_name) == 1
        assert m.router.recognizer.audio_seconds_total == 0.5
        assert m.router.recognizer.active_streams == 0


async def test_events_out_of_order_end_the_call_with_internal(
    tmp_path: Path, stand_in: StandInFactory
) -> None:
    async with native_mesh(tmp_path) as (m, channel):
        await m.add("a")
        early = stand_in(channel)
        code, details, _ = await ends(early, early.place())
        assert (code, details) == (grpc.StatusCode.INTERNAL, "place before open")
        unplaced = stand_in(channel)
        await unplaced.open(config())
        code, details, _ = await ends(unplaced, unplaced.ended(Ended.OUTCOME_DONE))
        assert (code, details) == (grpc.StatusCode.INTERNAL, "attempt_ended without a placement")
        twice = stand_in(channel)
        await twice.open(config())
        await twice.placement()
        code, details, _ = await ends(twice, twice.place())
        assert code == grpc.StatusCode.INTERNAL
        member = m.member("a")
        await wait_until_async(lambda: member is not None and member.inflight == 0)
        # finished.last_attempt stands for attempt_ended DONE or ERROR, never another.
        unheld = stand_in(channel)
        await unheld.open(config())
        code, details, _ = await ends(unheld, unheld.finished(last_attempt=Ended.OUTCOME_DONE))
        assert (code, details) == (grpc.StatusCode.INTERNAL, "attempt_ended without a placement")
        failed = stand_in(channel)
        assert (await failed.open(config(), place=True)).placement.instance_id == "a"
        code, details, _ = await ends(failed, failed.finished(last_attempt=Ended.OUTCOME_FAILED))
        assert (code, details) == (grpc.StatusCode.INTERNAL, "finished with last_attempt 3")
        await wait_until_async(lambda: member is not None and member.inflight == 0)
        assert m.metric("voxmesh_router_streams_total", pool="unknown", code="INTERNAL") == 1
        assert m.metric("voxmesh_router_streams_total", pool="asr_small", code="INTERNAL") == 4


async def test_one_connect_call_carries_many_streams_and_batches_their_answers(
    tmp_path: Path,
) -> None:
    async with native_mesh(tmp_path, telemetry_interval_s=30.0) as (m, channel):
        await m.add("a", max_streams=8)
        connect = ConnectStandIn(channel)
        streams = [connect.stream() for _ in range(6)]
        routes = await asyncio.gather(
            *(
                s.open(config_request(model="asr_small", stream_id=f"s{i}"), place=True)
                for i, s in enumerate(streams)
            )
        )
        # Each stream has its own answer, and the answers shared batches.
        assert [r.stream_id for r in routes] == [f"s{i}" for i in range(6)]
        assert all(r.placement.instance_id == "a" for r in routes)
        assert sum(connect.answer_batches) == 6 and max(connect.answer_batches) > 1
        assert max(connect.batches) > 1
        # Every message sent so far has been read (each open has its answer), and counted.
        name = "voxmesh_router_control_batch_events"
        assert m.metric(f"{name}_count") == len(connect.batches)
        assert m.metric(f"{name}_sum") == 12  # begin and open per stream
        member = m.member("a")
        assert member is not None and member.inflight == 6
        await asyncio.gather(*(s.finished(last_attempt=Ended.OUTCOME_DONE) for s in streams))
        assert member.inflight == 0
        assert m.metric("voxmesh_router_streams_total", pool="asr_small", code="OK") == 6


async def test_a_carried_stream_ends_with_the_status_its_attach_call_ends_with(
    tmp_path: Path,
) -> None:
    async with native_mesh(tmp_path, max_streams=1, queue_retry_after_s=0.5) as (_, channel):
        connect = ConnectStandIn(channel)
        held = connect.stream()
        await held.open(config())
        carried, attached = connect.stream(), AttachStandIn(channel)
        statuses = [await ends(s, s.open(config())) for s in (carried, attached)]
        assert statuses[0] == statuses[1]
        assert statuses[0][0] == grpc.StatusCode.RESOURCE_EXHAUSTED
        trailers = [dict(await s.call.trailing_metadata()) for s in (carried, attached)]
        details = status_pb2.Status.FromString(trailers[0]["grpc-status-details-bin"])
        retry = error_details_pb2.RetryInfo()
        assert details.details[0].Unpack(retry) and retry.retry_delay.ToMilliseconds() == 500
        assert trailers[0] == {k: v for k, v in trailers[1].items() if k in trailers[0]}
        assert set(trailers[0]) == {"grpc-status-details-bin", RETRY_AFTER_KEY}
        await held.finished()


async def test_connect_drops_what_comes_for_a_stream_that_ended(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with native_mesh(tmp_path) as (m, channel):
        connect = ConnectStandIn(channel)
        done = connect.stream()
        await done.open(config())
        await done.finished()
        # As events sent after an Attach call ended: dropped, the call unharmed.
        latency = dataplane_pb2.AttachRequest(
            latency=dataplane_pb2.LatencyEvent(upstream_seconds=[0.5])
        )
        connect.queue(dataplane_pb2.StreamEvent(stream=done.call.key, event=latency))
        connect.queue(dataplane_pb2.StreamEvent(stream=done.call.key, cancel=True))
        connect.queue(dataplane_pb2.StreamEvent(stream=1000, event=latency))

        other = connect.stream()
        connect.queue(dataplane_pb2.StreamEvent(stream=other.call.key, begin=True))  # again
        assert (await other.open(config())).pool == "asr_small"
        await other.finished()
        assert "Connect began stream 1 twice" in caplog.text
        name = "voxmesh_router_added_latency_seconds_count"
        assert m.metric(name, direction="upstream") == 0
        assert m.metric("voxmesh_router_streams_total", pool="asr_small", code="OK") == 2


async def test_an_unexpected_error_ends_only_its_own_carried_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: Any, event: dataplane_pb2.LatencyEvent) -> None:
        raise RuntimeError("a bug")

    async with native_mesh(tmp_path) as (m, channel):
        connect = ConnectStandIn(channel)
        failing, other = connect.stream(), connect.stream()
        await failing.open(config())
        await other.open(config())
        monkeypatch.setattr("services.router.control._Attachment._latency", broken)
        latency = dataplane_pb2.LatencyEvent(upstream_seconds=[0.001])
        assert await ends(failing, failing.send(latency=latency)) == (
            grpc.StatusCode.UNKNOWN,
            "unexpected error in the router's control plane",
            None,
        )
        await other.finished()
        await wait_until_async(lambda: m.router.recognizer.active_streams == 0)
        assert m.metric("voxmesh_router_streams_total", pool="asr_small", code="OK") == 1
