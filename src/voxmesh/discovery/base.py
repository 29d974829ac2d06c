"""The discovery contract shared by every backend.

An ASR instance owns one :class:`Registrar`: it registers once it is SERVING,
marks itself draining on SIGTERM and deregisters before it exits. Routers and
autoscalers own :class:`Watcher` objects that yield the set of healthy
instances of a pool each time it changes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from voxmesh.rpc.address import host_port

__all__ = [
    "CAPACITY_ON_DEMAND",
    "CAPACITY_PREEMPTIBLE",
    "InstanceInfo",
    "Registrar",
    "Watcher",
    "consul_service_name",
    "scrape_labels",
]

CAPACITY_ON_DEMAND = "on-demand"
CAPACITY_PREEMPTIBLE = "preemptible"


def consul_service_name(pool: str) -> str:
    """The Consul service name of a pool: ``asr_small`` -> ``voxmesh-asr-small``."""
    return "voxmesh-" + pool.replace("_", "-")


def scrape_labels(info: InstanceInfo) -> dict[str, str]:
    """The Prometheus target labels of an instance: what the file registry writes into its
    ``file_sd`` targets and prometheus/prometheus.yml derives from the Consul meta."""
    return {
        "service": consul_service_name(info.pool),
        "pool": info.pool,
        "model": info.model,
        "instance_id": info.instance_id,
        "capacity_class": info.capacity_class,
        "gpu_type": info.gpu_type,
        "region": info.region,
    }


@dataclass(frozen=True)
class InstanceInfo:
    """What an instance tells discovery about itself."""

    instance_id: str
    """Unique id; the Consul service ID and the file registry's key."""
    pool: str
    """The pool it serves: ``asr_small`` or ``asr_large``."""
    model: str
    """The model it serves (``tiny.en``, ``base`` or a directory path)."""
    address: str
    """Host or IP the gRPC server listens on (reachable by the router)."""
    port: int
    """gRPC port."""
    capacity_class: str = CAPACITY_ON_DEMAND
    """``on-demand`` or ``preemptible``."""
    gpu_type: str = "cpu"
    """GPU model (``H100``) or ``cpu``."""
    region: str = "local"
    """Region (or datacenter) of the instance."""
    max_streams: int = 1
    """Admission limit: the most concurrent streams it accepts."""
    metrics_port: int = 0
    """Prometheus metrics HTTP port; 0 when not exposed."""
    draining: bool = False
    """True once the instance stopped accepting new streams."""
    meta: Mapping[str, str] = field(default_factory=dict)
    """Free-form extra metadata."""

    @property
    def target(self) -> str:
        """The gRPC target ``host:port``; an IPv6 literal in brackets (``[::1]:50051``)."""
        return host_port(self.address, self.port)


class Registrar(Protocol):
    """Announces one instance. Implementations are idempotent."""

    async def register(self, info: InstanceInfo) -> None:
        """Publishes the instance as healthy; keeps it alive until deregistered."""

    async def set_draining(self) -> None:
        """Stops new streams from being routed here (the instance still finishes its own).

        On the shutdown path: returns within seconds whatever the backend does."""

    async def deregister(self) -> None:
        """Removes the instance. Safe to call twice or before register.

        On the shutdown path: returns within seconds whatever the backend does."""


class Watcher(Protocol):
    """Follows the healthy instances of one pool."""

    def watch(self) -> AsyncIterator[list[InstanceInfo]]:
        """Yields the full healthy set at once and again whenever it changes.

        Errors of the backend are retried with backoff inside; the last good set
        stays in force meanwhile (nothing is yielded for an error).
        """
        ...
