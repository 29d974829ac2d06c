"""The router's gRPC services: the public RecognizerService and its TelemetryService.

The router answers exactly like an instance: the same validation (hence the
same statuses for bad input), the instance's own status passed through for
everything the router cannot check, and only the summary telling which
instance served the stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from services.router.admission import Admission
from services.router.membership import Member, Membership
from services.router.metrics import ROUTER_FULL, RouterMetrics
from services.router.relay import FAILOVER_CODES, RelayLimits, StreamRelay, UpstreamError
from services.router.routing import PoolResolver
from voxmesh.asr.config import idle_wait, validate_recognition_config
from voxmesh.errors import InvalidArgument, ResourceExhausted, Unavailable, VoxmeshError
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

    def __init__(
        self,
        *,
        resolver: PoolResolver,
        membership: Membership,
        admission: Admission[Member],
        limits: RelayLimits,
        metrics: RouterMetrics,
        max_streams: int,
        retry_after_s: float,
    ) -> None:
        self._resolver = resolver
        self._membership = membership
        self._admission = admission
        self._limits = limits
        self._metrics = metrics
        self._max_streams = max_streams
        self._retry_after_s = retry_after_s
        self._draining = False
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.audio_seconds_total = 0.0
        """Seconds of LINEAR16 audio relayed by finished streams."""

    @property
    def active_streams(self) -> int:
        """Streams being served (queued or relayed)."""
        return self._active

    @property
    def draining(self) -> bool:
        """True once the router takes no new streams."""
        return self._draining

    def begin_drain(self) -> None:
        """Refuses new streams with UNAVAILABLE; active ones go on."""
        self._draining = True

    async def wait_idle(self, limit_s: float) -> bool:
        """Waits up to ``limit_s`` seconds for the active streams to end; True if they did."""
        try:
            async with asyncio.timeout(limit_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    # grpc.aio also takes handlers that write with ``context.write`` and return
    # None; the generated base class only declares the iterator form.
    async def StreamingRecognize(  # type: ignore[override]
        self,
        request_iterator: AsyncIterator[stt_pb2.StreamingRecognizeRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        """Validates the config, admits the stream and relays it."""
        pool = "unknown"
        self._enter()
        try:
            self._check_open()
            first = await idle_wait(
                anext(aiter(request_iterator), None),
                self._limits.idle_timeout_s,
                "streaming_config",
            )
            if first is None:
                raise InvalidArgument("empty stream: the first request must carry streaming_config")
            if first.WhichOneof("streaming_request") != "streaming_config":
                raise InvalidArgument(
                    "audio before config: the first request must carry streaming_config"
                )
            route = self._resolver.route(first.streaming_config, self._membership.served_models())
            pool = route.pool
            forwarded = stt_pb2.StreamingRecognizeRequest()
            forwarded.CopyFrom(first)
            forwarded.streaming_config.config.model = route.pool
            forwarded.streaming_config.stream_id = route.stream_id
            relay = StreamRelay(
                route=route,
                config=forwarded,
                context=context,
                admission=self._admission,
                limits=self._limits,
                metrics=self._metrics,
            )
            self._metrics.streams_active.labels(pool).inc()
            try:
                await relay.run(request_iterator)
            finally:
                self._metrics.streams_active.labels(pool).dec()
                self.audio_seconds_total += relay.audio_seconds()
            self._metrics.streams.labels(pool, "OK").inc()
        except VoxmeshError as err:
            self._metrics.streams.labels(pool, status.code_of(err).name).inc()
            await status.abort(context, err)
        except UpstreamError as err:
            self._metrics.streams.labels(pool, err.error.code().name).inc()
            await err.abort(context)
        except asyncio.CancelledError:
            self._metrics.streams.labels(pool, "CANCELLED").inc()
            raise
        finally:
            self._leave()

    async def Recognize(
        self, request: stt_pb2.RecognizeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> stt_pb2.RecognizeResponse:
        """Sends a whole file to one instance (another if it fails or is full)."""
        pool = "unknown"
        self._enter()
        try:
            self._check_open()
            validate_recognition_config(request.config)
            pool = self._resolver.resolve(request.config, self._membership.served_models())
            self._metrics.streams_active.labels(pool).inc()
            try:
                response = await self._recognize(pool, request, context)
            finally:
                self._metrics.streams_active.labels(pool).dec()
            self._metrics.streams.labels(pool, "OK").inc()
            return response
        except VoxmeshError as err:
            self._metrics.streams.labels(pool, status.code_of(err).name).inc()
            await status.abort(context, err)
        except UpstreamError as err:
            self._metrics.streams.labels(pool, err.error.code().name).inc()
            await err.abort(context)
        finally:
            self._leave()
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
        realtime = request.config.priority == stt_pb2.PRIORITY_REALTIME
        exclude: set[str] = set()
        failovers = 0
        place = self._admission.place()  # kept while instances refuse the request
        while True:
            member = await self._admission.admit(
                pool,
                realtime,
                exclude=exclude,
                resumed=failovers > 0,
                buffered=lambda: len(request.audio_content),
                place=place,
            )
            last_resort = member.open_metadata()
            if last_resort:
                self._metrics.last_resort.labels(pool).inc()
            full = False
            try:
                response: stt_pb2.RecognizeResponse = await member.recognizer.Recognize(
                    forwarded, timeout=context.time_remaining(), metadata=last_resort or None
                )
            except grpc.aio.AioRpcError as err:
                if status.instance_full(err) or status.not_accepting(err):
                    # Back to the queue; the instance stays full until it reports again.
                    self._metrics.instance_rejections.labels(pool).inc()
                    full = True
                    continue
                if err.code() not in FAILOVER_CODES:
                    raise UpstreamError(err) from None
                member.mark_failed()
                exclude.add(member.instance_id)
                place = self._admission.place()
                failovers += 1
                self._metrics.failovers.labels(pool).inc()
                if failovers > self._limits.max_failovers:
                    raise Unavailable(f"request failed on {failovers} instances") from None
                continue
            finally:
                member.release(full=full)
            response.summary.failovers = failovers
            return response

    def _check_open(self) -> None:
        """Refuses a new stream while draining or past the router's own limit."""
        if self._draining:
            raise Unavailable("the router is draining; retry on another router")
        if self._max_streams and self._active > self._max_streams:
            self._metrics.rejected.labels("any", ROUTER_FULL).inc()
            raise ResourceExhausted(
                f"the router is at capacity ({self._max_streams} streams); retry later",
                retry_after=self._retry_after_s,
            )

    def _enter(self) -> None:
        self._active += 1
        self._idle.clear()

    def _leave(self) -> None:
        self._active -= 1
        if self._active == 0:
            self._idle.set()


