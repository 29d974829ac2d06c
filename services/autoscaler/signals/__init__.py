"""Signal sources: the live load of every pool, from gRPC telemetry or from Prometheus.

:mod:`.base` is the contract the evaluation loop reads (:class:`SignalSource`,
:class:`PoolLoad`); :mod:`.telemetry` and :mod:`.prometheus` implement it.
"""

from services.autoscaler.signals.base import InstanceLoad, PoolLoad, SignalSource

__all__ = ["InstanceLoad", "PoolLoad", "SignalSource"]
