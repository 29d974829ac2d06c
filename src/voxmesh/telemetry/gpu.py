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

Each figure is read on its own: one NVML does not support on a GPU (``Not Supported``,
often the power draw) is unknown and the GPU is still reported. A GPU that cannot be
opened at start-up, or stops answering later (lost, driver gone), is left out of the
readings and named, with NVML's error, in the sample's reason; the others are read.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["GpuReading", "GpuSample", "GpuSampler"]

logger = logging.getLogger(__name__)

_NVML_ERROR_NOT_SUPPORTED = 3
"""``NVML_ERROR_NOT_SUPPORTED`` of ``nvml.h``: the ``value`` of pynvml's
``NVMLError_NotSupported``, raised for a figure a GPU does not report."""


@dataclass(frozen=True)
class GpuReading:
    """One GPU's figures at one moment. A figure NVML does not support on this GPU
    (power draw on some boards) is None: unknown, never estimated."""

    index: int
    name: str
    utilization_ratio: float | None
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    temperature_celsius: float | None
    power_watts: float | None


@dataclass(frozen=True)
class GpuSample:
    """One read of the GPUs of this process."""

    readings: tuple[GpuReading, ...]
    """The GPUs read, in the order of the process's devices."""
    reason: str
    """Which GPUs of this process are missing from ``readings`` and why (NVML's error),
    or why the process has none; empty when every one was read."""

    @property
    def available(self) -> bool:
        """Whether at least one GPU was read."""
        return bool(self.readings)


class GpuSampler:
    """Reads the GPUs this process may use (module docstring). ``available`` and
    ``reason`` are those of the latest sample (before the first: of start-up)."""

    def __init__(self, nvml: Any = None, env: Mapping[str, str] | None = None) -> None:
        self._lock = threading.Lock()
        self.available = False
        self.reason = ""
        self._nvml: Any = None
        self._order: list[int] = []  # the GPUs of this process, unopened ones included
        self._handles: list[tuple[int, Any]] = []
        self._unopened: dict[int, str] = {}  # why NVML could not open a GPU at start-up
        self._names: dict[int, str] = {}
        self._failing: dict[int, str] = {}  # the error of each GPU whose last read failed
        self._unsupported: set[tuple[int, str]] = set()  # (GPU, figure) logged as such
        try:
            if nvml is None:
                nvml = importlib.import_module("pynvml")
            nvml.nvmlInit()
            devices, unopened = _open(nvml, nvml.nvmlDeviceGetCount())
            chosen, why_none = _visible(
                devices, lambda h: _uuid(nvml, h), os.environ if env is None else env
            )
            self._nvml = nvml
            self._order = [index for index, _ in chosen]
            self._handles = [(index, h) for index, h in chosen if h is not None]
            self._unopened = {i: unopened[i] for i in self._order if i in unopened}
            for index, handle in self._handles:
                with contextlib.suppress(Exception):  # read() retries it, and reports it
                    self._names[index] = _text(nvml.nvmlDeviceGetName(handle))
            self.available = bool(self._handles)
            self.reason = "; ".join(self._unopened.values()) or (
                "" if chosen else (why_none or "NVML found no GPU")
            )
        except Exception as err:  # NVMLError subclasses, ImportError, OSError
            self.reason = f"NVML unavailable: {err}"
        if not self.available:
            logger.info("no GPU telemetry: %s", self.reason)
        elif self.reason:
            logger.warning("GPU telemetry incomplete: %s", self.reason)

    def sample(self) -> GpuSample:
        """Current figures of every GPU that could be read, and why any other could not.

        A GPU that stops answering (lost, driver gone) is left out and named in the
        reason; a warning is logged when it fails and again only if its error changes,
        and an info line when it answers again."""
        if not self._order:
            return GpuSample((), self.reason)
        readings = []
        with self._lock:
            problems = dict(self._unopened)
            for index, handle in self._handles:
                try:
                    readings.append(self._read(index, handle))
                except Exception as err:  # NVMLError: GPU lost, driver unloaded, ...
                    problems[index] = f"GPU {index} could not be read: {err}"
                    if self._failing.get(index) != str(err):
                        logger.warning("GPU %d could not be read: %s", index, err)
                    self._failing[index] = str(err)
                    continue
                if self._failing.pop(index, None) is not None:
                    logger.info("GPU %d is read again", index)
            sample = GpuSample(
                tuple(readings), "; ".join(problems[i] for i in self._order if i in problems)
            )
            self.available, self.reason = sample.available, sample.reason
        return sample

    def read(self) -> list[GpuReading]:
        """Current figures of every GPU that could be read (empty when none)."""
        return list(self.sample().readings)

    def gpu_type(self) -> str:
        """The first GPU's short model name (read at start-up, so a GPU lost later does
        not change it), ``gpu`` while no name is known, or ``cpu`` with no GPU."""
        if not self._order:
            return "cpu"
        with self._lock:
            names = [self._names[i] for i in self._order if i in self._names]
        name = names[0].replace("NVIDIA ", "") if names else ""
        return name.split()[0] if name else "gpu"

    def _read(self, index: int, handle: Any) -> GpuReading:
        """One GPU's figures, each read on its own; raises when the GPU does not answer."""
        nvml = self._nvml
        util = self._figure(index, "utilization", nvml.nvmlDeviceGetUtilizationRates, handle)
        mem = self._figure(index, "memory", nvml.nvmlDeviceGetMemoryInfo, handle)
        temp = self._figure(
            index, "temperature", nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU
        )
        power = self._figure(index, "power draw", nvml.nvmlDeviceGetPowerUsage, handle)
        if index not in self._names:
            name = self._figure(index, "name", nvml.nvmlDeviceGetName, handle)
            if name is not None:
                self._names[index] = _text(name)
        return GpuReading(
            index=index,
            name=self._names.get(index, ""),
            utilization_ratio=None if util is None else util.gpu / 100.0,
            memory_used_bytes=None if mem is None else int(mem.used),
            memory_total_bytes=None if mem is None else int(mem.total),
            temperature_celsius=None if temp is None else float(temp),
            power_watts=None if power is None else power / 1000.0,
        )

    def _figure(self, index: int, figure: str, call: Callable[..., Any], *args: Any) -> Any:
        """``call(*args)``, or None when NVML does not support ``figure`` on this GPU
        (logged once); any other error is raised: the GPU could not be read."""
        try:
            return call(*args)
        except Exception as err:
            if getattr(err, "value", None) != _NVML_ERROR_NOT_SUPPORTED:
                raise
            if (index, figure) not in self._unsupported:
                self._unsupported.add((index, figure))
                logger.info("GPU %d does not report its %s: %s", index, figure, err)
            return None


def _open(nvml: Any, count: int) -> tuple[list[tuple[int, Any]], dict[int, str]]:
    """Every device as ``(NVML index, handle)``, the handle None where NVML could not
    open it, and why for those."""
    devices: list[tuple[int, Any]] = []
    unopened: dict[int, str] = {}
    for index in range(count):
        try:
            devices.append((index, nvml.nvmlDeviceGetHandleByIndex(index)))
        except Exception as err:  # NVMLError
            devices.append((index, None))
            unopened[index] = f"GPU {index} could not be opened: {err}"
    return devices, unopened


def _uuid(nvml: Any, handle: Any) -> str:
    """The device's UUID; empty (so no UUID entry matches it) when it cannot be read."""
    if handle is None:
        return ""
    try:
        return _text(nvml.nvmlDeviceGetUUID(handle))
    except Exception:  # NVMLError
        return ""


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
