"""Prometheus metrics of an ASR instance (``voxmesh_asr_*``)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["AsrMetrics"]

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


@dataclass
class AsrMetrics:
    """Every metric an instance exports, on one registry."""

    registry: CollectorRegistry
    streams_active: Gauge
    streams_total: Counter
    decode_pending: Gauge
    batch_size: Histogram
    decode_seconds: Histogram
    queue_wait_seconds: Histogram
    finals_narrowed: Counter
    real_time_factor: Gauge
    audio_seconds: Counter
    results: Counter
    errors: Counter
    gpu_utilization: Gauge
    gpu_memory_used: Gauge
    gpu_memory_total: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> AsrMetrics:
        """Registers the metrics on ``registry`` (a fresh one by default)."""
        r = registry or CollectorRegistry()
        p = "voxmesh_asr_"
        return cls(
            registry=r,
            streams_active=Gauge(p + "streams_active", "Streams being served", registry=r),
            streams_total=Counter(p + "streams", "Streams accepted", registry=r),
            decode_pending=Gauge(
                p + "decode_pending", "Decode jobs waiting for the model", registry=r
            ),
            batch_size=Histogram(
                p + "batch_size",
                "Jobs per model call",
                buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32),
                registry=r,
            ),
            decode_seconds=Histogram(
                p + "decode_duration_seconds",
                "Model time per batch",
                buckets=_LATENCY_BUCKETS,
                registry=r,
            ),
            queue_wait_seconds=Histogram(
                p + "decode_queue_wait_seconds",
                "Time a job waited for the model",
                buckets=_LATENCY_BUCKETS,
                registry=r,
            ),
            finals_narrowed=Counter(
                p + "finals_narrowed",
                "Final decodes run greedily instead of with the final beam, because other"
                " decode work was waiting",
                registry=r,
            ),
            real_time_factor=Gauge(
                p + "real_time_factor",
                "Model seconds per second of audio received, over the last few seconds",
                registry=r,
            ),
            audio_seconds=Counter(p + "audio_seconds", "Seconds of audio received", registry=r),
            results=Counter(p + "results", "Results sent", ["kind"], registry=r),
            errors=Counter(
                p + "errors", "Streams and requests ended with an error", ["code"], registry=r
            ),
            gpu_utilization=Gauge(
                p + "gpu_utilization_ratio", "NVML GPU utilisation", ["gpu"], registry=r
            ),
            gpu_memory_used=Gauge(
                p + "gpu_memory_used_bytes", "NVML GPU memory used", ["gpu"], registry=r
            ),
            gpu_memory_total=Gauge(
                p + "gpu_memory_total_bytes", "NVML GPU memory total", ["gpu"], registry=r
            ),
        )

    def on_batch(self, size: int, seconds: float, waits: list[float], narrowed: int) -> None:
        """Scheduler hook: one model call finished."""
        self.batch_size.observe(size)
        self.finals_narrowed.inc(narrowed)
        self.decode_seconds.observe(seconds)
        for wait in waits:
            self.queue_wait_seconds.observe(wait)
