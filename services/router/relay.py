"""One client stream relayed to an instance, moved to another when its instance fails.

The life of a relayed stream::

                  admit() ─────────▶ ATTACHED ──instance OK + summary──▶ DONE
    QUEUED ◀────────────────────────── │ │ │                             ▲ ▲
      ▲   instance full (RESOURCE_     │ │ └─instance failed after its ──┘ │
      │   EXHAUSTED before any result) │ │   summary reached the client    │
      └────────────────────────────────┘ │                                 │ client half-closed,
                                         │ instance failed (UNAVAILABLE,   │ finals cover all its
                                         ▼ reset, killed)                  │ audio: the router
                                      RESUMING ────────────────────────────┘ sends the summary
                                         │ audio after the last final to replay (when finals
                                         │ cover it all: once the client sends more)
                                         ▼
                                      QUEUED (resumed, served first)

    any state ──client error / cancel / deadline / queue timeout──▶ FAILED
    ATTACHED ──a result the client has not taken for idle_timeout_s──▶ FAILED (OUT_OF_RANGE)

Three tasks serve a stream: the client reader (appends audio to the
:class:`~services.router.failover.ReplayLog`, pausing while too much is
unsent: the bound is ``queue_max_bytes`` while no instance holds the stream,
``relay_buffer_bytes`` while one does), the upstream writer of the current
attempt (follows the log's cursor) and the handler's own task (admission,
then reads the instance's responses and writes them to the client, one at a
time, so a slow client slows the instance's stream instead of growing a
buffer; a client that stops reading loses its stream once a result has waited
``idle_timeout_s`` for it: :mod:`services.router.downstream`). Admission and
the accounting of each attempt's outcome are a
:class:`~services.router.stream_control.StreamControl`'s, as for a stream the
native data path relays.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc

from services.router.admission import Admission
from services.router.downstream import ClientWriter
from services.router.failover import ReplayLog, ResultTracker, duration_ms
from services.router.membership import Member
from services.router.metrics import RouterMetrics
from services.router.routing import Route, check_chunk, no_audio_error
from services.router.settings import RouterSettings
from services.router.stream_control import (
    FAILOVER_CODES,
    Outcome,
    StreamControl,
    UpstreamError,
    instance_outcome,
    unreplayable_error,
)
from voxmesh import tasks
from voxmesh.asr.config import audio_content, idle_wait
from voxmesh.errors import Unavailable, VoxmeshError
from voxmesh.stt.v1 import stt_pb2

__all__ = ["LATENCY_SAMPLE_EVERY", "RelayLimits", "StreamRelay"]

logger = logging.getLogger(__name__)


LATENCY_SAMPLE_EVERY = 8
"""One message in this many is timed for ``voxmesh_router_added_latency_seconds``
(a histogram observation costs about as much as a tenth of relaying a message)."""


@dataclass(frozen=True)
class RelayLimits:
    """Per-stream bounds of the relay."""

    queue_max_bytes: int
    """Unsent audio bytes while the stream waits for an instance."""
    relay_buffer_bytes: int
    """Unsent audio bytes while an instance holds the stream."""
    replay_max_bytes: int
    """Audio kept for replay on failover."""
    max_chunk_bytes: int
    """Largest audio chunk accepted."""
    max_failovers: int
    """Most failovers of one stream."""
    failover_context_s: float = 0.0
    """Audio of earlier finals replayed in front on failover, as context only."""
    idle_timeout_s: float = 30.0
    """Longest wait for the client's next message while no instance waits for it."""

    @classmethod
    def of(cls, settings: RouterSettings) -> RelayLimits:
        """The bounds the router's settings of the same names set."""
        return cls(
            queue_max_bytes=settings.queue_max_bytes,
            relay_buffer_bytes=settings.relay_buffer_bytes,
            replay_max_bytes=settings.replay_max_bytes,
            max_chunk_bytes=settings.max_chunk_bytes,
            max_failovers=settings.max_failovers,
            failover_context_s=settings.failover_context_s,
            idle_timeout_s=settings.idle_timeout_s,
        )