class RouterTelemetry(stt_pb2_grpc.TelemetryServiceServicer):
    """TelemetryService of the router: its streams, the admission queues and each instance."""

    def __init__(self, snapshot: Callable[[], stt_pb2.TelemetrySnapshot]) -> None:
        self._snapshot = snapshot

    async def WatchTelemetry(
        self, request: stt_pb2.WatchTelemetryRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[stt_pb2.WatchTelemetryResponse]:
        """One snapshot now, then one per interval until cancelled."""
        interval = request.interval.ToTimedelta().total_seconds()
        if request.HasField("interval") and interval < _MIN_TELEMETRY_INTERVAL_S:
            await status.abort(
                context,
                InvalidArgument(f"interval {interval} s is below the minimum of 0.1 s"),
            )
        interval = interval or _DEFAULT_TELEMETRY_INTERVAL_S
        while True:
            yield stt_pb2.WatchTelemetryResponse(snapshot=self._snapshot())
            await asyncio.sleep(interval)


def snapshot_builder(
    router_id: str,
    pools: list[str],
    recognizer: RouterRecognizer,
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
            if recognizer.draining
            else stt_pb2.SERVING_STATE_SERVING,
            active_streams=recognizer.active_streams,
            pending_work=admission.queued(),
            audio_seconds_total=recognizer.audio_seconds_total,
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
