"""Bad input gets a precise status and message; the instance stays healthy and
other streams carry on."""

from __future__ import annotations

import asyncio
import contextlib
import struct
import urllib.request
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.asr_server import AsrServerThread
from tests.conditions import wait_until_async
from tests.speech import silence_pcm, utterance_recording, wer
from tests.streaming import config_request, run_stream
from voxmesh.rpc.metadata import CONTEXT_KEY, OFFSET_KEY
from voxmesh.rpc.status import instance_full, retry_after_of
from voxmesh.stt.v1 import stt_pb2, stt_pb2_grpc

pytestmark = pytest.mark.model

Req = stt_pb2.StreamingRecognizeRequest
INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def server() -> Iterator[AsrServerThread]:
    with AsrServerThread(max_streams=16, max_stream_seconds=20.0, max_chunk_bytes=64 * 1024) as srv:
        yield srv


def _audio(n: int = 3200) -> Req:
    return Req(audio_content=bytes(n))


def _cfg(**kw: object) -> Req:
    return config_request(**kw)  # type: ignore[arg-type]


def _wav(rate: int, pcm: bytes) -> bytes:
    """16-bit mono PCM behind a WAV header that declares ``rate`` Hz, whatever it is."""
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, rate, 2 * rate, 2, 16)
    body = b"WAVEfmt " + fmt + b"data" + struct.pack("<I", len(pcm)) + pcm
    return b"RIFF" + struct.pack("<I", len(body)) + body


CASES: dict[str, tuple[list[Req], grpc.StatusCode, str]] = {
    "audio before config": ([_audio(), _cfg()], INVALID, "first request must carry"),
    "second config": ([_cfg(), _audio(), _cfg()], INVALID, "exactly one streaming_config"),
    "unknown model": (
        [_cfg(model="whisper-huge-v9"), _audio()],
        grpc.StatusCode.NOT_FOUND,
        "not served here",
    ),
    "unsupported encoding": (
        [
            Req(
                streaming_config=stt_pb2.StreamingRecognitionConfig(
                    config=stt_pb2.RecognitionConfig(
                        encoding=7,  # type: ignore[arg-type]  # an unknown value on purpose
                        sample_rate_hertz=16000,
                        priority=stt_pb2.PRIORITY_REALTIME,
                    )
                )
            )
        ],
        INVALID,
        "encoding 7 is not supported",
    ),
    "unspecified encoding": (
        [
            Req(
                streaming_config=stt_pb2.StreamingRecognitionConfig(
                    config=stt_pb2.RecognitionConfig(
                        sample_rate_hertz=16000, priority=stt_pb2.PRIORITY_REALTIME
                    )
                )
            )
        ],
        INVALID,
        "encoding is required",
    ),
    "unspecified priority": (
        [
            Req(
                streaming_config=stt_pb2.StreamingRecognitionConfig(
                    config=stt_pb2.RecognitionConfig(
                        encoding=stt_pb2.AUDIO_ENCODING_LINEAR16, sample_rate_hertz=16000
                    )
                )
            )
        ],
        INVALID,
        "priority is required",
    ),
    # "$" in the pattern took a trailing newline: it went to the summary and the logs.
    "stream id with a newline": ([_cfg(stream_id="abc\n"), _audio()], INVALID, "stream_id"),
    "sample rate too low": ([_cfg(rate=4000), _audio()], INVALID, "sample_rate_hertz 4000"),
    "sample rate too high": ([_cfg(rate=96000), _audio()], INVALID, "sample_rate_hertz 96000"),
    "language the model lacks": ([_cfg(language="de"), _audio()], INVALID, "'de' is not supported"),
    "odd-length PCM": ([_cfg(), _audio(3201)], INVALID, "odd length"),
    "empty stream": ([], INVALID, "empty stream"),
    "config only": ([_cfg()], INVALID, "no audio"),
    "oversized chunk": (
        [_cfg(), _audio(64 * 1024 + 2)],
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "maximum chunk size",
    ),
    "malformed compressed audio": (
        [
            _cfg(rate=0, encoding=stt_pb2.AUDIO_ENCODING_CONTAINER),
            Req(audio_content=b"\x00junk" * 500),
        ],
        INVALID,
        "malformed compressed audio",
    ),
    # Resampled from 1 Hz, 2 KB were 16 million samples (a 1 MiB chunk, 33 GB).
    "compressed audio at 1 Hz": (
        [
            _cfg(rate=0, encoding=stt_pb2.AUDIO_ENCODING_CONTAINER),
            Req(audio_content=_wav(1, bytes(2000))),
        ],
        INVALID,
        "sample rate of 1 Hz, out of range",
    ),
}


