"""The voxmesh router: one endpoint in front of the ASR pools.

discovery + telemetry (membership) -> balancer (power of two choices) ->
admission (bounded per-pool queues) -> relay (per stream, with failover);
servicer exposes it over gRPC, app wires the process. stream_control (each
stream's attempts) and active (the streams in progress) are shared by the relay
and control, the control plane of the native data path (dataplane/, Go), which
dataplane starts as the public endpoint with data_path=native.
"""
