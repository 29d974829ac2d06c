"""GPU telemetry from NVML (nvidia-ml-py).

No GPU, no driver or no NVML library is reported as such, with the reason;
no GPU figure is ever estimated.
"""

from __future__ import annotations

import importlib
import logging
import threading
from dataclasses import dataclass
from typing import Any

__all__ = ["GpuReading", "GpuSampler"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuReading:
    """One GPU's figures at one moment."""

    index: int
    name: str
    utilization_ratio: float
    memory_used_bytes: int
    memory_total_bytes: int
    temperature_celsius: float
    power_watts: float


class GpuSampler:
    """Reads every GPU NVML sees; ``available`` False with ``reason`` otherwise."""

    def __init__(self, nvml: Any = None) -> None:
        self._lock = threading.Lock()
        self.available = False
        self.reason = ""
        self._handles: list[Any] = []
        try:
            if nvml is None:
                nvml = importlib.import_module("pynvml")
            nvml.nvmlInit()
            count = nvml.nvmlDeviceGetCount()
            self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            self._nvml = nvml
            self.available = count > 0
            self.reason = "" if count else "NVML found no GPU"
        except Exception as err:  # NVMLError subclasses, ImportError, OSError
            self.reason = f"NVML unavailable: {err}"
        if not self.available:
            logger.info("no GPU telemetry: %s", self.reason)

    def read(self) -> list[GpuReading]:
        """Current figures of every GPU (empty when unavailable)."""
        if not self.available:
            return []
        nvml = self._nvml
        readings = []
        with self._lock:
            for index, handle in enumerate(self._handles):
                try:
                    util = nvml.nvmlDeviceGetUtilizationRates(handle)
                    mem = nvml.nvmlDeviceGetMemoryInfo(handle)
                    name = nvml.nvmlDeviceGetName(handle)
                    temp = nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)
                    power = nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0
                except Exception as err:
                    logger.warning("NVML read of GPU %d failed: %s", index, err)
                    continue
                readings.append(
                    GpuReading(
                        index=index,
                        name=name.decode() if isinstance(name, bytes) else str(name),
                        utilization_ratio=util.gpu / 100.0,
                        memory_used_bytes=int(mem.used),
                        memory_total_bytes=int(mem.total),
                        temperature_celsius=float(temp),
                        power_watts=float(power),
                    )
                )
        return readings

    def gpu_type(self) -> str:
        """The first GPU's short model name, or ``cpu``."""
        readings = self.read()
        if not readings:
            return "cpu"
        name = readings[0].name.replace("NVIDIA ", "")
        return name.split()[0] if name else "gpu"