async def _call(
    channel: grpc.aio.Channel,
    requests: list[Req],
    metadata: tuple[tuple[str, str | bytes], ...] = (),
) -> grpc.aio.AioRpcError:
    async def gen() -> AsyncIterator[Req]:
        for r in requests:
            yield r

    stub = stt_pb2_grpc.RecognizerServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in stub.StreamingRecognize(gen(), timeout=30, metadata=metadata or None):
            pass
    return info.value


async def test_every_bad_input_gets_its_status_while_a_good_stream_carries_on(
    server: AsrServerThread,
) -> None:
    rec = utterance_recording()
    async with grpc.aio.insecure_channel(server.target) as channel:
        good = asyncio.create_task(run_stream(channel, rec.pcm, rec.rate, speed=2.0))
        errors = await asyncio.gather(*(_call(channel, reqs) for reqs, _, _ in CASES.values()))
        for (name, (_, code, message)), err in zip(CASES.items(), errors, strict=True):
            assert err.code() == code, f"{name}: {err.code()} {err.details()}"
            assert message in (err.details() or ""), f"{name}: {err.details()}"
            # A router would try the stream on another instance (the oversized chunk
            # has a retry delay too, and every instance would refuse it alike).
            assert not instance_full(err), name
        result = await good
        assert result.error is None, result.error
        assert wer(rec.text, result.text) <= 0.25
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING


async def test_stream_longer_than_the_maximum_is_out_of_range(server: AsrServerThread) -> None:
    async with grpc.aio.insecure_channel(server.target) as channel:
        run = await run_stream(channel, silence_pcm(21.0), chunk_ms=500)
    assert run.error is not None and run.error.code() == grpc.StatusCode.OUT_OF_RANGE
    assert "maximum stream duration of 20 s" in (run.error.details() or "")


async def _active(channel: grpc.aio.Channel) -> int:
    stub = stt_pb2_grpc.TelemetryServiceStub(channel)
    call = stub.WatchTelemetry(stt_pb2.WatchTelemetryRequest())
    async for response in call:
        call.cancel()
        return response.snapshot.active_streams
    raise AssertionError("no snapshot")


Call = grpc.aio.StreamStreamCall[Req, stt_pb2.StreamingRecognizeResponse]


async def _hold_open(stub: stt_pb2_grpc.RecognizerServiceAsyncStub, timeout: float | None) -> Call:
    """A stream that keeps sending silence (write API, so the status is the call's own)."""
    call: Call = stub.StreamingRecognize(timeout=timeout)
    await call.write(config_request())
    return call


async def _wait_idle(channel: grpc.aio.Channel) -> None:
    deadline = asyncio.get_running_loop().time() + 10
    while (active := await _active(channel)) != 0:
        assert asyncio.get_running_loop().time() < deadline, f"{active} streams still active"


