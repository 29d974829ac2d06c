"""The voxmesh router: one endpoint in front of the ASR pools.

discovery + telemetry (membership) -> balancer (power of two choices) ->
admission (bounded per-pool queues) -> relay (per stream, with failover);
servicer exposes it over gRPC, app wires the process.
"""
