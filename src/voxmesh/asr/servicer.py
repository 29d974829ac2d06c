"""The stt.v1 servicers of an ASR instance: RecognizerService and TelemetryService.

A stream is served by three parts: this handler (config, admission, results
out), a reader task (audio in, validated chunk by chunk and decoded) and the
:class:`~voxmesh.asr.session.StreamSession` worker (VAD and decodes). Any
error ends all three and is mapped to its status by :mod:`voxmesh.rpc.status`;
the slot, the session and the audio decoder are released in ``finally``
whatever happened (error, client cancel, deadline).

Failover support for the router (request metadata, see protos/README.md):
``voxmesh-offset-ms`` shifts every offset (the audio starts at that stream
time); ``voxmesh-skip-ms`` discards that much decoded audio first (used when
compressed audio must be replayed from its start); ``voxmesh-context-bin``
makes the start of the audio (after any skip) a lead-in heard as context only.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
import numpy as np

from voxmesh import errors, tasks
from voxmesh.asr.audio import MODEL_SAMPLE_RATE, AudioDecoder, ContainerDecoder, Samples
from voxmesh.asr.config import (
    ValidatedConfig,
    audio_chunk,
    check_model,
    idle_wait,
    make_decoder,
    unread_error,
    validate_recognition_config,
    validate_streaming_config,
)
from voxmesh.asr.instance import AsrInstance
from voxmesh.asr.results import duration, final_result, to_response
from voxmesh.asr.session import Final, Interim, SessionEvent, StreamParams, StreamSession
from voxmesh.rpc.metadata import (
    MAX_STREAM_MS,
    OFFSET_KEY,
    SKIP_KEY,
    last_resort_asked,
    replay_context_of,
    value_of,
)
from voxmesh.rpc.status import abort, abort_behind_unread, code_of
from voxmesh.stt.v1 import stt_pb2, stt_pb2_grpc

__all__ = ["RecognizerServicer", "TelemetryServicer"]

logger = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]


def _metadata_ms(context: Context, key: str) -> float:
    text = value_of(context.invocation_metadata(), key)
    if text is None:
        return 0.0
    try:
        value = int(text)
    except ValueError:
        raise errors.InvalidArgument(f"metadata {key}={text!r} is not an integer") from None
    if not 0 <= value <= MAX_STREAM_MS:
        raise errors.InvalidArgument(
            f"metadata {key}={value} is out of range (0 to {MAX_STREAM_MS} ms)"
        )
    return value / 1000.0


DEADLINE_SLACK_S = 0.25
"""A cancel this close to the call's deadline is the deadline: the client's timer may
fire first, and its reset then reaches the server as a cancel just before the server's
own timer would have."""


def _cancelled_code(context: Context) -> grpc.StatusCode:
    """Why a call was cancelled under us: its deadline, or the client."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= DEADLINE_SLACK_S:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


def _expired(context: Context) -> bool:
    """Whether the call's deadline has passed."""
    remaining = context.time_remaining()
    return remaining is not None and remaining <= 0


def _unexpected(err: Exception, what: str) -> errors.Unavailable:
    """An error nothing expected (the model failed: CUDA out of memory...), logged with
    its traceback; the client gets UNAVAILABLE, which a router fails over, and not the
    internals of the message."""
    logger.error("%s failed: %r", what, err, exc_info=err)
    return errors.Unavailable(
        f"the instance failed while serving the {what} ({type(err).__name__}); "
        "another instance may serve it"
    )


