"""Host CPU and memory telemetry (psutil), and the trailing window its CPU figure
(and an ASR instance's real-time factor) is measured over.

A figure measured "since the previous read" depends on who reads it: with two
readers, each sees only the load since the other's last read. These figures are
instead measured over a fixed trailing window, from samples their owner records on
its own cadence; a read stores nothing, so every reader, however many there are
and however often they read, gets the same figure.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from collections.abc import Callable

import psutil

__all__ = ["HostSampler", "TrailingWindow", "host_cpu_seconds"]


class TrailingWindow:
    """How much some cumulative counters grew over the trailing ``window`` seconds.

    :meth:`record` keeps a sample of the counters: the owner calls it on its own
    steady cadence (every ``window / 10`` s, say), never on a read. :meth:`growth`
    compares the counters' values now with the newest sample at least ``window`` s
    old (with the oldest sample while none is that old yet), and stores nothing.
    Safe to use from several threads (Prometheus reads gauges from its own).
    """

    def __init__(
        self,
        window: float,
        values: tuple[float, ...],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window <= 0:
            raise ValueError(f"window must be > 0, got {window}")
        self.window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._samples: collections.deque[tuple[float, tuple[float, ...]]] = collections.deque()
        self._samples.append((clock(), values))

    def record(self, values: tuple[float, ...]) -> None:
        """Keeps a sample of the counters, now; drops the samples no read needs any more
        (all but the newest one at least ``window`` s old)."""
        now = self._clock()
        with self._lock:
            self._samples.append((now, values))
            while len(self._samples) > 1 and self._samples[1][0] <= now - self.window:
                self._samples.popleft()

    def growth(self, values: tuple[float, ...]) -> tuple[float, ...]:
        """``values`` (the counters now) less the counters ``window`` s ago: those of
        the newest sample at least that old, or of the oldest sample."""
        since = self._clock() - self.window
        with self._lock:
            base = self._samples[0][1]
            for when, sampled in self._samples:
                if when > since:
                    break
                base = sampled
        return tuple(now - then for now, then in zip(values, base, strict=True))


def host_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of every CPU of the host since boot, counted the way
    :func:`psutil.cpu_percent` counts them (I/O wait is idle; guest time is already
    in user time)."""
    times = psutil.cpu_times()
    total = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
    return total - times.idle - getattr(times, "iowait", 0.0), total


class HostSampler:
    """Host figures; CPU utilisation is measured over the trailing ``window`` seconds,
    from samples :meth:`tick` records (call it every ``window / 10`` s or so)."""

    def __init__(
        self,
        window: float = 5.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        cpu_seconds: Callable[[], tuple[float, float]] = host_cpu_seconds,
    ) -> None:
        self._process = psutil.Process(os.getpid())
        self._cpu_seconds = cpu_seconds
        self._cpu = TrailingWindow(window, cpu_seconds(), clock)

    def tick(self) -> None:
        """Records a sample of the host's CPU time."""
        self._cpu.record(self._cpu_seconds())

    def cpu_utilization(self) -> float:
        """Host-wide CPU utilisation in [0, 1] over the trailing window."""
        busy, total = self._cpu.growth(self._cpu_seconds())
        return min(1.0, max(0.0, busy / total)) if total > 0 else 0.0

    def read(self) -> tuple[float, int, int, int, int]:
        """(cpu ratio, cpu count, memory used, memory total, process RSS)."""
        vm = psutil.virtual_memory()
        return (
            self.cpu_utilization(),
            psutil.cpu_count() or 1,
            int(vm.total - vm.available),
            int(vm.total),
            int(self._process.memory_info().rss),
        )
