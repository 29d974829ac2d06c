"""An asyncio client of the stt.v1 API, for a router or an instance alike.

::

    async with RecognizerClient("127.0.0.1:50051") as client:
        transcript = await client.transcribe_pcm(pcm, 16000, StreamOptions(speed=0))
        print(transcript.text)

gRPC errors propagate as :class:`grpc.aio.AioRpcError` with the server's
status (``voxmesh.rpc.status.retry_after_of`` reads a retry hint).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from voxmesh.errors import DeadlineExceeded, Unavailable
from voxmesh.rpc.tls import ClientTls
from voxmesh.stt.v1 import stt_pb2, stt_pb2_grpc

__all__ = ["RecognizerClient", "StreamOptions", "Transcript"]

_MAX_MESSAGE_BYTES = 20 * 1024 * 1024


@dataclass(frozen=True)
class StreamOptions:
    """How to send a stream and what to ask for."""

    model: str = "auto"
    """Pool, model name, or ``auto`` (the router picks by priority/language)."""
    language_code: str = ""
    """ISO 639-1 language; empty for the model's default."""
    priority: int = stt_pb2.PRIORITY_REALTIME
    """``stt_pb2.PRIORITY_REALTIME`` or ``stt_pb2.PRIORITY_BATCH``."""
    interim_results: bool = True
    """Ask for interim results."""
    word_time_offsets: bool = False
    """Ask for per-word timings in final results."""
    stream_id: str = ""
    """Client-chosen stream id (the server makes one when empty)."""
    chunk_ms: int = 100
    """Audio per request."""
    speed: float = 1.0
    """1.0 sends at real time, 2.0 twice as fast, 0 as fast as the server reads."""
    timeout_s: float | None = None
    """Deadline of the whole stream; None for none."""

    def config_request(self, sample_rate: int) -> stt_pb2.StreamingRecognizeRequest:
        """The first request of a LINEAR16 stream with these options."""
        return stt_pb2.StreamingRecognizeRequest(
            streaming_config=stt_pb2.StreamingRecognitionConfig(
                config=self.recognition_config(sample_rate),
                interim_results=self.interim_results,
                stream_id=self.stream_id,
            )
        )

    def recognition_config(self, sample_rate: int) -> stt_pb2.RecognitionConfig:
        """The RecognitionConfig of LINEAR16 audio at ``sample_rate``."""
        return stt_pb2.RecognitionConfig(
            model=self.model,
            language_code=self.language_code,
            encoding=stt_pb2.AUDIO_ENCODING_LINEAR16,
            sample_rate_hertz=sample_rate,
            enable_word_time_offsets=self.word_time_offsets,
            priority=self.priority,  # type: ignore[arg-type]
        )


@dataclass
class Transcript:
    """What a stream returned."""

    finals: list[stt_pb2.StreamingRecognitionResult] = field(default_factory=list)
    """Final results, in order."""
    interim_results: int = 0
    """How many interim results arrived."""
    summary: stt_pb2.StreamSummary | None = None
    """The closing summary."""

    @property
    def text(self) -> str:
        """The final transcripts joined by spaces."""
        return " ".join(
            f.alternatives[0].transcript.strip() for f in self.finals if f.alternatives
        ).strip()


def _channel(target: str, tls: ClientTls | None) -> grpc.aio.Channel:
    options = [
        ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
    ]
    if tls is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, tls.credentials(), options=options)