class RecognizerServicer(stt_pb2_grpc.RecognizerServiceServicer):
    """Streaming and unary recognition on one instance."""

    def __init__(
        self,
        instance: AsrInstance,
        *,
        max_chunk_bytes: int,
        max_unary_bytes: int,
        max_unary_seconds: float,
        idle_timeout: float = 30.0,
    ) -> None:
        self._instance = instance
        self._idle_timeout = idle_timeout
        self._max_chunk = max_chunk_bytes
        self._max_unary_bytes = max_unary_bytes
        self._max_unary_seconds = max_unary_seconds

    def _params(self, config: ValidatedConfig) -> StreamParams:
        ident = self._instance.identity
        check_model(config.model, pool=ident.pool, model=ident.model)
        if config.language is not None and not self._instance.decoder.supports_language(
            config.language
        ):
            raise errors.InvalidArgument(
                f"config.language_code {config.language!r} is not supported by model "
                f"{ident.model!r}"
            )
        return StreamParams(
            stream_id=config.stream_id,
            language=config.language,
            interim_results=config.interim_results,
            word_offsets=config.word_offsets,
            realtime=config.realtime,
        )

    def _summary(self, stream_id: str, session: StreamSession) -> stt_pb2.StreamSummary:
        ident = self._instance.identity
        return stt_pb2.StreamSummary(
            audio_processed=duration(session.received_seconds),
            instance_id=ident.instance_id,
            model=ident.model,
            pool=ident.pool,
            stream_id=stream_id,
            final_results=session.finals,
        )

    def _failed(self, code: grpc.StatusCode) -> None:
        self._instance.metrics.errors.labels(code.name).inc()

    @contextlib.asynccontextmanager
    async def _answering(
        self, context: Context, what: str, watch: _UnreadWatch | None = None
    ) -> AsyncIterator[None]:
        """Ends the call with the status of what failed inside the block, and counts it:
        a voxmesh error's own status; a cancel as CANCELLED or DEADLINE_EXCEEDED (the
        call is gone: nothing to send), or OUT_OF_RANGE when ``watch`` ended a stream
        whose client stopped reading; anything else as UNAVAILABLE, logged."""
        try:
            yield
        except errors.VoxmeshError as err:
            self._failed(code_of(err))
            await abort(context, err)
        except (asyncio.CancelledError, GeneratorExit):
            # GeneratorExit: gRPC stopped taking responses (it could not send one: the
            # call ended) and closed the stream's generator.
            unread = watch is not None and watch.ended
            self._failed(grpc.StatusCode.OUT_OF_RANGE if unread else _cancelled_code(context))
            raise
        except Exception as err:
            failure = _unexpected(err, what)
            self._failed(code_of(failure))
            await abort(context, failure)

    async def _next(
        self, iterator: AsyncIterator[stt_pb2.StreamingRecognizeRequest], waiting_for: str
    ) -> stt_pb2.StreamingRecognizeRequest | None:
        """The client's next message (None at its half-close), within the idle timeout."""
        return await idle_wait(anext(iterator, None), self._idle_timeout, waiting_for)

    async def StreamingRecognize(
        self,
        request_iterator: AsyncIterator[stt_pb2.StreamingRecognizeRequest],
        context: Context,
    ) -> AsyncIterator[stt_pb2.StreamingRecognizeResponse]:
        watch = _UnreadWatch(context, self._idle_timeout)
        async with self._answering(context, "stream", watch):
            with self._instance.admit(last_resort=last_resort_asked(context.invocation_metadata())):
                # Closed here, not when the garbage collector gets to it: when gRPC closes
                # this generator, the stream's reader, session and decoder end before its
                # slot is free.
                async with contextlib.aclosing(self._stream(request_iterator, context)) as stream:
                    async for response in stream:
                        with watch.sending():
                            yield response

    async def _stream(
        self,
        requests: AsyncIterator[stt_pb2.StreamingRecognizeRequest],
        context: Context,
    ) -> AsyncGenerator[stt_pb2.StreamingRecognizeResponse, None]:
        iterator = requests.__aiter__()
        first = await self._next(iterator, "streaming_config")
        if first is None:
            raise errors.InvalidArgument("empty stream: no streaming_config was sent")
        if first.WhichOneof("streaming_request") != "streaming_config":
            raise errors.InvalidArgument("the first request must carry streaming_config, not audio")
        config = validate_streaming_config(first.streaming_config)
        params = self._params(config)
        offset, skip = _metadata_ms(context, OFFSET_KEY), _metadata_ms(context, SKIP_KEY)
        replay = replay_context_of(context.invocation_metadata())
        decoder = make_decoder(config)
        try:
            session = StreamSession(
                params,
                self._instance.session_options,
                self._instance.scheduler,
                offset=offset,
                skip=skip,
                replay=replay,
            )
        except BaseException:
            decoder.close()
            raise
        reader = asyncio.create_task(self._read(iterator, decoder, session, context))
        try:
            while (event := await session.next_event(reader)) is not None:
                self._instance.metrics.results.labels(_kind(event)).inc()
                yield to_response(event, params.language or "en")
            session.raise_worker_error()
            yield stt_pb2.StreamingRecognizeResponse(
                summary=self._summary(params.stream_id, session)
            )
        finally:
            await _cancel(reader)
            await session.close()
            decoder.close()

    async def _read(
        self,
        iterator: AsyncIterator[stt_pb2.StreamingRecognizeRequest],
        decoder: AudioDecoder,
        session: StreamSession,
        context: Context,
    ) -> None:
        received = 0
        take = functools.partial(self._feed, session)
        while (request := await self._next(iterator, "audio")) is not None:
            data = audio_chunk(request, self._max_chunk, self._instance.retry_after)
            received += len(data)
            await _decode(decoder, data, take)
        if _expired(context):
            # gRPC ends the requests of a call whose deadline passed as if the client
            # had half-closed: the final decode would be work for no one.
            raise errors.DeadlineExceeded("the call's deadline passed while it streamed audio")
        if received == 0:
            raise errors.InvalidArgument("empty stream: no audio was sent after the config")
        await _decode(decoder, None, take)
        session.finish()

    async def _feed(self, session: StreamSession, samples: np.typing.NDArray[np.float32]) -> None:
        """Feeds in pieces of at most one second, waiting while the session is behind:
        a client that sends faster than the instance decodes is slowed down by gRPC
        flow control instead of growing the buffer. Each piece runs the VAD on the
        event loop: other streams get their turn between pieces, not only once a
        large chunk (a Recognize request: minutes) is all in."""
        self._instance.add_audio(len(samples) / MODEL_SAMPLE_RATE)
        for i in range(0, len(samples), MODEL_SAMPLE_RATE):
            await session.wait_for_room()
            session.feed(samples[i : i + MODEL_SAMPLE_RATE])
            await asyncio.sleep(0)

    async def Recognize(
        self, request: stt_pb2.RecognizeRequest, context: Context
    ) -> stt_pb2.RecognizeResponse:
        async with self._answering(context, "request"):
            with self._instance.admit(last_resort=last_resort_asked(context.invocation_metadata())):
                return await self._recognize(request)
        raise AssertionError("unreachable: a failure aborts the call")

    async def _recognize(self, request: stt_pb2.RecognizeRequest) -> stt_pb2.RecognizeResponse:
        if not request.HasField("config"):
            raise errors.InvalidArgument("config is required")
        config = validate_recognition_config(request.config)
        params = self._params(config)
        data = request.audio_content
        if not data:
            raise errors.InvalidArgument("audio_content is empty")
        if len(data) > self._max_unary_bytes:
            raise errors.InvalidArgument(
                f"audio_content of {len(data)} bytes exceeds the Recognize limit of "
                f"{self._max_unary_bytes} bytes: use StreamingRecognize"
            )
        pieces: list[Samples] = []
        limit = int(self._max_unary_seconds * MODEL_SAMPLE_RATE)
        decoded = 0

        async def take(samples: Samples) -> None:
            nonlocal decoded
            pieces.append(samples)
            decoded += len(samples)
            if decoded > limit:
                raise errors.InvalidArgument(
                    f"audio of over {decoded / MODEL_SAMPLE_RATE:.1f} s exceeds the Recognize "
                    f"limit of {self._max_unary_seconds:g} s: use StreamingRecognize"
                )

        decoder = make_decoder(config)
        try:
            await _decode(decoder, data, take)
            await _decode(decoder, None, take)
        finally:
            decoder.close()
        audio = np.concatenate(pieces)
        session = StreamSession(
            StreamParams(
                params.stream_id, params.language, False, params.word_offsets, params.realtime
            ),
            self._instance.session_options,
            self._instance.scheduler,
        )
        # Results are read while the audio goes in: fed first, their events would fill
        # the session's queue, and a worker blocked on a full queue frees no room for
        # more audio.
        feeder = asyncio.create_task(self._feed_all(session, audio))
        results: list[stt_pb2.StreamingRecognitionResult] = []
        try:
            while (event := await session.next_event(feeder)) is not None:
                if isinstance(event, Final) and event.text:
                    self._instance.metrics.results.labels("final").inc()
                    results.append(final_result(event, params.language or "en"))
            session.raise_worker_error()
        finally:
            await _cancel(feeder)
            await session.close()
        return stt_pb2.RecognizeResponse(
            results=results, summary=self._summary(params.stream_id, session)
        )

    async def _feed_all(self, session: StreamSession, audio: np.typing.NDArray[np.float32]) -> None:
        """Feeds a whole recording (a Recognize request's audio), then half-closes."""
        await self._feed(session, audio)
        session.finish()