class StreamRelay:
    """Relays one StreamingRecognize stream (after its config) to the pool's instances."""

    def __init__(
        self,
        *,
        route: Route,
        config: stt_pb2.StreamingRecognizeRequest,
        context: grpc.aio.ServicerContext[Any, Any],
        admission: Admission[Member],
        limits: RelayLimits,
        metrics: RouterMetrics,
    ) -> None:
        self._route = route
        self._config = config
        self._context = context
        self._limits = limits
        self._control = StreamControl(
            admission=admission,
            metrics=metrics,
            pool=route.pool,
            realtime=route.realtime,
            max_failovers=limits.max_failovers,
            name=f"stream {route.stream_id}",
        )
        self._log = ReplayLog(
            route.linear16,
            route.sample_rate,
            limits.replay_max_bytes,
            context_ms=round(limits.failover_context_s * 1000),
        )
        self._tracker = ResultTracker()
        self._writer = ClientWriter(context, limits.idle_timeout_s, f"stream {route.stream_id}")
        self._attached = False
        self._data = asyncio.Event()
        self._space = asyncio.Event()
        self._client_error: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._error: VoxmeshError | None = None
        self._upstream_latency = metrics.added_latency.labels("upstream")
        self._downstream_latency = metrics.added_latency.labels("downstream")
        self._received_at: dict[int, float] = {}
        self._requests = 0
        self._responses = 0
        self._summary_sent = False

    def audio_seconds(self) -> float:
        """Seconds of LINEAR16 audio received from the client (0 for containers)."""
        return self._log.audio_seconds()

    async def run(self, requests: AsyncIterator[stt_pb2.StreamingRecognizeRequest]) -> None:
        """Serves the stream to its end; raises the error the client must get, or
        :class:`~services.router.downstream.StatusSent` when the client stopped reading
        its results (its status is under way already)."""
        reader = asyncio.create_task(self._read_client(requests), name="relay-reader")
        serve = asyncio.create_task(self._serve(), name="relay-serve")
        try:
            await asyncio.wait({serve, self._client_error}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (serve, reader):
                task.cancel()
            await asyncio.gather(serve, reader, return_exceptions=True)
            if not self._client_error.done():
                self._client_error.cancel()
        if self._writer.ended is not None:  # before a client error that came meanwhile
            raise self._writer.ended
        if self._error is not None:
            raise self._error
        serve.result()

    async def _read_client(
        self, requests: AsyncIterator[stt_pb2.StreamingRecognizeRequest]
    ) -> None:
        try:
            async for request in requests:
                data = audio_content(request)
                check_chunk(len(data), self._route.linear16, self._limits.max_chunk_bytes)
                # Room for the whole chunk (one always goes when nothing is unsent).
                while (unsent := self._log.unsent_bytes()) and (
                    unsent + len(data) > self._unsent_limit()
                ):
                    self._space.clear()
                    await self._space.wait()
                self._log.append(request)
                self._requests += 1
                if self._requests % LATENCY_SAMPLE_EVERY == 0:
                    self._received_at[self._log.total_bytes] = time.perf_counter()
                self._data.set()
            if self._log.total_bytes == 0:
                raise no_audio_error()
            self._log.half_closed = True
            self._data.set()
        except VoxmeshError as err:
            self._fail(err)
        except Exception as err:  # the client's side of the call broke: end the stream
            if isinstance(err, grpc.RpcError):
                logger.debug("stream %s: client stream failed: %r", self._route.stream_id, err)
            else:  # not the client's doing: a bug must not pass for a hang-up
                logger.exception(
                    "stream %s: reading the client stream failed", self._route.stream_id
                )
            self._fail(Unavailable("the client stream failed"))

    def _fail(self, err: VoxmeshError) -> None:
        if self._error is None:
            self._error = err
            self._client_error.set_result(None)

    def _unsent_limit(self) -> int:
        if self._attached:
            return self._limits.relay_buffer_bytes
        return self._limits.queue_max_bytes

    async def _serve(self) -> None:
        control = self._control
        while True:
            member = await control.place(self._log.unsent_bytes)
            self._attached = True
            self._space.set()
            outcome = Outcome.ERROR  # what an attempt that raised counts as
            try:
                outcome = await self._attempt(member, resumed=control.attempts > 0)
            finally:
                self._attached = False
                control.ended(outcome)  # marked full or failed before the queue hears
            if outcome is Outcome.DONE:
                return
            if outcome is Outcome.FULL:
                continue
            self._tracker.failovers = control.failovers
            control.check_failovers()
            if not self._log.replayable:
                raise unreplayable_error(self._limits.replay_max_bytes)
            if not await self._audio_to_resume():
                await self._finish(member)
                return

    async def _audio_to_resume(self) -> bool:
        """Whether a new instance is needed after a failure: True at once while audio
        after the last final is kept; while final results cover all the audio received,
        waits for the client to send more (True) or half-close (False: every byte has
        its final, a new instance would get no audio and refuse the stream)."""
        log = self._log
        while not log.pending and log.replayable:
            if log.half_closed:
                return False
            self._data.clear()
            await idle_wait(self._data.wait(), self._limits.idle_timeout_s, "audio")
        return True

    async def _finish(self, member: Member) -> None:
        """Ends a stream whose audio all has its final results after its instance failed
        before the summary: the router sends the summary (naming that instance)."""
        logger.info(
            "stream %s: final results cover all the audio; the router ends it",
            self._route.stream_id,
        )
        summary = stt_pb2.StreamSummary(
            instance_id=member.instance_id, model=member.info.model, pool=self._route.pool
        )
        await self._on_response(stt_pb2.StreamingRecognizeResponse(summary=summary))

    async def _attempt(self, member: Member, resumed: bool) -> Outcome:
        if not self._log.restart():
            raise Unavailable("the stream cannot be replayed: it outgrew the replay buffer")
        self._tracker.begin_attempt(resumed)
        metadata = self._log.resume_metadata() + self._control.open_metadata()
        remaining = self._context.time_remaining()
        call: Any = member.recognizer.StreamingRecognize(
            metadata=metadata or None, timeout=remaining
        )
        writer = asyncio.create_task(self._write_upstream(call), name="relay-writer")
        answered = False
        try:
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    return Outcome.DONE
                answered = True
                await self._on_response(response)
        except grpc.aio.AioRpcError as err:
            code = err.code()
            if code in FAILOVER_CODES and self._summary_sent:
                # Only its OK status was lost: the client has everything, summary included.
                logger.info(
                    "stream %s: instance %s ended with %s after the summary; done",
                    self._route.stream_id,
                    member.instance_id,
                    code.name,
                )
                return Outcome.DONE
            outcome = instance_outcome(err, answered)  # FULL: it never started there
            if outcome is Outcome.ERROR:
                raise UpstreamError(err) from None
            if outcome is Outcome.FAILED:
                logger.info(
                    "stream %s: instance %s ended with %s: %s",
                    self._route.stream_id,
                    member.instance_id,
                    code.name,
                    err.details(),
                )
            return outcome
        finally:
            try:
                # Not ``await writer`` under a suppressed CancelledError: a cancel of this
                # task that came while the writer ended would be swallowed with the
                # writer's, and a stream its client left would fail over and go on.
                await tasks.stop(writer)
            finally:
                call.cancel()
            if not writer.cancelled():
                writer.result()  # a failure of the writer's own is not hidden

    async def _on_response(self, response: stt_pb2.StreamingRecognizeResponse) -> None:
        self._responses += 1
        sampled = self._responses % LATENCY_SAMPLE_EVERY == 0
        arrived = time.perf_counter() if sampled else 0.0
        out = self._tracker.on_response(response)
        if out is None:
            return
        kind = out.WhichOneof("streaming_response")
        if kind == "summary":
            self._tracker.fix_summary(out.summary, self._route.stream_id, self._log.audio_seconds())
        elif kind == "result" and out.result.is_final:
            result = out.result
            text = result.alternatives[0].transcript if result.alternatives else ""
            self._log.commit(duration_ms(result.end_offset), duration_ms(result.start_offset), text)
        await self._writer.write(out)
        if kind == "summary":
            self._summary_sent = True
        if sampled:
            self._downstream_latency.observe(time.perf_counter() - arrived)

    async def _write_upstream(self, call: Any) -> None:
        log = self._log
        try:
            await call.write(self._config)
            while True:
                request = log.next_request()
                if request is None:
                    if log.half_closed:
                        await call.done_writing()
                        return
                    self._data.clear()
                    await self._data.wait()
                    continue
                await call.write(request)
                self._space.set()
                if self._received_at:
                    sent_to = log.total_bytes - log.unsent_bytes()
                    received = self._received_at.pop(sent_to, None)
                    if received is not None:
                        self._upstream_latency.observe(time.perf_counter() - received)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            return  # the read side reports the instance's status