def _errors(srv: AsrServerThread, code: str) -> float:
    """``voxmesh_asr_errors_total{code}`` of the instance."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{srv.ready['metrics_port']}/metrics").read()
    prefix = f'voxmesh_asr_errors_total{{code="{code}"}} '
    lines = [line for line in body.decode().splitlines() if line.startswith(prefix)]
    return float(lines[0][len(prefix) :]) if lines else 0.0


async def test_deadline_exceeded_releases_the_stream(server: AsrServerThread) -> None:
    """...and is counted (it was counted as INTERNAL): as DEADLINE_EXCEEDED, or as
    CANCELLED where the client's timer fired well before the server's (the client's
    reset reaches the server as a cancel; on a loaded host the server may have started
    the call late, and so its own deadline too)."""

    def counted_now() -> float:
        return _errors(server, "DEADLINE_EXCEEDED") + _errors(server, "CANCELLED")

    counted = counted_now()
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = stt_pb2_grpc.RecognizerServiceStub(channel)
        call = await _hold_open(stub, timeout=4.0)
        await call.write(Req(audio_content=bytes(3200)))
        # Counted once the handler runs: a loaded host could reach the deadline first.
        await wait_until_async(lambda: _holding(server), timeout=3.0)
        while not call.done():
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                await call.write(Req(audio_content=bytes(3200)))
            await asyncio.sleep(0.05)  # pace the audio like a live source
        assert await call.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await _wait_idle(channel)
    await wait_until_async(lambda: counted_now() > counted)


async def test_client_cancel_releases_the_stream(server: AsrServerThread) -> None:
    counted = _errors(server, "CANCELLED")
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = stt_pb2_grpc.RecognizerServiceStub(channel)
        call = await _hold_open(stub, timeout=30)
        for _ in range(5):
            await call.write(Req(audio_content=bytes(3200)))
        await wait_until_async(lambda: _holding(server), timeout=10)
        call.cancel()
        assert await call.code() == grpc.StatusCode.CANCELLED
        await _wait_idle(channel)
    await wait_until_async(lambda: _errors(server, "CANCELLED") > counted)


async def test_a_silent_client_is_timed_out_and_frees_its_slot() -> None:
    """A stream that sent nothing (or stopped sending) held its admission slot, and
    held up a drain, until its deadline: without one, forever."""
    with AsrServerThread(max_streams=2, idle_timeout=1.0) as srv:
        async with grpc.aio.insecure_channel(srv.target) as channel:
            stub = stt_pb2_grpc.RecognizerServiceStub(channel)
            mute: Call = stub.StreamingRecognize(timeout=30)
            stalled = await _hold_open(stub, timeout=30)
            await stalled.write(Req(audio_content=bytes(3200)))
            assert await mute.code() == grpc.StatusCode.OUT_OF_RANGE
            assert "no streaming_config received for 1 s" in (await mute.details() or "")
            assert await stalled.code() == grpc.StatusCode.OUT_OF_RANGE
            assert "no audio received for 1 s" in (await stalled.details() or "")
            await _wait_idle(channel)


async def test_a_recognize_over_the_size_limit_is_invalid_argument(
    server: AsrServerThread,
) -> None:
    """Up to the router's message limit (20 MiB), the size check must be the handler's:
    gRPC's own refusal above the instance's limit (17 MiB) was a RESOURCE_EXHAUSTED
    that a router took for a full instance, and retried for as long as it had."""
    request = stt_pb2.RecognizeRequest(
        config=config_request().streaming_config.config, audio_content=bytes(18 << 20)
    )
    async with grpc.aio.insecure_channel(server.target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stt_pb2_grpc.RecognizerServiceStub(channel).Recognize(request, timeout=30)
    assert info.value.code() == INVALID, info.value.details()
    assert "exceeds the Recognize limit" in (info.value.details() or "")


@pytest.mark.parametrize("value", ["-1", str(10**23)])
async def test_an_offset_out_of_range_is_invalid_argument(
    server: AsrServerThread, value: str
) -> None:
    """10**23 ms overflowed the offsets' Duration: the stream failed as UNKNOWN."""
    async with grpc.aio.insecure_channel(server.target) as channel:
        err = await _call(channel, [_cfg(), _audio()], ((OFFSET_KEY, value),))
    assert err.code() == INVALID, err.details()
    assert "out of range" in (err.details() or "")


async def test_admission_limit_answers_resource_exhausted_with_retry_hint() -> None:
    with AsrServerThread(max_streams=1, retry_after=3.0) as srv:
        async with grpc.aio.insecure_channel(srv.target) as channel:
            first = asyncio.create_task(run_stream(channel, silence_pcm(3.0), speed=1.0))
            await wait_until_async(lambda: first.done() or _holding(srv), timeout=10)
            second = await run_stream(channel, silence_pcm(0.5))
            assert second.error is not None
            assert second.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "limit of 1 concurrent streams" in (second.error.details() or "")
            assert retry_after_of(second.error) == 3.0
            assert instance_full(second.error)  # a router tries another instance
            assert (await first).error is None


def _holding(srv: AsrServerThread) -> bool:
    body = urllib.request.urlopen(f"http://127.0.0.1:{srv.ready['metrics_port']}/metrics").read()
    return b"voxmesh_asr_streams_active 0.0" not in body


