"""The control plane of the native data path: ``voxmesh.router.v1.DataPlaneService``.

With ``data_path = native`` a Go process (``dataplane/``) serves the public
endpoint and relays every StreamingRecognize stream; for each one it holds an
``Attach`` call open here, and this service decides what the Python relay
decides, with the same parts (:class:`~services.router.active.ActiveStreams`,
:meth:`~services.router.routing.PoolResolver.open_stream`,
:class:`~services.router.stream_control.StreamControl`), so a client gets the
same statuses, messages and metrics from either data path.

The data path carries every stream's Attach call over one ``Connect`` call
(:mod:`services.router.connect`); the same code serves both.

One Attach call, as this side sees it::

    call starts ──draining / past max_streams──▶ UNAVAILABLE / RESOURCE_EXHAUSTED
        │ open (bad config: its status)           (the data path opens the call as the
        ▼                                          client's stream begins: a client that
                                                   sends no config is a reject first)
    ROUTED ──place──▶ QUEUED ──an instance has room──▶ PLACED
      ▲                 │ queue full, wait too long:     │ attempt_ended
      │                 ▼ RESOURCE_EXHAUSTED             ▼
      └──────── DONE / ERROR stop here; FULL and FAILED wait for the next place
                (FAILED past max_failovers: UNAVAILABLE)

    any state ──reject──▶ the status the Python relay gives that case
    any state ──finished──▶ counted with its code; the call ends OK
    any state ──the data path goes away (call cancelled, or ended without
                finished)──▶ the instance held is released and the queue left;
                counted CANCELLED

``open.place`` is ``open`` and then ``place``; when an instance has room at once and
no stream waits ahead (``Admission.admit_now``), its placement goes with the route
(``route.placement``). ``finished.last_attempt`` is an ``attempt_ended`` (DONE or
ERROR) just before ``finished``, and ``finished.latency`` a ``latency``: one call's
events are few, since each costs this process work (and, unless gathered with others,
a message of its own). ``buffered`` and ``latency`` may come in any state. An event
out of this order is the data path's bug: the call ends with INTERNAL, and the log says which.
Every event carries the seconds of audio received so far: the stream's audio is
counted with the largest, however the call ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any, TypeVar

import grpc

from services.router.active import StreamTally
from services.router.connect import AttachContext, ConnectSession
from services.router.membership import Member
from services.router.parts import RouterParts
from services.router.relay import RelayLimits
from services.router.routing import Route, check_chunk, no_audio_error
from services.router.stream_control import Outcome, StreamControl, unreplayable_error
from voxmesh import tasks
from voxmesh.asr.config import audio_content, idle_timeout_error
from voxmesh.errors import Internal, VoxmeshError
from voxmesh.router.v1 import dataplane_pb2, dataplane_pb2_grpc

__all__ = ["DataPlaneService", "ProtocolError", "relay_limits"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_OUTCOMES = {
    dataplane_pb2.AttemptEndedEvent.OUTCOME_DONE: Outcome.DONE,
    dataplane_pb2.AttemptEndedEvent.OUTCOME_FULL: Outcome.FULL,
    dataplane_pb2.AttemptEndedEvent.OUTCOME_FAILED: Outcome.FAILED,
    dataplane_pb2.AttemptEndedEvent.OUTCOME_ERROR: Outcome.ERROR,
}
_CODES = {code.value[0]: code for code in grpc.StatusCode}


class ProtocolError(Internal):
    """The data path broke the Attach protocol (its bug, not the client's): the call
    ends with INTERNAL."""


def relay_limits(limits: RelayLimits) -> dataplane_pb2.RelayLimits:
    """The router's relay bounds as the data path gets them."""
    return dataplane_pb2.RelayLimits(
        queue_max_bytes=limits.queue_max_bytes,
        relay_buffer_bytes=limits.relay_buffer_bytes,
        replay_max_bytes=limits.replay_max_bytes,
        max_chunk_bytes=limits.max_chunk_bytes,
        failover_context_ms=round(limits.failover_context_s * 1000),
        idle_timeout_ms=round(limits.idle_timeout_s * 1000),
    )


class DataPlaneService(dataplane_pb2_grpc.DataPlaneServiceServicer):
    """DataPlaneService: one Attach call per client stream of the native data path."""

    def __init__(self, parts: RouterParts) -> None:
        self._parts = parts
        self._wire_limits = relay_limits(parts.limits)

    # Written with ``context.write``, as RouterRecognizer.StreamingRecognize.
    async def Attach(  # type: ignore[override]
        self,
        request_iterator: AsyncIterator[dataplane_pb2.AttachRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        """Answers one stream's events until it finishes (see the module docstring)."""
        await self._attach(request_iterator, context)

    async def Connect(  # type: ignore[override]
        self,
        request_iterator: AsyncIterator[dataplane_pb2.ConnectRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        """Serves the Attach calls of the streams the call carries (services.router.connect)."""
        batch_events = self._parts.metrics.control_batch_events
        await ConnectSession(self._attach, context, batch_events).serve(aiter(request_iterator))

    async def _attach(
        self, requests: AsyncIterable[dataplane_pb2.AttachRequest], context: AttachContext
    ) -> None:
        async with self._parts.streams.stream(context) as tally:
            attachment = _Attachment(self._parts, self._wire_limits, tally, context)
            try:
                # Iterated only once admitted: grpc.aio's iterator of a call refused
                # before would never be awaited (a RuntimeWarning at collection).
                await attachment.serve(aiter(requests))
            except ProtocolError as err:
                logger.error("%s: data path protocol error: %s", attachment.name, err)
                raise


class _Attachment:
    """One Attach call: the stream's route, its StreamControl and the events."""

    def __init__(
        self,
        parts: RouterParts,
        wire_limits: dataplane_pb2.RelayLimits,
        tally: StreamTally,
        context: AttachContext,
    ) -> None:
        self._parts = parts
        self._wire_limits = wire_limits
        self._tally = tally
        self._context = context
        self._route: Route | None = None
        self._control: StreamControl | None = None
        self._buffered = 0
        self._placing: asyncio.Task[Member] | None = None

    @property
    def name(self) -> str:
        """``stream <id>`` once opened, for the log."""
        return f"stream {self._route.stream_id}" if self._route else "unopened stream"

    async def serve(self, requests: AsyncIterator[dataplane_pb2.AttachRequest]) -> None:
        """Serves the call to ``finished``; raises the error that ends it otherwise."""
        # Events are read straight from the call while no placement is awaited (most
        # of a stream's life); a read becomes a task only to wait beside one.
        reading: asyncio.Task[dataplane_pb2.AttachRequest | None] | None = None
        try:
            while True:
                if self._placing is None:
                    request = await (reading if reading is not None else _next(requests))
                    reading = None
                else:
                    if reading is None:
                        reading = asyncio.create_task(_next(requests), name="attach-read")
                    await asyncio.wait(
                        {reading, self._placing}, return_when=asyncio.FIRST_COMPLETED
                    )
                    if self._placing.done():
                        placing, self._placing = self._placing, None
                        await self._placed(placing.result())
                    if not reading.done():
                        continue
                    request, reading = reading.result(), None
                if request is None:  # what a call cancelled by its client looks like too
                    logger.info("%s: the data path left without finished", self.name)
                    self._tally.code = grpc.StatusCode.CANCELLED
                    return
                if await self._on(request):
                    return
        finally:
            pending, self._placing = self._placing, None
            if pending is not None:
                # Cancelled at once, whatever interrupts the waits below: it reserves
                # nothing from here on (an instance handed over as it is cancelled goes
                # back, see Admission.admit), and the one it reserved is released below.
                pending.cancel()
            try:
                if reading is not None:
                    await tasks.stop(reading)
                if pending is not None:
                    await tasks.stop(pending)
            finally:
                if self._control is not None:
                    self._control.ended(Outcome.ERROR)  # an instance still held is released

    async def _on(self, request: dataplane_pb2.AttachRequest) -> bool:
        """Handles one event; True once the stream finished."""
        self._tally.audio_seconds = max(self._tally.audio_seconds, request.audio_seconds)
        kind = request.WhichOneof("event")
        if kind == "open":
            await self._open(request.open)
        elif kind == "reject":
            raise self._rejected(request.reject)
        elif kind == "finished":
            self._finished(request.finished)
            return True
        elif kind == "buffered":
            self._buffered = max(0, request.buffered.bytes)
        elif kind == "latency":
            self._latency(request.latency)
        elif self._control is None:
            raise ProtocolError(f"{kind or 'an empty event'} before open")
        elif kind == "place":
            self._place(self._control)
        elif kind == "attempt_ended":
            self._attempt_ended(self._control, request.attempt_ended.outcome)
        else:
            raise ProtocolError("an empty event")
        return False

    async def _open(self, event: dataplane_pb2.OpenEvent) -> None:
        if self._route is not None:
            raise ProtocolError("a second open")
        parts = self._parts
        first = event.first_request if event.HasField("first_request") else None
        route, forwarded = parts.resolver.open_stream(first, parts.membership.served_models())
        self._route = route
        self._control = StreamControl(
            admission=parts.admission,
            metrics=parts.metrics,
            pool=route.pool,
            realtime=route.realtime,
            max_failovers=parts.limits.max_failovers,
            name=self.name,
        )
        self._tally.routed(route.pool)
        answer = dataplane_pb2.RouteEvent(
            config=forwarded,
            pool=route.pool,
            stream_id=route.stream_id,
            linear16=route.linear16,
            sample_rate_hertz=route.sample_rate,
            limits=self._wire_limits,
        )
        if event.place:
            # An instance with room at once goes with the route, one answer fewer;
            # otherwise the stream waits in the queue and its placement follows.
            member = self._control.place_now()
            if member is not None:
                answer.placement.CopyFrom(self._placement(member))
            else:
                self._place(self._control)
        await self._context.write(dataplane_pb2.AttachResponse(route=answer))

    def _place(self, control: StreamControl) -> None:
        if self._placing is not None or control.member is not None:
            raise ProtocolError("place while an instance is held or awaited")
        self._placing = asyncio.create_task(
            control.place(lambda: self._buffered), name="attach-place"
        )

    async def _placed(self, member: Member) -> None:
        answer = self._placement(member)
        await self._context.write(dataplane_pb2.AttachResponse(placement=answer))

    def _placement(self, member: Member) -> dataplane_pb2.PlacementEvent:
        """The placement on ``member``, the instance just reserved."""
        assert self._control is not None
        metadata = self._control.open_metadata()
        return dataplane_pb2.PlacementEvent(
            instance_id=member.instance_id,
            target=member.info.target,
            model=member.info.model,
            metadata=[dataplane_pb2.MetadataEntry(key=k, value=v) for k, v in metadata],
        )

    def _attempt_ended(
        self, control: StreamControl, value: dataplane_pb2.AttemptEndedEvent.Outcome.ValueType
    ) -> None:
        outcome = _OUTCOMES.get(value)
        if outcome is None:
            raise ProtocolError(f"attempt_ended with outcome {value}")
        if control.member is None:
            raise ProtocolError("attempt_ended without a placement")
        control.ended(outcome)
        if outcome is Outcome.FAILED:
            control.check_failovers()

    def _rejected(self, event: dataplane_pb2.RejectEvent) -> VoxmeshError:
        """The error the Python relay gives the client in the case ``event`` reports."""
        limits = self._parts.limits
        reason = event.WhichOneof("reason")
        if reason == "stalled_waiting_for":
            return idle_timeout_error(limits.idle_timeout_s, event.stalled_waiting_for)
        if reason == "no_audio":
            return no_audio_error()
        if reason == "unreplayable":
            return unreplayable_error(limits.replay_max_bytes)
        if reason not in ("bad_request", "bad_chunk_bytes"):
            raise ProtocolError("a reject without a reason")
        if self._route is None:
            raise ProtocolError(f"a {reason} before open")
        try:
            if reason == "bad_request":
                size = len(audio_content(event.bad_request))
            else:
                size = event.bad_chunk_bytes
            check_chunk(size, self._route.linear16, limits.max_chunk_bytes)
        except VoxmeshError as err:
            return err
        raise ProtocolError(f"a {reason} the router's checks accept")

    def _finished(self, event: dataplane_pb2.FinishedEvent) -> None:
        if event.HasField("latency"):
            self._latency(event.latency)
        if event.last_attempt != dataplane_pb2.AttemptEndedEvent.OUTCOME_UNSPECIFIED:
            if self._control is None:
                raise ProtocolError("finished with last_attempt before open")
            if _OUTCOMES.get(event.last_attempt) not in (Outcome.DONE, Outcome.ERROR):
                raise ProtocolError(f"finished with last_attempt {event.last_attempt}")
            self._attempt_ended(self._control, event.last_attempt)
        self._tally.code = _CODES.get(event.code, grpc.StatusCode.UNKNOWN)

    def _latency(self, event: dataplane_pb2.LatencyEvent) -> None:
        added = self._parts.metrics.added_latency
        upstream, downstream = added.labels("upstream"), added.labels("downstream")
        for seconds in event.upstream_seconds:
            upstream.observe(seconds)
        for seconds in event.downstream_seconds:
            downstream.observe(seconds)


async def _next(requests: AsyncIterator[T]) -> T | None:
    """The next request, None once the data path half-closed."""
    return await anext(requests, None)
