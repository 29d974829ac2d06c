"""The state of one ASR process: model, scheduler, admission and telemetry.

Lifecycle (one per process)::

    STARTING ──model loaded and warmed up──▶ SERVING ──SIGTERM──▶ DRAINING ──▶ (exit)

Admission: at most ``max_streams`` streams at once; above it, and while
draining, a new stream is refused at once (RESOURCE_EXHAUSTED with a retry
hint, or UNAVAILABLE) so the router can place it elsewhere. One exception: a
stream the router sends as a last resort (no accepting instance had room) is
taken while draining if a slot is free and at least ``last_resort_min_drain``
seconds of the drain are left; the streams still running when the drain ends
are failed over by the router.

Load figures: the real-time factor and the host CPU utilisation are measured over
the trailing ``load_window`` seconds (5 by default), from samples the instance
records on its own cadence once started, so that every telemetry subscriber and
the Prometheus gauge see the same figure, however many read it and however often.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from google.protobuf import timestamp_pb2
from prometheus_client import Gauge

from voxmesh import tasks
from voxmesh.asr.decoder import Decoder
from voxmesh.asr.metrics import AsrMetrics
from voxmesh.asr.results import duration
from voxmesh.asr.scheduler import DecodeScheduler, SchedulerOptions
from voxmesh.asr.session import SessionOptions
from voxmesh.errors import Draining, InstanceFull
from voxmesh.stt.v1 import stt_pb2
from voxmesh.telemetry import GpuReading, GpuSampler, HostSampler
from voxmesh.telemetry.host import TrailingWindow

__all__ = ["AsrInstance", "InstanceIdentity"]

_LOAD_SAMPLES = 10
"""Samples of the load counters per ``load_window`` (how finely the window slides)."""


@dataclass(frozen=True)
class InstanceIdentity:
    """Who this instance is (reported in summaries, telemetry and discovery)."""

    instance_id: str
    pool: str
    model: str
    capacity_class: str = "on-demand"
    region: str = "local"
    gpu_type: str = "cpu"


class AsrInstance:
    """Shared state of the servicers of one process.

    ``load_window``: the trailing seconds the real-time factor and the host CPU
    utilisation are measured over; ``clock``: the clock of those figures and of the
    drain deadline.
    """

    def __init__(
        self,
        identity: InstanceIdentity,
        decoder: Decoder,
        scheduler_options: SchedulerOptions,
        session_options: SessionOptions,
        *,
        max_streams: int,
        retry_after: float,
        metrics: AsrMetrics,
        gpu: GpuSampler | None = None,
        last_resort_min_drain: float = 30.0,
        load_window: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.identity = identity
        self.decoder = decoder
        self.session_options = session_options
        self.max_streams = max_streams
        self.retry_after = retry_after
        self.metrics = metrics
        self.last_resort_min_drain = last_resort_min_drain
        self._clock = clock
        self._drain_ends: float | None = None
        self.scheduler = DecodeScheduler(decoder, scheduler_options, on_batch=metrics.on_batch)
        self.state = stt_pb2.SERVING_STATE_STARTING
        self.active = 0
        self.audio_seconds = 0.0
        self._idle = asyncio.Event()
        self._idle.set()
        self._gpu = gpu or GpuSampler()
        self._host = HostSampler(load_window, clock=clock)
        self._gpu_series: dict[Gauge, set[str]] = {}
        self._started = clock()
        self._load = TrailingWindow(load_window, self._load_counters(), clock)
        self._sampler: asyncio.Task[None] | None = None
        metrics.real_time_factor.set_function(self.real_time_factor)

    def start(self) -> None:
        """Starts the scheduler and the load sampling, and takes streams."""
        self.scheduler.start()
        if self._sampler is None:
            self._sampler = asyncio.create_task(self._sample_load(), name="voxmesh-load-sampler")
        self.state = stt_pb2.SERVING_STATE_SERVING

    def begin_drain(self, timeout: float | None = None) -> None:
        """No new streams from now on (but last-resort ones); the active streams have
        ``timeout`` seconds to finish (None: unbounded, so no last-resort streams)."""
        self.state = stt_pb2.SERVING_STATE_DRAINING
        self._drain_ends = None if timeout is None else self._clock() + timeout

    def drain_remaining(self) -> float | None:
        """Seconds left of the drain; None when not draining or unbounded."""
        if self.state != stt_pb2.SERVING_STATE_DRAINING or self._drain_ends is None:
            return None
        return max(0.0, self._drain_ends - self._clock())

    @contextlib.contextmanager
    def admit(self, *, last_resort: bool = False) -> Iterator[None]:
        """Holds one stream slot; raises when none is free or while draining (unless
        ``last_resort`` and the drain has at least ``last_resort_min_drain`` s left)."""
        if self.state == stt_pb2.SERVING_STATE_DRAINING:
            remaining = self.drain_remaining()
            if not last_resort or remaining is None or remaining < self.last_resort_min_drain:
                raise Draining(f"instance {self.identity.instance_id} is draining: retry elsewhere")
        elif self.state != stt_pb2.SERVING_STATE_SERVING:
            raise Draining(f"instance {self.identity.instance_id} is still starting")
        if self.active >= self.max_streams:
            raise InstanceFull(
                f"instance {self.identity.instance_id} is at its limit of "
                f"{self.max_streams} concurrent streams",
                self.retry_after,
            )
        self.active += 1
        self._idle.clear()
        self.metrics.streams_active.set(self.active)
        self.metrics.streams_total.inc()
        try:
            yield
        finally:
            self.active -= 1
            self.metrics.streams_active.set(self.active)
            if self.active == 0:
                self._idle.set()

    def add_audio(self, seconds: float) -> None:
        """Counts received audio."""
        self.audio_seconds += seconds
        self.metrics.audio_seconds.inc(seconds)

    async def wait_idle(self, timeout: float) -> bool:
        """Waits until no stream is active; False on timeout. A drain that ends idle is
        over: from then on no last-resort stream is taken either (what is left is to
        deregister and stop, which would cut it within a second)."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        if self.state == stt_pb2.SERVING_STATE_DRAINING and self._drain_ends is not None:
            self._drain_ends = min(self._drain_ends, self._clock())
        return True

    def _load_counters(self) -> tuple[float, float]:
        return self.scheduler.stats.busy_seconds, self.audio_seconds

    def sample_load(self) -> None:
        """Records one sample of the load counters and of the host CPU time, and
        refreshes the gauges a telemetry snapshot also sets (pending decodes, GPUs), so
        that Prometheus reads current figures with no telemetry subscriber (once
        started, the instance does so every ``load_window / 10`` s)."""
        self._load.record(self._load_counters())
        self._host.tick()
        self.metrics.decode_pending.set(self.scheduler.pending)
        self._set_gpu_gauges(self._gpu.sample().readings)

    async def _sample_load(self) -> None:
        while True:
            await asyncio.sleep(self._load.window / _LOAD_SAMPLES)
            self.sample_load()

    def real_time_factor(self) -> float:
        """Model seconds per second of audio received, over the trailing load window
        (0 when no audio came in). Reading it changes nothing (any thread may)."""
        busy, audio = self._load.growth(self._load_counters())
        return busy / audio if audio > 0 else 0.0

    def snapshot(self) -> stt_pb2.TelemetrySnapshot:
        """The instance's state now (also refreshes the gauges)."""
        pending = self.scheduler.pending
        rtf = self.real_time_factor()
        self.metrics.decode_pending.set(pending)
        cpu, cpus, used, total, rss = self._host.read()
        gpus = self._gpu.sample()
        now = timestamp_pb2.Timestamp()
        now.GetCurrentTime()
        snap = stt_pb2.TelemetrySnapshot(
            instance_id=self.identity.instance_id,
            role=stt_pb2.ROLE_ASR,
            model=self.identity.model,
            pool=self.identity.pool,
            capacity_class=self.identity.capacity_class,
            region=self.identity.region,
            gpu_type=self.identity.gpu_type,
            state=self.state,
            active_streams=self.active,
            max_streams=self.max_streams,
            pending_work=pending,
            real_time_factor=rtf,
            audio_seconds_total=self.audio_seconds,
            gpu_available=gpus.available,
            gpu_unavailable_reason=gpus.reason,
            host=stt_pb2.HostStats(
                cpu_utilization_ratio=cpu,
                cpu_count=cpus,
                memory_used_bytes=used,
                memory_total_bytes=total,
                process_resident_bytes=rss,
            ),
            time=now,
            uptime=duration(self._clock() - self._started),
        )
        remaining = self.drain_remaining()
        if remaining is not None:
            snap.drain_remaining.CopyFrom(duration(remaining))
        for g in gpus.readings:
            figures = {
                "utilization_ratio": g.utilization_ratio,
                "memory_used_bytes": g.memory_used_bytes,
                "memory_total_bytes": g.memory_total_bytes,
                "temperature_celsius": g.temperature_celsius,
                "power_watts": g.power_watts,
            }
            # A figure NVML does not report is left 0 and named (GpuStats has no presence).
            known: dict[str, float] = {k: v for k, v in figures.items() if v is not None}
            unknown = [k for k, v in figures.items() if v is None]
            snap.gpus.add(index=g.index, name=g.name, unknown_figures=unknown, **known)
        self._set_gpu_gauges(gpus.readings)
        return snap

    def _set_gpu_gauges(self, readings: Sequence[GpuReading]) -> None:
        """Sets the GPU gauges from the latest sample and removes the series of every
        GPU not in it (lost) or figure unknown, so that none shows a stale value."""
        m = self.metrics
        for gauge, figures in (
            (m.gpu_utilization, {g.index: g.utilization_ratio for g in readings}),
            (m.gpu_memory_used, {g.index: g.memory_used_bytes for g in readings}),
            (m.gpu_memory_total, {g.index: g.memory_total_bytes for g in readings}),
        ):
            fresh = {str(i): value for i, value in figures.items() if value is not None}
            for label, value in fresh.items():
                gauge.labels(label).set(value)
            for label in self._gpu_series.get(gauge, set()) - fresh.keys():
                gauge.remove(label)
            self._gpu_series[gauge] = set(fresh)

    async def shutdown(self) -> None:
        """Stops the load sampling and the scheduler (idempotent)."""
        if self._sampler is not None:
            await tasks.stop(self._sampler)
        await self.scheduler.shutdown()
