"""Driving a StreamingRecognize call from tests and benchmarks."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from voxmesh.stt.v1 import stt_pb2, stt_pb2_grpc

__all__ = ["StreamRun", "config_request", "run_stream", "send_requests"]


def config_request(
    rate: int = 16000,
    *,
    encoding: stt_pb2.AudioEncoding.ValueType = stt_pb2.AUDIO_ENCODING_LINEAR16,
    model: str = "",
    interim: bool = True,
    words: bool = False,
    priority: stt_pb2.Priority.ValueType = stt_pb2.PRIORITY_REALTIME,
    language: str = "",
    stream_id: str = "",
) -> stt_pb2.StreamingRecognizeRequest:
    """The first message of a stream."""
    return stt_pb2.StreamingRecognizeRequest(
        streaming_config=stt_pb2.StreamingRecognitionConfig(
            config=stt_pb2.RecognitionConfig(
                model=model,
                language_code=language,
                encoding=encoding,
                sample_rate_hertz=rate,
                enable_word_time_offsets=words,
                priority=priority,
            ),
            interim_results=interim,
            stream_id=stream_id,
        )
    )


def recognize_request(
    audio: bytes,
    *,
    model: str = "asr_small",
    priority: stt_pb2.Priority.ValueType = stt_pb2.PRIORITY_REALTIME,
    rate: int = 16000,
) -> stt_pb2.RecognizeRequest:
    """A unary request for ``audio`` (LINEAR16 at ``rate``)."""
    config = config_request(rate, model=model, priority=priority).streaming_config.config
    return stt_pb2.RecognizeRequest(config=config, audio_content=audio)


@dataclass
class StreamRun:
    """What one stream received, with arrival times (seconds since its start)."""

    responses: list[tuple[float, stt_pb2.StreamingRecognizeResponse]] = field(default_factory=list)
    sent_until: list[tuple[float, float]] = field(default_factory=list)
    """(wall time, audio seconds sent so far) after each chunk."""
    error: grpc.aio.AioRpcError | None = None

    @property
    def finals(self) -> list[stt_pb2.StreamingRecognitionResult]:
        """Final results in order."""
        return [
            r.result
            for _, r in self.responses
            if r.WhichOneof("streaming_response") == "result" and r.result.is_final
        ]

    @property
    def interims(self) -> list[stt_pb2.StreamingRecognitionResult]:
        """Interim results in order."""
        return [
            r.result
            for _, r in self.responses
            if r.WhichOneof("streaming_response") == "result" and not r.result.is_final
        ]

    @property
    def text(self) -> str:
        """The final transcript of the stream."""
        return " ".join(f.alternatives[0].transcript for f in self.finals if f.alternatives)

    @property
    def summary(self) -> stt_pb2.StreamSummary | None:
        """The closing summary, if the stream ended with OK."""
        for _, r in self.responses:
            if r.WhichOneof("streaming_response") == "summary":
                return r.summary
        return None

    def events(self, kind: int) -> list[tuple[float, stt_pb2.SpeechEvent]]:
        """Speech events of one type with their arrival times."""
        return [
            (t, r.speech_event)
            for t, r in self.responses
            if r.WhichOneof("streaming_response") == "speech_event" and r.speech_event.type == kind
        ]


async def run_stream(
    channel: grpc.aio.Channel,
    pcm: bytes,
    rate: int = 16000,
    *,
    chunk_ms: int = 100,
    speed: float = 0.0,
    first: stt_pb2.StreamingRecognizeRequest | None = None,
    extra: Sequence[stt_pb2.StreamingRecognizeRequest] = (),
    metadata: Sequence[tuple[str, str | bytes]] = (),
    timeout: float | None = 120.0,
    run: StreamRun | None = None,
) -> StreamRun:
    """Streams ``pcm`` in ``chunk_ms`` chunks; ``speed`` 1.0 is real time, 0 as fast as possible.

    gRPC errors are captured in ``StreamRun.error`` rather than raised. ``run``, when
    given, is filled in as responses arrive, so a caller can wait on its progress.
    """
    run = run if run is not None else StreamRun()
    start = time.monotonic()
    chunk = int(rate * chunk_ms / 1000) * 2

    async def write_all(call: grpc.aio.StreamStreamCall[Any, Any]) -> None:
        # The write API rather than a request iterator: grpcio's aio client can
        # replace the server's status with INTERNAL when an iterator write races
        # the server ending the call (grpc/grpc#36066); here a write after the
        # end is simply skipped and the status comes from the read side.
        requests = [first if first is not None else config_request(rate)]
        for request in requests:
            await call.write(request)
        for i in range(0, len(pcm), chunk):
            if call.done():
                return
            if speed > 0:
                # A live source has a chunk only once its last sample was captured.
                due = start + (min(len(pcm), i + chunk) / 2 / rate) / speed
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await call.write(stt_pb2.StreamingRecognizeRequest(audio_content=pcm[i : i + chunk]))
            run.sent_until.append((time.monotonic() - start, min(len(pcm), i + chunk) / 2 / rate))
        for req in extra:
            await call.write(req)
        await call.done_writing()

    stub = stt_pb2_grpc.RecognizerServiceStub(channel)
    call = stub.StreamingRecognize(metadata=tuple(metadata), timeout=timeout)
    writer = asyncio.create_task(write_all(call))
    try:
        while (response := await call.read()) != grpc.aio.EOF:
            assert isinstance(response, stt_pb2.StreamingRecognizeResponse)
            run.responses.append((time.monotonic() - start, response))
    except grpc.aio.AioRpcError as err:
        run.error = err
    finally:
        with contextlib.suppress(
            grpc.aio.AioRpcError, asyncio.InvalidStateError, asyncio.CancelledError
        ):
            await writer
    if run.error is None and await call.code() != grpc.StatusCode.OK:
        run.error = grpc.aio.AioRpcError(
            await call.code(),
            await call.initial_metadata(),
            await call.trailing_metadata(),
            await call.details(),
        )
    return run


async def send_requests(
    channel: grpc.aio.Channel,
    requests: Sequence[stt_pb2.StreamingRecognizeRequest],
    timeout: float,
) -> Any:
    """Sends ``requests`` on a new StreamingRecognize call, half-closes and reads every
    response; returns the ended call, for its code, details and trailing metadata. The
    writes go beside the reads: a write the server refused may hang."""
    call: Any = stt_pb2_grpc.RecognizerServiceStub(channel).StreamingRecognize(timeout=timeout)

    async def write() -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            for request in requests:
                await call.write(request)
            await call.done_writing()

    writer = asyncio.create_task(write())
    with contextlib.suppress(grpc.aio.AioRpcError):
        while await call.read() != grpc.aio.EOF:
            pass
    await writer
    return call


@contextlib.asynccontextmanager
async def sending_without_reading(
    call: Any, request: stt_pb2.StreamingRecognizeRequest, every_s: float
) -> AsyncIterator[None]:
    """For the block, writes ``request`` on ``call`` every ``every_s`` s and reads
    nothing: a client that stopped reading its results, not sending (until flow
    control stops its writes too). The call is cancelled at the end."""

    async def send() -> None:
        while True:
            await call.write(request)
            await asyncio.sleep(every_s)

    sender = asyncio.create_task(send())
    try:
        yield
    finally:
        sender.cancel()
        call.cancel()
        await asyncio.gather(sender, return_exceptions=True)


async def error_at_the_end(call: Any, timeout_s: float = 10.0) -> grpc.aio.AioRpcError:
    """Reads what is left of ``call``; the error it ends with (an AssertionError if it
    ends OK or is still open after ``timeout_s``)."""
    try:
        async with asyncio.timeout(timeout_s):
            async for _ in call:
                pass
    except grpc.aio.AioRpcError as err:
        return err
    raise AssertionError("the call ended OK")