async def test_metrics_and_telemetry_are_exposed(server: AsrServerThread) -> None:
    async with grpc.aio.insecure_channel(server.target) as channel:
        await run_stream(channel, silence_pcm(1.0))
        stub = stt_pb2_grpc.TelemetryServiceStub(channel)
        call = stub.WatchTelemetry(stt_pb2.WatchTelemetryRequest())
        snapshot = None
        async for response in call:
            snapshot = response.snapshot
            break
        call.cancel()
        bad = await _telemetry_error(stub)
    assert snapshot is not None
    assert snapshot.role == stt_pb2.ROLE_ASR and snapshot.pool == "asr_small"
    assert snapshot.state == stt_pb2.SERVING_STATE_SERVING and snapshot.max_streams == 16
    assert not snapshot.gpu_available and snapshot.gpu_unavailable_reason
    assert not snapshot.gpus, "no GPU figures are invented without a GPU"
    assert snapshot.host.memory_total_bytes > 0 and snapshot.host.process_resident_bytes > 0
    assert snapshot.audio_seconds_total >= 1.0 - 1e-9  # a sum of 0.1 s chunks
    assert bad == grpc.StatusCode.INVALID_ARGUMENT
    body = (
        urllib.request.urlopen(f"http://127.0.0.1:{server.ready['metrics_port']}/metrics")
        .read()
        .decode()
    )
    for name in (
        "voxmesh_asr_streams_active",
        "voxmesh_asr_decode_pending",
        "voxmesh_asr_batch_size_bucket",
        "voxmesh_asr_decode_duration_seconds_bucket",
        "voxmesh_asr_finals_narrowed_total",
        "voxmesh_asr_real_time_factor",
        "voxmesh_asr_audio_seconds_total",
        'voxmesh_asr_errors_total{code="INVALID_ARGUMENT"}',
    ):
        assert name in body, name


async def _telemetry_error(stub: stt_pb2_grpc.TelemetryServiceAsyncStub) -> grpc.StatusCode:
    from google.protobuf import duration_pb2

    call = stub.WatchTelemetry(
        stt_pb2.WatchTelemetryRequest(interval=duration_pb2.Duration(nanos=10_000_000))
    )
    try:
        async for _ in call:
            pass
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


REPLAY_CASES: dict[str, tuple[tuple[tuple[str, str | bytes], ...], str]] = {
    "not JSON": (((CONTEXT_KEY, b"lead-in"),), "is not JSON"),
    "negative lead-in": (
        ((CONTEXT_KEY, b'{"lead_in_ms": -5, "finals": []}'),),
        "needs lead_in_ms (an integer from 0 to",
    ),
    # JSON integers of hundreds of digits: an OverflowError in the session made these
    # UNAVAILABLE, which a router would fail over to the next instance, to fail there too.
    "lead-in past any stream time": (
        ((CONTEXT_KEY, b'{"lead_in_ms": 1' + b"0" * 400 + b', "finals": []}'),),
        "needs lead_in_ms (an integer from 0 to",
    ),
    "final past any stream time": (
        ((CONTEXT_KEY, b'{"lead_in_ms": 900, "finals": [[1, 1' + b"0" * 400 + b', "x"]]}'),),
        "with times up to",
    ),
    "final ending before it starts": (
        ((CONTEXT_KEY, b'{"lead_in_ms": 900, "finals": [[800, 100, "x"]]}'),),
        "a final is [start_ms, end_ms >= start_ms, text]",
    ),
    "prompt not text": (
        ((CONTEXT_KEY, b'{"lead_in_ms": 900, "finals": [], "prompt": 7}'),),
        "prompt is text",
    ),
    "longer than a window": (
        ((CONTEXT_KEY, b'{"lead_in_ms": 31000, "finals": []}'),),
        "longer than Whisper's window",
    ),
}


async def test_a_malformed_replay_lead_in_is_invalid_argument(server: AsrServerThread) -> None:
    """What a router sends with a failed-over stream is checked like the rest."""
    async with grpc.aio.insecure_channel(server.target) as channel:
        errors = await asyncio.gather(
            *(_call(channel, [_cfg(), _audio()], md) for md, _ in REPLAY_CASES.values())
        )
        for (name, (_, message)), err in zip(REPLAY_CASES.items(), errors, strict=True):
            assert err.code() == INVALID, f"{name}: {err.code()} {err.details()}"
            assert message in (err.details() or ""), f"{name}: {err.details()}"
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