class RecognizerClient:
    """A connection to a router or an instance."""

    def __init__(
        self,
        target: str,
        *,
        channel: grpc.aio.Channel | None = None,
        tls: ClientTls | None = None,
    ) -> None:
        """``tls`` (None: plaintext) is used when the client makes its own channel."""
        self.target = target
        self._own_channel = channel is None
        self._channel = channel or _channel(target, tls)
        self._recognizer = stt_pb2_grpc.RecognizerServiceStub(self._channel)
        self._telemetry = stt_pb2_grpc.TelemetryServiceStub(self._channel)

    async def __aenter__(self) -> RecognizerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the channel (when this client created it)."""
        if self._own_channel:
            await self._channel.close()

    async def stream_pcm(
        self,
        pcm: bytes,
        sample_rate: int,
        options: StreamOptions = StreamOptions(),
        on_progress: Callable[[float], None] | None = None,
    ) -> AsyncIterator[stt_pb2.StreamingRecognizeResponse]:
        """Streams LINEAR16 ``pcm`` and yields every response as it arrives.

        ``on_progress`` gets the seconds of audio sent after each chunk.
        Leaving the iteration early cancels the stream.
        """
        bytes_per_second = sample_rate * 2
        chunk = max(2, sample_rate * options.chunk_ms // 1000 * 2)
        call: Any = self._recognizer.StreamingRecognize(timeout=options.timeout_s)

        async def write() -> None:
            # The write API, not a request iterator: a write that races the end
            # of the call is skipped and the status comes from the read side.
            start = time.monotonic()
            await call.write(options.config_request(sample_rate))
            for offset in range(0, len(pcm), chunk):
                if options.speed > 0:
                    due = start + offset / bytes_per_second / options.speed
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                await call.write(
                    stt_pb2.StreamingRecognizeRequest(audio_content=pcm[offset : offset + chunk])
                )
                if on_progress is not None:
                    on_progress(min(len(pcm), offset + chunk) / bytes_per_second)
            await call.done_writing()

        writer = asyncio.create_task(write())
        # A writer failing on its own (``on_progress`` raising, say) ends the call: the
        # server would otherwise wait for audio that never comes.
        writer.add_done_callback(lambda task: call.cancel() if _failure(task) else None)
        try:
            while (response := await call.read()) != grpc.aio.EOF:
                yield response
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            task = asyncio.current_task()
            cancelled = task is not None and task.cancelling() > 0  # our caller's cancel
            if not cancelled and writer.done() and (failure := _failure(writer)) is not None:
                raise failure from None
            raise
        finally:
            if not writer.done():
                writer.cancel()
            with contextlib.suppress(
                asyncio.CancelledError, grpc.aio.AioRpcError, asyncio.InvalidStateError
            ):
                await writer
            call.cancel()

    async def transcribe_pcm(
        self,
        pcm: bytes,
        sample_rate: int,
        options: StreamOptions = StreamOptions(),
        on_response: Callable[[stt_pb2.StreamingRecognizeResponse], None] | None = None,
        on_progress: Callable[[float], None] | None = None,
    ) -> Transcript:
        """Streams ``pcm`` and collects the results (``on_response`` sees each one)."""
        transcript = Transcript()
        async for response in self.stream_pcm(pcm, sample_rate, options, on_progress):
            if on_response is not None:
                on_response(response)
            kind = response.WhichOneof("streaming_response")
            if kind == "summary":
                transcript.summary = response.summary
            elif kind == "result" and response.result.is_final:
                transcript.finals.append(response.result)
            elif kind == "result":
                transcript.interim_results += 1
        return transcript

    async def recognize(
        self, pcm: bytes, sample_rate: int, options: StreamOptions = StreamOptions()
    ) -> stt_pb2.RecognizeResponse:
        """Unary recognition of a whole (bounded) LINEAR16 buffer."""
        request = stt_pb2.RecognizeRequest(
            config=options.recognition_config(sample_rate), audio_content=pcm
        )
        response: stt_pb2.RecognizeResponse = await self._recognizer.Recognize(
            request, timeout=options.timeout_s
        )
        return response

    async def watch_telemetry(
        self, interval_s: float = 1.0
    ) -> AsyncGenerator[stt_pb2.TelemetrySnapshot, None]:
        """Yields the server's telemetry snapshots, one per ``interval_s``."""
        request = stt_pb2.WatchTelemetryRequest()
        request.interval.FromNanoseconds(int(interval_s * 1e9))
        call = self._telemetry.WatchTelemetry(request)
        try:
            async for response in call:
                yield response.snapshot
        finally:
            call.cancel()

    async def telemetry(self, timeout_s: float = 5.0) -> stt_pb2.TelemetrySnapshot:
        """The server's current telemetry snapshot.

        Raises :class:`~voxmesh.errors.DeadlineExceeded` when none arrives within
        ``timeout_s`` (a server that does not answer, or is not a voxmesh server).
        """
        try:
            async with asyncio.timeout(timeout_s):
                async with contextlib.aclosing(self.watch_telemetry()) as snapshots:
                    async for snapshot in snapshots:
                        return snapshot
        except TimeoutError:
            raise DeadlineExceeded(
                f"no telemetry from {self.target} within {timeout_s:g} s"
            ) from None
        raise Unavailable(f"{self.target}: the telemetry stream ended without a snapshot")


def _failure(writer: asyncio.Task[None]) -> BaseException | None:
    """The error a stream's writer failed with, unless it only raced the call's end
    (whose status the read side reports)."""
    if writer.cancelled():
        return None
    err = writer.exception()
    if isinstance(err, grpc.aio.AioRpcError | asyncio.InvalidStateError):
        return None
    return err
