"""A fake ASR instance: the real stt.v1 protocol, no model. A test double.

It serves RecognizerService, TelemetryService, health and reflection like an
ASR instance and validates configs and chunks with the instances' own rules
(:mod:`voxmesh.asr.config`), but "recognises" deterministically: the stream
is cut into utterances of ``utterance_ms`` of stream time, and the final
result of utterance ``k`` is ``"u<k> <crc32 of its audio bytes>"``, ending
at the utterance's end. The same audio therefore gives the same finals
whatever the chunking, the instance, or a failover replay in between. With
interim results on, every audio chunk gets one interim result (so a load
generator can time each message), or every ``interim_every``-th chunk (a real
instance sends about one interim per second of speech: 1 in 10 chunks of
100 ms); ``interim_padding`` makes each one that much larger (a test fills a
client's flow-control window with a few). Container audio is not decoded: its
bytes count as 16 kHz 16-bit samples (32 bytes per ms).

Failover metadata is honoured as by the real instances: ``voxmesh-offset-ms``
(the first byte is at that stream time), ``voxmesh-skip-ms`` (discard
that much audio first, offsets from the stream start) and
``voxmesh-context-bin`` (the first ``lead_in_ms`` after the offset or the skip
are context: no results for them; the fake, having no model, skips them); so is
``voxmesh-last-resort: 1`` (taken while draining if the drain has
``last_resort_min_drain_s`` left, reported as ``drain_remaining``).

Controls for tests: :meth:`FakeAsr.set_capacity`, :meth:`FakeAsr.refuse_as_starting`,
:meth:`FakeAsr.fail_streams`
(every active stream fails with the given status at its next chunk),
:meth:`FakeAsr.fail_at_end` (streams fail after their closing final, before or
after their summary),
:meth:`FakeAsr.begin_drain` (NOT_SERVING + DRAINING, active streams go on; with a
timeout, last-resort streams are taken while enough of it is left),
:meth:`FakeAsr.drain` (the same, then stops once they finished),
:meth:`FakeAsr.stop` (like a crash when ``grace`` is 0). As a process::

    python -m tests.doubles.fake_asr --port 0 --instance-id a --max-streams 8

prints ``PORT <n>`` once serving, drains on SIGTERM and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import grpc
from google.protobuf import duration_pb2
from prometheus_client import CollectorRegistry

from voxmesh import errors
from voxmesh.asr.config import audio_chunk, check_model, validate_streaming_config
from voxmesh.discovery import CAPACITY_ON_DEMAND, InstanceInfo
from voxmesh.rpc import status
from voxmesh.rpc.metadata import (
    OFFSET_KEY,
    SKIP_KEY,
    last_resort_asked,
    replay_context_of,
    value_of,
)
from voxmesh.rpc.server import (
    DEFAULT_MAX_MESSAGE_BYTES,
    ServerOptions,
    ServiceServer,
    wait_for_signal,
)
from voxmesh.stt.v1 import stt_pb2, stt_pb2_grpc

__all__ = ["FakeAsr", "FakeAsrOptions", "expected_finals", "serve_main"]

CONTAINER_RATE = 16000
"""Container bytes count as 16-bit samples at this rate (the fake decodes nothing)."""


@dataclass(frozen=True)
class FakeAsrOptions:
    """How a fake instance presents itself and behaves."""

    instance_id: str = "fake-1"
    """Instance id (telemetry, summary, discovery)."""
    pool: str = "asr_small"
    """Pool it serves."""
    model: str = "tiny.en"
    """Model it claims to serve."""
    max_streams: int = 8
    """Admission limit; above it RESOURCE_EXHAUSTED."""
    utterance_ms: int = 1000
    """Stream time per utterance (one final each); a multiple of 10 ms."""
    interim_every: int = 1
    """With interim results on, one interim result per this many audio chunks."""
    interim_padding: int = 0
    """Bytes of filler after each interim transcript (finals have none)."""
    max_chunk_bytes: int = 1 << 20
    """Largest chunk; larger ones fail with RESOURCE_EXHAUSTED."""
    max_stream_s: float = 3600.0
    """Longest stream; longer ones fail with OUT_OF_RANGE."""
    capacity_class: str = CAPACITY_ON_DEMAND
    """Capacity class reported."""
    region: str = "local"
    """Region reported."""
    gpu_type: str = "cpu"
    """GPU type reported."""
    retry_after_s: float = 0.5
    """Retry hint of its RESOURCE_EXHAUSTED answers."""
    last_resort_min_drain_s: float = 30.0
    """Drain time that must be left to take a last-resort stream while draining."""
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    """Largest message its gRPC server takes; gRPC refuses larger ones itself."""
    host: str = "127.0.0.1"
    """Interface to bind."""
    port: int = 0
    """Port to bind (0: any)."""

    def info(self, port: int) -> InstanceInfo:
        """The discovery record of an instance with these options on ``port``."""
        return InstanceInfo(
            instance_id=self.instance_id,
            pool=self.pool,
            model=self.model,
            address=self.host,
            port=port,
            capacity_class=self.capacity_class,
            gpu_type=self.gpu_type,
            region=self.region,
            max_streams=self.max_streams,
        )


def final_text(window: int, crc: int) -> str:
    """The transcript the fake gives utterance ``window`` with audio CRC ``crc``."""
    return f"u{window} {crc:08x}"


def expected_finals(pcm: bytes, sample_rate: int, utterance_ms: int) -> list[str]:
    """The final transcripts the fake gives a whole LINEAR16 stream (no failover)."""
    per_window = utterance_ms * sample_rate // 1000 * 2
    return [
        final_text(k, zlib.crc32(pcm[i : i + per_window]))
        for k, i in enumerate(range(0, len(pcm), per_window))
    ]


def _duration(ms: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromNanoseconds(round(ms * 1e6))
    return value


def _metadata_int(context: grpc.aio.ServicerContext[Any, Any], key: str) -> int:
    return int(value_of(context.invocation_metadata(), key) or 0)


class _Stream:
    """Utterance bookkeeping of one stream on the fake."""

    def __init__(
        self,
        rate: int,
        utterance_ms: int,
        start_ms: int,
        skip_ms: int,
        interim_every: int,
        interim_padding: int = 0,
    ) -> None:
        self.rate = rate
        self.interim_every = interim_every
        self.interim_padding = interim_padding
        self.chunks = 0
        self.window_samples = utterance_ms * rate // 1000
        self.sample = start_ms * rate // 1000
        self.skip_until = skip_ms * rate // 1000
        self.local_index = 0
        self.crc = 0
        self.window_has_audio = False
        self.finals = 0
        self.received_samples = 0

    def ms(self, sample: int) -> float:
        return sample * 1000.0 / self.rate

    def feed(self, data: bytes, interim: bool) -> list[stt_pb2.StreamingRecognizeResponse]:
        out: list[stt_pb2.StreamingRecognizeResponse] = []
        pos = 0
        samples = len(data) // 2
        self.received_samples += samples
        self.chunks += 1
        while pos < samples:
            if self.sample < self.skip_until:
                step = min(samples - pos, self.skip_until - self.sample)
                self.sample += step
                pos += step
                continue
            window = self.sample // self.window_samples
            boundary = (window + 1) * self.window_samples
            step = min(samples - pos, boundary - self.sample)
            if not self.window_has_audio:
                self.window_has_audio = True
                out.append(self._event(stt_pb2.SPEECH_EVENT_TYPE_SPEECH_STARTED, self.sample))
            self.crc = zlib.crc32(data[pos * 2 : (pos + step) * 2], self.crc)
            self.sample += step
            pos += step
            if self.sample == boundary:
                out.extend(self._close_window(window))
        if interim and self.window_has_audio and self.chunks % self.interim_every == 0:
            window = self.sample // self.window_samples
            out.append(self._result(window, False))
        return out

    def finish(self) -> list[stt_pb2.StreamingRecognizeResponse]:
        if not self.window_has_audio:
            return []
        return self._close_window((self.sample - 1) // self.window_samples)

    def _close_window(self, window: int) -> list[stt_pb2.StreamingRecognizeResponse]:
        out = [
            self._event(stt_pb2.SPEECH_EVENT_TYPE_SPEECH_ENDED, self.sample),
            self._result(window, True),
        ]
        self.local_index += 1
        self.finals += 1
        self.crc = 0
        self.window_has_audio = False
        return out

    def _result(self, window: int, final: bool) -> stt_pb2.StreamingRecognizeResponse:
        start = max(window * self.window_samples, self.skip_until)
        result = stt_pb2.StreamingRecognitionResult(
            is_final=final,
            stability=1.0 if final else 0.5,
            start_offset=_duration(self.ms(start)),
            end_offset=_duration(self.ms(self.sample)),
            utterance_index=self.local_index,
            language_code="en",
        )
        text = final_text(window, self.crc)
        if not final and self.interim_padding:
            text += " " + "x" * self.interim_padding
        result.alternatives.add(transcript=text, confidence=0.9)
        return stt_pb2.StreamingRecognizeResponse(result=result)

    def _event(self, kind: int, sample: int) -> stt_pb2.StreamingRecognizeResponse:
        event = stt_pb2.SpeechEvent(type=kind, offset=_duration(self.ms(sample)))  # type: ignore[arg-type]
        return stt_pb2.StreamingRecognizeResponse(speech_event=event)


class FakeAsr(stt_pb2_grpc.RecognizerServiceServicer, stt_pb2_grpc.TelemetryServiceServicer):
    """A fake ASR instance on a real gRPC server (see the module docstring)."""

    def __init__(self, options: FakeAsrOptions) -> None:
        self.options = options
        self._server = ServiceServer(
            ServerOptions(
                host=options.host,
                port=options.port,
                metrics_port=None,
                max_message_bytes=options.max_message_bytes,
            ),
            CollectorRegistry(),
        )
        self._server.add_service(
            lambda s: stt_pb2_grpc.add_RecognizerServiceServicer_to_server(self, s),
            stt_pb2.DESCRIPTOR.services_by_name["RecognizerService"].full_name,
        )
        self._server.add_service(
            lambda s: stt_pb2_grpc.add_TelemetryServiceServicer_to_server(self, s),
            stt_pb2.DESCRIPTOR.services_by_name["TelemetryService"].full_name,
        )
        self.active = 0
        """Streams being served."""
        self.streams_total = 0
        """Streams admitted since start."""
        self.resumes: list[tuple[int, int, int]] = []
        """(offset ms, skip ms, lead-in ms) of every stream that arrived with failover
        metadata."""
        self._fault: grpc.StatusCode | None = None
        self._not_accepting = 0
        self._end_fault: tuple[grpc.StatusCode, bool] | None = None
        self._draining = False
        self._drain_ends: float | None = None
        self.last_resort_streams = 0
        """Streams taken while draining, sent as a last resort."""
        self._idle = asyncio.Event()
        self._idle.set()
        self._started = time.monotonic()

    @property
    def port(self) -> int:
        """The bound gRPC port."""
        return self._server.port

    @property
    def target(self) -> str:
        """``host:port``."""
        return f"{self.options.host}:{self.port}"

    @property
    def info(self) -> InstanceInfo:
        """Its discovery record."""
        return self.options.info(self.port)

    async def start(self) -> None:
        """Binds, starts and reports SERVING."""
        await self._server.start()
        await self._server.set_serving()

    def set_capacity(self, max_streams: int) -> None:
        """Changes the admission limit (reported in the next snapshot)."""
        self.options = replace(self.options, max_streams=max_streams)

    def fail_streams(self, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> None:
        """Every active stream (and new one) fails with ``code`` at its next chunk."""
        self._fault = code

    def refuse_as_starting(self, streams: int = 1) -> None:
        """The next ``streams`` streams are refused as by an instance still starting
        (UNAVAILABLE, not accepting), whatever its telemetry said."""
        self._not_accepting = streams

    def fail_at_end(
        self, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE, *, after_summary: bool = False
    ) -> None:
        """Every stream that reaches its end (the client half-closed) fails with ``code``
        after its closing final: instead of its summary, or just after it with
        ``after_summary`` (an instance dying before its OK status)."""
        self._end_fault = (code, after_summary)

    async def set_health(self, serving: bool) -> None:
        """Flips only the health status (what a Consul gRPC check probes)."""
        if serving:
            await self._server.set_serving()
        else:
            await self._server.set_not_serving()

    async def begin_drain(self, timeout: float | None = None) -> None:
        """NOT_SERVING and DRAINING: new streams get UNAVAILABLE (but last-resort ones
        while ``timeout`` leaves enough), active ones go on."""
        self._draining = True
        self._drain_ends = None if timeout is None else time.monotonic() + timeout
        await self._server.set_not_serving()

    def drain_remaining(self) -> float | None:
        """Seconds left of a drain begun with a timeout; None otherwise."""
        if self._drain_ends is None:
            return None
        return max(0.0, self._drain_ends - time.monotonic())

    async def drain(self, limit_s: float = 30.0) -> None:
        """:meth:`begin_drain`, then waits for the active streams and stops."""
        await self.begin_drain(limit_s)
        try:
            async with asyncio.timeout(limit_s):
                await self._idle.wait()
        except TimeoutError:
            pass
        await self.stop(grace=0)

    async def stop(self, grace: float = 0.0) -> None:
        """Stops the server; with ``grace`` 0 active streams are cut (like a crash)."""
        await self._server.stop(grace)

    async def StreamingRecognize(
        self,
        request_iterator: AsyncIterator[stt_pb2.StreamingRecognizeRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[stt_pb2.StreamingRecognizeResponse]:
        """The fake recognition (see the module docstring)."""
        try:
            if self._not_accepting:
                self._not_accepting -= 1
                raise errors.Draining(f"instance {self.options.instance_id} is still starting")
            last_resort = self._draining
            if last_resort:
                remaining = self.drain_remaining()
                asked = last_resort_asked(context.invocation_metadata())
                if not asked or remaining is None:
                    raise errors.Draining("the instance is draining; retry on another instance")
                if remaining < self.options.last_resort_min_drain_s:
                    raise errors.Draining("the instance's drain ends too soon for a new stream")
            if self.active >= self.options.max_streams:
                raise errors.InstanceFull(
                    f"instance is at capacity ({self.options.max_streams} streams)",
                    retry_after=self.options.retry_after_s,
                )
            self.active += 1
            self.streams_total += 1
            self.last_resort_streams += last_resort
            self._idle.clear()
            try:
                async for response in self._serve(request_iterator, context):
                    yield response
            finally:
                self.active -= 1
                if self.active == 0:
                    self._idle.set()
        except errors.VoxmeshError as err:
            await status.abort(context, err)

    async def _serve(
        self,
        request_iterator: AsyncIterator[stt_pb2.StreamingRecognizeRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[stt_pb2.StreamingRecognizeResponse]:
        opts = self.options
        iterator = aiter(request_iterator)
        first = await anext(iterator, None)
        if first is None:
            raise errors.InvalidArgument("empty stream: no streaming_config was sent")
        if first.WhichOneof("streaming_request") != "streaming_config":
            raise errors.InvalidArgument("the first request must carry streaming_config, not audio")
        config = validate_streaming_config(first.streaming_config)
        check_model(config.model, pool=opts.pool, model=opts.model)
        linear16 = config.encoding == stt_pb2.AUDIO_ENCODING_LINEAR16
        offset_ms = _metadata_int(context, OFFSET_KEY)
        skip_ms = _metadata_int(context, SKIP_KEY)
        replay = replay_context_of(context.invocation_metadata())
        lead_in_ms = replay.lead_in_ms if replay is not None else 0
        if offset_ms or skip_ms or lead_in_ms:
            self.resumes.append((offset_ms, skip_ms, lead_in_ms))
        stream = _Stream(
            config.sample_rate if linear16 else CONTAINER_RATE,
            opts.utterance_ms,
            offset_ms,
            max(skip_ms, offset_ms) + lead_in_ms,
            opts.interim_every,
            opts.interim_padding,
        )
        received = 0
        async for request in iterator:
            if self._fault is not None:
                await context.abort(self._fault, "fake instance failure")
            data = audio_chunk(request, opts.max_chunk_bytes, opts.retry_after_s)
            if linear16 and len(data) % 2:
                raise errors.InvalidArgument(
                    f"LINEAR16 audio chunk has an odd length ({len(data)} bytes)"
                )
            received += len(data)
            for response in stream.feed(data, config.interim_results):
                yield response
            if stream.ms(stream.sample) > opts.max_stream_s * 1000:
                raise errors.OutOfRange(
                    f"the stream is longer than the maximum of {opts.max_stream_s} s"
                )
        if received == 0:
            raise errors.InvalidArgument("empty stream: no audio was sent after the config")
        for response in stream.finish():
            yield response
        end_fault = self._end_fault
        if end_fault is not None and not end_fault[1]:
            await context.abort(end_fault[0], "fake instance failure before the summary")
        yield stt_pb2.StreamingRecognizeResponse(
            summary=stt_pb2.StreamSummary(
                audio_processed=_duration(stream.ms(stream.received_samples)),
                instance_id=opts.instance_id,
                model=opts.model,
                pool=opts.pool,
                stream_id=config.stream_id,
                final_results=stream.finals,
            )
        )
        if end_fault is not None and end_fault[1]:
            await context.abort(end_fault[0], "fake instance failure after the summary")

    async def Recognize(
        self, request: stt_pb2.RecognizeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> stt_pb2.RecognizeResponse:
        """Unary recognition: the finals of the whole audio, as for a stream."""
        first = stt_pb2.StreamingRecognizeRequest(
            streaming_config=stt_pb2.StreamingRecognitionConfig(config=request.config)
        )
        chunks = [first, stt_pb2.StreamingRecognizeRequest(audio_content=request.audio_content)]

        async def requests() -> AsyncIterator[stt_pb2.StreamingRecognizeRequest]:
            for chunk in chunks:
                yield chunk

        response = stt_pb2.RecognizeResponse()
        async for item in self.StreamingRecognize(requests(), context):
            if item.WhichOneof("streaming_response") == "summary":
                response.summary.CopyFrom(item.summary)
            elif item.WhichOneof("streaming_response") == "result" and item.result.is_final:
                response.results.append(item.result)
        return response

    async def WatchTelemetry(
        self, request: stt_pb2.WatchTelemetryRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[stt_pb2.WatchTelemetryResponse]:
        """One snapshot now and one per interval."""
        interval = request.interval.ToTimedelta().total_seconds()
        if request.HasField("interval") and interval < 0.1:
            await status.abort(context, errors.InvalidArgument("interval below 0.1 s"))
        while True:
            yield stt_pb2.WatchTelemetryResponse(snapshot=self.snapshot())
            await asyncio.sleep(interval or 1.0)

    def snapshot(self) -> stt_pb2.TelemetrySnapshot:
        """Its current telemetry."""
        opts = self.options
        snap = stt_pb2.TelemetrySnapshot(
            instance_id=opts.instance_id,
            role=stt_pb2.ROLE_ASR,
            model=opts.model,
            pool=opts.pool,
            capacity_class=opts.capacity_class,
            region=opts.region,
            gpu_type=opts.gpu_type,
            state=stt_pb2.SERVING_STATE_DRAINING
            if self._draining
            else stt_pb2.SERVING_STATE_SERVING,
            active_streams=self.active,
            max_streams=opts.max_streams,
            gpu_available=False,
            gpu_unavailable_reason="fake instance: no GPU",
        )
        snap.host.cpu_count = os.cpu_count() or 1
        snap.time.GetCurrentTime()
        snap.uptime.FromNanoseconds(int((time.monotonic() - self._started) * 1e9))
        remaining = self.drain_remaining()
        if self._draining and remaining is not None:
            snap.drain_remaining.FromMilliseconds(round(remaining * 1000))
        return snap


def _parse(argv: list[str]) -> tuple[FakeAsrOptions, str | None, float]:
    parser = argparse.ArgumentParser(description="fake ASR instance (a test double, no model)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--instance-id", default=f"fake-{os.getpid()}")
    parser.add_argument("--pool", default="asr_small")
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--max-streams", type=int, default=8)
    parser.add_argument("--utterance-ms", type=int, default=1000)
    parser.add_argument("--interim-every", type=int, default=1, help="chunks per interim result")
    parser.add_argument("--capacity-class", default=CAPACITY_ON_DEMAND)
    parser.add_argument("--region", default="local")
    parser.add_argument("--gpu-type", default="cpu")
    parser.add_argument("--registry-dir", default=None, help="register in this file registry")
    parser.add_argument("--drain-timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    options = FakeAsrOptions(
        instance_id=args.instance_id,
        pool=args.pool,
        model=args.model,
        max_streams=args.max_streams,
        utterance_ms=args.utterance_ms,
        interim_every=args.interim_every,
        capacity_class=args.capacity_class,
        region=args.region,
        gpu_type=args.gpu_type,
        host=args.host,
        port=args.port,
    )
    return options, args.registry_dir, args.drain_timeout


async def serve_main(argv: list[str]) -> int:
    """Runs a fake instance until SIGTERM/SIGINT, then drains; returns the exit code."""
    options, registry_dir, drain_timeout = _parse(argv)
    fake = FakeAsr(options)
    await fake.start()
    registrar = None
    if registry_dir is not None:
        from voxmesh.discovery.file import FileRegistrar

        registrar = FileRegistrar(registry_dir)
        await registrar.register(fake.info)
    print(f"PORT {fake.port}", flush=True)
    await wait_for_signal()
    if registrar is not None:
        await registrar.set_draining()
    await fake.drain(drain_timeout)
    if registrar is not None:
        await registrar.deregister()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(serve_main(sys.argv[1:])))
