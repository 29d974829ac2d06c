"""The router's gRPC services: the public RecognizerService and its TelemetryService.

The router answers exactly like an instance: the same validation (hence the
same statuses for bad input), the instance's own status passed through for
everything the router cannot check, and only the summary telling which
instance served the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from services.router.active import ActiveStreams
from services.router.admission import Admission
from services.router.downstream import StatusSent
from services.router.membership import Member, Membership
from services.router.parts import RouterParts
from services.router.relay import StreamRelay
from services.router.stream_control import (
    Outcome,
    StreamControl,
    UpstreamError,
    instance_outcome,
)
from voxmesh.asr.config import idle_wait, validate_recognition_config
from voxmesh.errors import InvalidArgument, Unavailable
from voxmesh.rpc import status
from voxmesh.rpc.wellknown import duration, timestamp
from voxmesh.stt.v1 import stt_pb2, stt_pb2_grpc
from voxmesh.telemetry import HostSampler
from voxmesh.telemetry.stats import max_known

__all__ = ["RouterRecognizer", "RouterTelemetry", "snapshot_builder"]

logger = logging.getLogger(__name__)

_MIN_TELEMETRY_INTERVAL_S = 0.1
_DEFAULT_TELEMETRY_INTERVAL_S = 1.0


class RouterRecognizer(stt_pb2_grpc.RecognizerServiceServicer):
    """RecognizerService of the router: admission, relay and failover per stream."""

    def __init__(self, parts: RouterParts) -> None:
        self._resolver = parts.resolver
        self._membership = parts.membership
        self._admission = parts.admission
        self._limits = parts.limits
        self._metrics = parts.metrics
        self._streams = parts.streams

    @property
    def active_streams(self) -> int:
        """Streams being served (queued or relayed), by either data path."""
        return self._streams.active

    @property
    def draining(self) -> bool:
        """True once the router takes no new streams."""
        return self._streams.draining

    @property
    def audio_seconds_total(self) -> float:
        """Seconds of LINEAR16 audio relayed by finished streams."""
        return self._streams.audio_seconds_total

    # grpc.aio also takes handlers that write with ``context.write`` and return
    # None; the generated base class only declares the iterator form.
    async def StreamingRecognize(  # type: ignore[override]
        self,
        request_iterator: AsyncIterator[stt_pb2.StreamingRecognizeRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        """Validates the config, admits the stream and relays it."""
        async with self._streams.stream(context) as tally:
            first = await idle_wait(
                anext(aiter(request_iterator), None),
                self._limits.idle_timeout_s,
                "streaming_config",
            )
            route, forwarded = self._resolver.open_stream(first, self._membership.served_models())
            relay = StreamRelay(
                route=route,
                config=forwarded,
                context=context,
                admission=self._admission,
                limits=self._limits,
                metrics=self._metrics,
            )
            tally.routed(route.pool)
            try:
                await relay.run(request_iterator)
            except StatusSent as sent:  # the client stopped reading; it has its status
                tally.code = sent.code
            finally:
                tally.audio_seconds = relay.audio_seconds()

    async def Recognize(
        self, request: stt_pb2.RecognizeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> stt_pb2.RecognizeResponse:
        """Sends a whole file to one instance (another if it fails or is full)."""
        async with self._streams.stream(context) as tally:
            validate_recognition_config(request.config)
            pool = self._resolver.resolve(request.config, self._membership.served_models())
            tally.routed(pool)
            return await self._recognize(pool, request, context)
        raise AssertionError("unreachable: abort raises")

    async def _recognize(
        self,
        pool: str,
        request: stt_pb2.RecognizeRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> stt_pb2.RecognizeResponse:
        forwarded = stt_pb2.RecognizeRequest()
        forwarded.CopyFrom(request)
        forwarded.config.model = pool
        control = StreamControl(
            admission=self._admission,
            metrics=self._metrics,
            pool=pool,
            realtime=request.config.priority == stt_pb2.PRIORITY_REALTIME,
            max_failovers=self._limits.max_failovers,
            name="request",
            gave_up=lambda failovers: Unavailable(f"request failed on {failovers} instances"),
        )
        while True:
            member = await control.place(lambda: len(request.audio_content))
            metadata = control.open_metadata()
            outcome = Outcome.ERROR  # what an attempt that raised counts as
            try:
                response: stt_pb2.RecognizeResponse = await member.recognizer.Recognize(
                    forwarded, timeout=context.time_remaining(), metadata=metadata or None
                )
                outcome = Outcome.DONE
            except grpc.aio.AioRpcError as err:
                outcome = instance_outcome(err, answered=False)
                if outcome is Outcome.ERROR:
                    raise UpstreamError(err) from None
            finally:
                control.ended(outcome)
            if outcome is Outcome.DONE:
                response.summary.failovers = control.failovers
                return response
            control.check_failovers()  # FULL goes back to the queue, in its place


class RouterTelemetry(stt_pb2_grpc.TelemetryServiceServicer):
    """TelemetryService of the router: its streams, the admission queues and each instance."""

    def __init__(self, snapshot: Callable[[], stt_pb2.TelemetrySnapshot]) -> None:
        self._snapshot = snapshot
        self._ended = asyncio.Event()
        self._open = 0
        self._none_open = asyncio.Event()
        self._none_open.set()

    async def end_watches(self, timeout_s: float) -> None:
        """Ends every watch (OK) with a last snapshot, and any watch begun later after its
        first; returns once every watch has sent its status, or after ``timeout_s`` with a
        warning (a watcher that stopped reading cannot take its last snapshot).

        The router calls it once its drain is over, so that last snapshot says DRAINING.
        The native data path waits, as it drains, for every call it forwards here, so a
        watch left open would hold its exit back until it is killed. It waits for the
        statuses because stopping the server cancels every call whose status is not sent
        yet: the watcher would read UNAVAILABLE, not the end it was given."""
        self._ended.set()
        try:
            async with asyncio.timeout(timeout_s):
                await self._none_open.wait()
        except TimeoutError:
            logger.warning("%d telemetry watches still open after %.1f s", self._open, timeout_s)

    def _opened(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self._open += 1
        self._none_open.clear()

        def closed(_: grpc.aio.ServicerContext[Any, Any]) -> None:
            self._open -= 1
            if not self._open:
                self._none_open.set()

        # Called once the call's status is sent, whichever way it ends. The stubs type the
        # callback as a private class, which no function matches.
        context.add_done_callback(closed)  # type: ignore[arg-type]

    async def WatchTelemetry(
        self, request: stt_pb2.WatchTelemetryRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[stt_pb2.WatchTelemetryResponse]:
        """One snapshot now, then one per interval until cancelled or the router stops."""
        interval = request.interval.ToTimedelta().total_seconds()
        if request.HasField("interval") and interval < _MIN_TELEMETRY_INTERVAL_S:
            await status.abort(
                context,
                InvalidArgument(f"interval {interval} s is below the minimum of 0.1 s"),
            )
        interval = interval or _DEFAULT_TELEMETRY_INTERVAL_S
        self._opened(context)
        while True:
            yield stt_pb2.WatchTelemetryResponse(snapshot=self._snapshot())
            if self._ended.is_set():
                return  # after a last snapshot, which says DRAINING
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._ended.wait()


def snapshot_builder(
    router_id: str,
    pools: list[str],
    streams: ActiveStreams,
    membership: Membership,
    admission: Admission[Member],
) -> Callable[[], stt_pb2.TelemetrySnapshot]:
    """A function that builds the router's current telemetry snapshot.

    Besides its own figures, the snapshot carries one ``QueueStats`` per pool and one
    ``InstanceLoad`` per instance the membership knows (sorted by pool, then id).
    """
    started = time.time()
    host = HostSampler()

    def build() -> stt_pb2.TelemetrySnapshot:
        snap = stt_pb2.TelemetrySnapshot(
            instance_id=router_id,
            role=stt_pb2.ROLE_ROUTER,
            state=stt_pb2.SERVING_STATE_DRAINING
            if streams.draining
            else stt_pb2.SERVING_STATE_SERVING,
            active_streams=streams.active,
            pending_work=admission.queued(),
            audio_seconds_total=streams.audio_seconds_total,
            gpu_available=False,
            gpu_unavailable_reason="the router uses no GPU",
        )
        capacity = 0
        for pool in pools:
            queue = admission.snapshot(pool)
            stats = membership.stats(pool)
            capacity += stats.capacity_streams
            snap.queues.add(
                pool=pool,
                queued_realtime=queue.queued_realtime,
                queued_batch=queue.queued_batch,
                queued_bytes=queue.queued_bytes,
                oldest_wait_seconds=queue.oldest_wait_s,
                admitted_total=queue.admitted_total,
                rejected_total=queue.rejected_total,
                instances=stats.instances,
                active_streams=stats.active_streams,
                capacity_streams=stats.capacity_streams,
            )
        snap.max_streams = capacity
        snap.instances.extend(_instance_load(member) for member in membership.instances())
        # Sampled as snapshots are built; the figure spans the sampler's trailing
        # window whoever reads, rather than the time since any subscriber's last read.
        host.tick()
        cpu, cpus, used, total, rss = host.read()
        snap.host.cpu_utilization_ratio = cpu
        snap.host.cpu_count = cpus
        snap.host.memory_used_bytes = used
        snap.host.memory_total_bytes = total
        snap.host.process_resident_bytes = rss
        now = time.time()
        snap.time.CopyFrom(timestamp(now))
        snap.uptime.CopyFrom(duration(now - started))
        return snap

    return build


def _instance_load(member: Member) -> stt_pb2.InstanceLoad:
    """One instance's row: its discovery record, its last snapshot and this router's streams."""
    info = member.info
    row = stt_pb2.InstanceLoad(
        instance_id=info.instance_id,
        pool=info.pool,
        model=info.model,
        address=info.target,
        capacity_class=info.capacity_class,
        region=info.region,
        gpu_type=info.gpu_type,
        accepting=member.accepting(),
        listed=member.listed,
        router_streams=member.inflight,
        max_streams=member.max_streams,
    )
    snapshot = member.snapshot
    age = member.telemetry_age_s()
    if snapshot is not None and age is not None:
        row.state = snapshot.state
        row.active_streams = snapshot.active_streams
        row.pending_work = snapshot.pending_work
        row.gpu_available = snapshot.gpu_available
        if snapshot.gpu_available:
            busiest = max_known(snapshot.gpus, "utilization_ratio")
            row.gpu_utilization_ratio = 0.0 if busiest is None else busiest
        row.telemetry_age.CopyFrom(duration(age))
        drain_left = member.drain_left_s()
        if drain_left is not None:
            row.drain_remaining.CopyFrom(duration(drain_left))
    return row
