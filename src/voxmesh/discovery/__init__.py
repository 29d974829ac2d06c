"""Service discovery: how instances announce themselves and how the router and
autoscaler find them. One interface (:mod:`.base`), two backends: Consul
(:mod:`.consul`) and a file registry for single-machine mode (:mod:`.file`).
:mod:`.consul_address` reads the Consul agent address every service is given."""

from voxmesh.discovery.base import (
    CAPACITY_ON_DEMAND,
    CAPACITY_PREEMPTIBLE,
    InstanceInfo,
    Registrar,
    Watcher,
    consul_service_name,
    scrape_labels,
)

__all__ = [
    "CAPACITY_ON_DEMAND",
    "CAPACITY_PREEMPTIBLE",
    "InstanceInfo",
    "Registrar",
    "Watcher",
    "consul_service_name",
    "scrape_labels",
]
