"""Bad input gets the same status through the router as from an instance."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import pytest

from tests.conditions import wait_until_async
from tests.integration.router_harness import HeldStream, mesh, pcm
from tests.streaming import (
    config_request,
    error_at_the_end,
    run_stream,
    send_requests,
    sending_without_reading,
)
from voxmesh.stt.v1 import stt_pb2, stt_pb2_grpc

pytestmark = pytest.mark.usefixtures("router_data_path")

Request = stt_pb2.StreamingRecognizeRequest


def audio(n: int) -> Request:
    return Request(audio_content=b"\1" * n)


def config(**changes: Any) -> Request:
    request = config_request(model="asr_small")
    for key, value in changes.items():
        setattr(request.streaming_config.config, key, value)
    return request


CASES: dict[str, list[Request]] = {
    "audio before config": [audio(3200), config()],
    "second config": [config(), audio(3200), config()],
    "request carrying nothing": [config(), audio(3200), Request(), audio(3200)],
    "unknown model": [config(model="whisper-huge"), audio(3200)],
    "unsupported encoding": [config(encoding=stt_pb2.AUDIO_ENCODING_UNSPECIFIED), audio(3200)],
    "unknown encoding": [config(encoding=7), audio(3200)],
    "sample rate too low": [config(sample_rate_hertz=4000), audio(3200)],
    "sample rate too high": [config(sample_rate_hertz=96000), audio(3200)],
    "no priority": [config(priority=stt_pb2.PRIORITY_UNSPECIFIED), audio(3200)],
    "bad language": [config(language_code="english!"), audio(3200)],
    "odd-length pcm": [config(), audio(3200), audio(33)],
    "empty stream": [],
    "config only": [config()],
    "too long": [config(), *[audio(32000)] * 3],
    "oversized chunk": [config(), audio((1 << 20) + 2)],
}


async def final_code(target: str, requests: Sequence[Request]) -> grpc.StatusCode:
    """Sends ``requests``, half-closes, reads every response; returns the final code."""
    code, _ = await final_status(target, requests)
    return code


async def final_status(target: str, requests: Sequence[Request]) -> tuple[grpc.StatusCode, str]:
    """Sends ``requests``, half-closes, reads every response; returns the final status."""
    options = [("grpc.max_send_message_length", 21 << 20)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        call = await send_requests(channel, requests, timeout=10)
        code: grpc.StatusCode = await call.code()
        return code, await call.details()


@pytest.mark.parametrize("case", list(CASES))
async def test_same_status_through_the_router(case: str) -> None:
    async with mesh() as m:
        fake = await m.add("a", max_stream_s=2.0)
        direct = await final_code(fake.target, CASES[case])
        routed = await final_code(m.router.target, CASES[case])
        assert direct not in (grpc.StatusCode.OK, grpc.StatusCode.UNKNOWN)
        assert routed == direct, case
        await wait_until_async(lambda: fake.active == 0)


async def test_cancel_and_deadline_reach_the_instance() -> None:
    async with mesh() as m:
        fake = await m.add("a")
        cancelled = await HeldStream(m.channel).open()
        await wait_until_async(cancelled.got_results)
        await cancelled.cancel()
        assert cancelled.call.cancelled()
        await wait_until_async(lambda: fake.active == 0)
        # Long enough that a loaded host gets a result back before it passes.
        late = await HeldStream(m.channel, timeout=2.0).open()
        await wait_until_async(late.got_results)
        assert fake.active == 1
        assert await late.call.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await wait_until_async(lambda: fake.active == 0)
        await wait_until_async(lambda: m.router.recognizer.active_streams == 0)


async def test_a_client_that_sends_no_config_is_timed_out() -> None:
    """The router waited for the first request forever (an instance answers OUT_OF_RANGE
    after its idle timeout): a client that stalled or vanished held a router stream,
    and the drain, for good."""
    async with mesh(idle_timeout_s=0.5) as m:
        await m.add("a")
        call: Any = stt_pb2_grpc.RecognizerServiceStub(m.channel).StreamingRecognize(timeout=30)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call.read()
        assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE
        assert "no streaming_config received for 0.5 s" in (err.value.details() or "")
        await wait_until_async(lambda: m.router.recognizer.active_streams == 0)
        # Counted as every other stream's end, by either data path.
        assert m.metric("voxmesh_router_streams_total", pool="unknown", code="OUT_OF_RANGE") == 1


async def test_a_client_that_stops_reading_results_loses_its_stream() -> None:
    """It keeps its call open and keeps sending, but reads nothing: the router's write of
    a result waits on flow control, the router stops reading its instance, and nothing
    ended the stream: it held its router stream and its count on the instance (and the
    instance's stream) for as long as the client kept its connection. Now a result left
    untaken for idle_timeout_s ends it, and the client, once it reads again, learns why
    after what it missed; other streams go on."""
    async with mesh(idle_timeout_s=1.0) as m:
        fake = await m.add("a", interim_padding=16 << 10)  # a few fill a window
        # A small window that does not grow, as a client's whose reads have stopped.
        options = [("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0)]
        async with grpc.aio.insecure_channel(m.router.target, options=options) as channel:
            call: Any = stt_pb2_grpc.RecognizerServiceStub(channel).StreamingRecognize(timeout=60)
            await call.write(config())

            async with sending_without_reading(call, audio(3200), every_s=0.05):
                await wait_until_async(lambda: fake.active == 1, timeout=5)
                other = await run_stream(m.channel, pcm(1.5), first=config())
                assert other.error is None and len(other.finals) == 2  # served meanwhile
                # The instance's call cancelled, the router's count on it released.
                await wait_until_async(lambda: fake.active == 0, timeout=15)
                member = m.member("a")
                assert member is not None
                await wait_until_async(lambda: member.inflight == 0)
                await wait_until_async(lambda: m.router.recognizer.active_streams == 0)
                ended = await error_at_the_end(call)
        assert ended.code() == grpc.StatusCode.OUT_OF_RANGE, ended
        details = ended.details() or ""
        assert details == "no result was read for 1 s: read the results as they come"
        assert m.metric("voxmesh_router_streams_total", pool="asr_small", code="OUT_OF_RANGE") == 1


async def test_a_rejected_stream_counts_the_audio_it_carried() -> None:
    """The audio of a stream the router ends for a bad chunk is counted as the audio of
    one that finishes (0.1 s of 16 kHz LINEAR16 here, the odd chunk not included)."""
    async with mesh() as m:
        await m.add("a")
        code = await final_code(m.router.target, [config(), audio(3200), audio(33)])
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        await wait_until_async(lambda: m.router.recognizer.active_streams == 0)
        assert m.router.recognizer.audio_seconds_total == pytest.approx(0.1)


async def test_a_chunk_at_the_message_limit_is_refused_for_its_size() -> None:
    """A chunk just under the 20 MiB message limit gets the chunk-size status, not a
    failure of the router's own plumbing (the native data path must not forward it)."""
    async with mesh() as m:
        await m.add("a")
        target = m.router.target
        code, details = await final_status(target, [config(), audio((20 << 20) - 8)])
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"audio chunk of {(20 << 20) - 8} bytes exceeds" in details
        await wait_until_async(lambda: m.router.recognizer.active_streams == 0)


def largest(fill: Callable[[int], Request], most: int = (20 << 20) - 8) -> Request:
    """``fill(n)`` of the largest ``n`` whose request is at most ``most`` bytes."""
    n = most
    while fill(n).ByteSize() > most:
        n -= fill(n).ByteSize() - most
    return fill(n)


async def test_a_clients_largest_messages_end_only_its_own_stream() -> None:
    """The native data path carries every stream's events on one call to the control
    plane: a config the size of the message limit sent back with the route, a first
    request or a refused request carried whole, went over that call's limit and ended
    it, and with it every stream of the router."""

    def padded(n: int) -> Request:  # a valid config: the language code is stripped
        request = config(language_code="en" + " " * n)
        request.streaming_config.stream_id = "s1"
        return request

    big_audio = largest(audio)
    big_config = largest(padded, (20 << 20) - 64)  # what an instance takes of it
    async with mesh() as m:
        await m.add("a")
        other = await HeldStream(m.channel).open()
        await wait_until_async(other.got_results)
        target = m.router.target
        assert await final_code(target, [big_config, audio(3200)]) == grpc.StatusCode.OK
        assert await final_code(target, [big_audio]) == grpc.StatusCode.INVALID_ARGUMENT
        second = [config(), audio(3200), big_config]
        assert await final_code(target, second) == grpc.StatusCode.INVALID_ARGUMENT
        await other.send(b"\0" * 6400)
        await other.finish()


async def test_an_instances_refusal_of_a_chunk_reaches_the_client() -> None:
    """An instance refuses a chunk over its own limit (below the router's) with
    RESOURCE_EXHAUSTED and a retry delay, as it refuses a stream when full: the router
    took it for full, tried every instance until the queue's wait ran out, and told the
    client the pool was at capacity. Only the INSTANCE_FULL marker says full."""
    async with mesh(queue_max_wait_s=10.0) as m:
        for name in ("a", "b"):
            await m.add(name, max_chunk_bytes=4096)
        started = time.monotonic()
        code, details = await final_status(m.router.target, [config(), audio(8000)])
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "audio chunk of 8000 bytes exceeds the maximum chunk size of 4096 bytes" in details
        assert time.monotonic() - started < 5.0  # not the queue's wait
        assert m.metric("voxmesh_router_instance_rejections_total", pool="asr_small") == 0
        assert m.metric("voxmesh_router_rejected_total", pool="asr_small", reason="timeout") == 0
