"""Prometheus metrics of the router (``voxmesh_router_*``).

The admission figures here are the ones the router's telemetry stream sends
as ``QueueStats``; the autoscaler scales on either.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["QUEUE_FULL", "QUEUE_TIMEOUT", "ROUTER_FULL", "RouterMetrics"]

QUEUE_FULL = "queue_full"
"""``rejected_total`` reason: the pool's admission queue is full."""
QUEUE_TIMEOUT = "timeout"
"""``rejected_total`` reason: no instance freed up within the queue's max wait."""
ROUTER_FULL = "router_full"
"""``rejected_total`` reason (pool ``any``): the router's own stream limit."""

_WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
)


class RouterMetrics:
    """All router metrics, registered on one (injectable) registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.queue_depth = Gauge(
            "voxmesh_router_queue_depth",
            "Streams waiting in the admission queue.",
            ["pool", "priority"],
            registry=registry,
        )
        self.queue_bytes = Gauge(
            "voxmesh_router_queue_bytes",
            "Audio bytes buffered for waiting streams.",
            ["pool"],
            registry=registry,
        )
        self.queue_wait = Histogram(
            "voxmesh_router_queue_wait_seconds",
            "Time streams waited for an instance (admitted or not).",
            ["pool", "priority"],
            buckets=_WAIT_BUCKETS,
            registry=registry,
        )
        self.admitted = Counter(
            "voxmesh_router_admitted_total",
            "Streams given an instance (failovers included).",
            ["pool"],
            registry=registry,
        )
        self.rejected = Counter(
            "voxmesh_router_rejected_total",
            "Streams rejected with RESOURCE_EXHAUSTED: by a pool's admission queue, or by the "
            "router's own stream limit (pool any, reason router_full).",
            ["pool", "reason"],
            registry=registry,
        )
        self.instance_rejections = Counter(
            "voxmesh_router_instance_rejections_total",
            "RESOURCE_EXHAUSTED answers of instances that the router absorbed.",
            ["pool"],
            registry=registry,
        )
        self.last_resort = Counter(
            "voxmesh_router_last_resort_total",
            "Streams sent to a draining instance because no accepting one had room.",
            ["pool"],
            registry=registry,
        )
        self.failovers = Counter(
            "voxmesh_router_failovers_total",
            "Streams moved to another instance after a failure.",
            ["pool"],
            registry=registry,
        )
        self.streams_active = Gauge(
            "voxmesh_router_streams_active",
            "Streams and unary requests the router is serving (queued or relayed).",
            ["pool"],
            registry=registry,
        )
        self.streams = Counter(
            "voxmesh_router_streams_total",
            "Streams ended, by gRPC status code.",
            ["pool", "code"],
            registry=registry,
        )
        self.added_latency = Histogram(
            "voxmesh_router_added_latency_seconds",
            "Time a message spends inside the router, by direction (one message in 8 timed).",
            ["direction"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.control_batch_events = Histogram(
            "voxmesh_router_control_batch_events",
            "Stream events per message from the native data path (control_batch_wait_s "
            "gathers them).",
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self.instances = Gauge(
            "voxmesh_router_instances",
            "Instances known from discovery, by pool and whether they take new streams.",
            ["pool", "state"],
            registry=registry,
        )
        self.capacity = Gauge(
            "voxmesh_router_capacity_streams",
            "Sum of max_streams of the pool's serving instances.",
            ["pool"],
            registry=registry,
        )

    def start_at_zero(self, pools: list[str]) -> None:
        """Creates every pool's event counters (and the latency histogram) at 0, so that
        the first event is an increase that ``rate()``/``increase()`` see (a series that
        appears at 1 is not)."""
        for pool in pools:
            for reason in (QUEUE_FULL, QUEUE_TIMEOUT):
                self.rejected.labels(pool, reason)
            self.admitted.labels(pool)
            self.instance_rejections.labels(pool)
            self.failovers.labels(pool)
            self.last_resort.labels(pool)
        self.rejected.labels("any", ROUTER_FULL)
        for direction in ("upstream", "downstream"):
            self.added_latency.labels(direction)