def _kind(event: SessionEvent) -> str:
    """The ``kind`` label of a result sent."""
    if isinstance(event, Final):
        return "final"
    return "interim" if isinstance(event, Interim) else "event"


async def _decode(
    decoder: AudioDecoder, data: bytes | None, take: Callable[[Samples], Awaitable[None]]
) -> None:
    """Hands ``take`` the audio ``decoder`` makes of ``data`` (None: the end of the audio).

    A :class:`ContainerDecoder` decodes on its own thread (off the event loop) and
    hands its audio out in pieces of a few seconds, decoding the next one only once
    ``take`` returned: a chunk of compressed silence may hold hours, and the
    duration limits apply as it decodes, before it is all in memory."""
    if not isinstance(decoder, ContainerDecoder):
        await take(decoder.feed(data) if data is not None else decoder.finish())
        return
    if data is None:
        await take(await asyncio.to_thread(decoder.finish))
    else:
        await take(await asyncio.to_thread(decoder.feed, data))
    while decoder.pending:
        await take(await asyncio.to_thread(decoder.more))


async def _cancel(task: asyncio.Task[Any]) -> None:
    """Cancels ``task`` and waits for it to end; its own error is not ours to raise."""
    await tasks.stop(task)


class TelemetryServicer(stt_pb2_grpc.TelemetryServiceServicer):
    """Periodic snapshots of the instance."""

    def __init__(self, instance: AsrInstance, stopping: asyncio.Event) -> None:
        self._instance = instance
        self._stopping = stopping

    async def WatchTelemetry(
        self, request: stt_pb2.WatchTelemetryRequest, context: Context
    ) -> AsyncIterator[stt_pb2.WatchTelemetryResponse]:
        interval = 1.0
        if request.HasField("interval"):
            interval = request.interval.ToMilliseconds() / 1000.0
            if interval < 0.1:
                await abort(
                    context,
                    errors.InvalidArgument(
                        f"interval {interval:g} s is below the minimum of 0.1 s"
                    ),
                )
        while True:
            yield stt_pb2.WatchTelemetryResponse(snapshot=self._instance.snapshot())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._stopping.wait()
            if self._stopping.is_set():
                yield stt_pb2.WatchTelemetryResponse(snapshot=self._instance.snapshot())
                return


