"""GPU telemetry from NVML (nvidia-ml-py).

No GPU, no driver or no NVML library is reported as such, with the reason;
no GPU figure is ever estimated.

Only the GPUs this process may use are read, not every GPU of the node: NVML sees
them all when the task driver does not mask devices (Nomad's exec/raw_exec, or several
instances sharing a node), and another instance's load must not count as this one's.
The devices are those ``CUDA_VISIBLE_DEVICES`` names (UUIDs, or indices as NVML
numbers devices, in PCI bus order: CUDA agrees with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``;
empty or ``-1`` means none; entries that match no device are ignored) or, when it is
unset, the UUIDs in
``NVIDIA_VISIBLE_DEVICES`` (what Nomad's NVIDIA device plugin sets; indices there are
honoured only when NVML sees more GPUs than it lists, since a container runtime that
masks devices renumbers them from 0).
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from collections.abc import Callable, Mapping
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
    """Reads the GPUs this process may use (module docstring); ``available`` False with
    ``reason`` when there is none."""

    def __init__(self, nvml: Any = None, env: Mapping[str, str] | None = None) -> None:
        self._lock = threading.Lock()
        self.available = False
        self.reason = ""
        self._handles: list[tuple[int, Any]] = []
        try:
            if nvml is None:
                nvml = importlib.import_module("pynvml")
            nvml.nvmlInit()
            count = nvml.nvmlDeviceGetCount()
            devices = [(i, nvml.nvmlDeviceGetHandleByIndex(i)) for i in range(count)]
            self._nvml = nvml
            self._handles, why_none = _visible(
                devices,
                lambda h: _text(nvml.nvmlDeviceGetUUID(h)),
                os.environ if env is None else env,
            )
            self.available = bool(self._handles)
            self.reason = "" if self._handles else (why_none or "NVML found no GPU")
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
            for index, handle in self._handles:
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
                        name=_text(name),
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


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _visible(
    devices: list[tuple[int, Any]], uuid_of: Callable[[Any], str], env: Mapping[str, str]
) -> tuple[list[tuple[int, Any]], str]:
    """The ``(NVML index, handle)`` pairs this process may use, and why none when none."""
    cuda = env.get("CUDA_VISIBLE_DEVICES")
    if cuda is not None:
        entries = [e.strip() for e in cuda.split(",")]
        if not cuda.strip() or entries[0] == "-1":
            return [], f"no GPU visible to this process (CUDA_VISIBLE_DEVICES={cuda!r})"
        chosen = _matching(devices, uuid_of, entries, indices=True)
        why = f"no GPU matches CUDA_VISIBLE_DEVICES={cuda!r}"
        return chosen, "" if chosen else why
    nvidia = (env.get("NVIDIA_VISIBLE_DEVICES") or "").strip()
    if not nvidia or nvidia in ("all", "none", "void"):
        return devices, ""
    entries = [e.strip() for e in nvidia.split(",") if e.strip()]
    if len(devices) <= len(entries) and all(e.isdigit() for e in entries):
        return devices, ""  # a container runtime masked them: its indices are the host's
    chosen = _matching(devices, uuid_of, entries, indices=True)
    return chosen, "" if chosen else f"no GPU matches NVIDIA_VISIBLE_DEVICES={nvidia!r}"


def _matching(
    devices: list[tuple[int, Any]],
    uuid_of: Callable[[Any], str],
    entries: list[str],
    *,
    indices: bool,
) -> list[tuple[int, Any]]:
    """Devices named by ``entries``: a UUID (``GPU-...``, a unique prefix is enough, as
    CUDA allows) or, when ``indices``, an NVML index; in the order of the entries."""
    chosen: list[tuple[int, Any]] = []
    for entry in entries:
        if entry.isdigit():
            found = [d for d in devices if indices and d[0] == int(entry)]
        else:
            found = [d for d in devices if uuid_of(d[1]).startswith(entry)]
        if len(found) == 1 and found[0] not in chosen:
            chosen.append(found[0])
    return chosen
