"""Prometheus metrics of the autoscaler (``voxmesh_autoscaler_*``), on an injectable registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["AutoscalerMetrics"]

_STARTUP_BUCKETS = (1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0)


class AutoscalerMetrics:
    """Every metric the autoscaler exports, registered on one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.decisions = Counter(
            "voxmesh_autoscaler_decisions_total",
            "Decisions per evaluation and capacity group, by direction "
            "(up, down, hold; adopt for an external count change taken over).",
            ["pool", "group", "direction"],
            registry=r,
        )
        self.desired = Gauge(
            "voxmesh_autoscaler_desired_instances",
            "Instances the last decision wanted per capacity group.",
            ["pool", "group"],
            registry=r,
        )
        self.current = Gauge(
            "voxmesh_autoscaler_current_instances",
            "Serving plus starting instances per capacity group at the last evaluation.",
            ["pool", "group"],
            registry=r,
        )
        self.signal_age = Gauge(
            "voxmesh_autoscaler_signal_age_seconds",
            "Age of the oldest signal of the last evaluation (+Inf when signals are missing).",
            ["pool"],
            registry=r,
        )
        self.demand = Gauge(
            "voxmesh_autoscaler_demand_streams",
            "Active plus queued streams of the pool at the last evaluation.",
            ["pool"],
            registry=r,
        )
        self.refused = Counter(
            "voxmesh_autoscaler_scale_refused_total",
            "Scale actions not applied, one per evaluation, by reason (the target's refusal, "
            "or paused, dry-run, deferred, target-unavailable).",
            ["reason"],
            registry=r,
        )
        self.leader = Gauge(
            "voxmesh_autoscaler_leader",
            "1 while this replica holds the leader lock, else 0.",
            registry=r,
        )
        self.paused = Gauge(
            "voxmesh_autoscaler_paused",
            "1 while decisions for the pool are not applied (PausePool), else 0.",
            ["pool"],
            registry=r,
        )
        self.evaluation = Histogram(
            "voxmesh_autoscaler_evaluation_duration_seconds",
            "Time one evaluation of every pool took (target calls included).",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=r,
        )
        self.instance_startup = Histogram(
            "voxmesh_autoscaler_instance_startup_seconds",
            "Process start to SERVING of instances the local target started.",
            ["pool"],
            buckets=_STARTUP_BUCKETS,
            registry=r,
        )