class _UnreadWatch:
    """Ends a stream whose client stopped reading its results.

    A response that waits ``idle_timeout`` for the client to take it was stopped by
    gRPC's flow control: the client reads no more (a stalled or wedged reader). The
    handler is blocked in gRPC's write, where no timeout of ours runs, and with it the
    session's results and, through them, the reading of audio: nothing else would end
    the stream, and it would hold its slot (and a drain) for as long as the client kept
    its connection. The watch sends the call's status, OUT_OF_RANGE (it reaches the
    client after the responses it has not read), then cancels the handler, which closes
    the stream's generator: the slot, the session and the decoder are freed at once.
    """

    def __init__(self, context: Context, limit: float) -> None:
        self._context, self._limit = context, limit
        self._handler = asyncio.current_task()
        self._loop = asyncio.get_running_loop()
        self.ended = False
        """Whether the watch ended the stream."""

    @contextlib.contextmanager
    def sending(self) -> Iterator[None]:
        """Arms the watch while the block hands gRPC one response."""
        timer = self._loop.call_later(self._limit, self._end)
        try:
            yield
        finally:
            timer.cancel()

    def _end(self) -> None:
        handler = self._handler
        if handler is None or handler.done():
            return
        logger.warning(
            "a client took no result for %g s (it stopped reading): ending its stream",
            self._limit,
        )
        self.ended = True
        # The status goes out first; the handler, cancelled next, then ends without one
        # of its own.
        abort_behind_unread(self._context, unread_error(self._limit), self._limit)
        self._loop.call_soon(handler.cancel, "the client stopped reading")
