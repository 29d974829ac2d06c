"""Host CPU and memory telemetry (psutil)."""

from __future__ import annotations

import os

import psutil

__all__ = ["HostSampler"]


class HostSampler:
    """Host figures; CPU utilisation is measured between calls."""

    def __init__(self) -> None:
        self._process = psutil.Process(os.getpid())
        psutil.cpu_percent(interval=None)

    def read(self) -> tuple[float, int, int, int, int]:
        """(cpu ratio, cpu count, memory used, memory total, process RSS)."""
        vm = psutil.virtual_memory()
        return (
            psutil.cpu_percent(interval=None) / 100.0,
            psutil.cpu_count() or 1,
            int(vm.total - vm.available),
            int(vm.total),
            int(self._process.memory_info().rss),
        )
