"""Telemetry sampling shared by every service: NVML GPUs and the host."""

from voxmesh.telemetry.gpu import GpuReading, GpuSample, GpuSampler
from voxmesh.telemetry.host import HostSampler
from voxmesh.telemetry.stats import known_figure

__all__ = ["GpuReading", "GpuSample", "GpuSampler", "HostSampler", "known_figure"]
