"""The contract between a signal source and the evaluation loop.

A source follows the live load of every pool (instance telemetry, router queues) in the
background (``run()``) and answers :meth:`SignalSource.read` from what it last saw, at once.
What a source cannot see is said, not guessed: a pool whose signals are missing carries a
``missing`` reason and the loop holds it (missing or stale signals never scale down).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

__all__ = ["InstanceLoad", "PoolLoad", "SignalSource"]


@dataclass(frozen=True)
class InstanceLoad:
    """The load of one instance as last reported."""

    instance_id: str
    """The instance's discovery id."""
    capacity_class: str
    """``on-demand`` or ``preemptible``."""
    active_streams: int
    """Streams it serves now."""
    max_streams: int
    """Its admission limit (0 when it did not say)."""
    serving: bool
    """True while it accepts new streams (False when starting or draining)."""
    gpu_utilisation: float | None = None
    """Busiest GPU's utilisation in [0, 1]; None without a GPU."""
    gpu_memory_ratio: float | None = None
    """Fullest GPU's used/total memory in [0, 1]; None without a GPU."""
    real_time_factor: float | None = None
    """Compute seconds per audio second of recent work; None when unknown."""


@dataclass(frozen=True)
class PoolLoad:
    """What a source knows about one pool's load."""

    pool: str
    """The pool."""
    active_streams: int = 0
    """Streams served by the pool's instances, draining ones included."""
    queued_realtime: int = 0
    """Realtime streams waiting in the routers' admission queues."""
    queued_batch: int = 0
    """Batch streams waiting in the routers' admission queues."""
    oldest_wait_s: float = 0.0
    """How long the oldest queued stream has waited."""
    max_streams: int | None = None
    """Per-instance stream limit reported by the pool's instances; None when none reported."""
    instances: tuple[InstanceLoad, ...] = ()
    """Every instance that reported, draining ones included."""
    age_s: float = math.inf
    """Age of the oldest signal this load is built from."""
    router_age_s: float = math.inf
    """Age of the oldest router signal: the routers' queued and in-flight streams, which
    give the demand on their own. Fresh while an instance's telemetry is stale, it still
    lets the pool grow (never shrink); ``inf`` when unknown (then ``age_s`` decides)."""
    missing: str = ""
    """Why the signals are missing or incomplete; empty when they are usable."""


class SignalSource(Protocol):
    """Follows the pools' load; implementations: gRPC telemetry and Prometheus."""

    async def run(self) -> None:
        """Follows the signals until :meth:`shutdown`."""
        ...

    async def shutdown(self) -> None:
        """Stops following; idempotent."""
        ...

    def read(self, pool: str) -> PoolLoad:
        """The pool's load as last seen (never blocks)."""
        ...

    def instance_streams(self, instance_id: str) -> int | None:
        """Active streams of one instance as last reported; None when unknown."""
        ...
