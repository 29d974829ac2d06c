"""Fakes of the autoscaler's contracts, for unit and integration tests.

They implement the real protocols (:class:`SignalSource`, :class:`ScaleTarget`,
:class:`LeaderLock`) with state the test sets: loads, group counts, lock grants.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

from services.autoscaler.signals.base import PoolLoad
from services.autoscaler.targets.base import (
    CapacityClass,
    GroupStatus,
    Reclaim,
    Refusal,
    ScaleOutcome,
    ScaleResult,
    ScalingEvent,
    TargetUnavailable,
)

__all__ = ["OD", "PE", "POOL", "Clock", "FakeGroup", "FakeLock", "FakeSource", "FakeTarget"]

POOL = "asr_small"
OD = "asr_small/on-demand"
PE = "asr_small/preemptible"


class Clock:
    """A monotonic clock moved by hand, with the wall clock it stands for."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        """Seconds since the epoch at ``now`` (1.7e9 at the start)."""
        return 1.7e9 - 1000.0 + self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeSource:
    """A :class:`SignalSource` whose loads the test sets."""

    def __init__(self) -> None:
        self.loads: dict[str, PoolLoad] = {}
        self.errors: dict[str, Exception] = {}
        """What reading a pool raises (a fault in the source)."""
        self._stop = asyncio.Event()

    async def run(self) -> None:
        await self._stop.wait()

    async def shutdown(self) -> None:
        self._stop.set()

    def read(self, pool: str) -> PoolLoad:
        if pool in self.errors:
            raise self.errors[pool]
        return self.loads.get(pool, PoolLoad(pool, age_s=0.5, max_streams=1))

    def instance_streams(self, instance_id: str) -> int | None:
        del instance_id
        return None

    def demand(self, active: int = 0, queued: int = 0, *, age_s: float = 0.5) -> None:
        self.loads[POOL] = PoolLoad(
            POOL, active_streams=active, queued_realtime=queued, max_streams=1, age_s=age_s
        )


@dataclass
class FakeGroup:
    capacity_class: CapacityClass
    count: int = 0
    running: int = 0
    max_count: int | None = None
    external: ScalingEvent | None = None


@dataclass
class FakeTarget:
    """A :class:`ScaleTarget`; instances start when the test says (``settle``)."""

    groups: dict[str, FakeGroup] = field(
        default_factory=lambda: {OD: FakeGroup(CapacityClass.ON_DEMAND, 1, 1)}
    )
    calls: list[tuple[str, int, str]] = field(default_factory=list)
    status_calls: int = 0
    refuse: Refusal | None = None
    unavailable: bool = False
    reclaims: list[Reclaim] = field(default_factory=list)
    errors: dict[str, Exception] = field(default_factory=dict)
    """Raised by ``scale`` for the named groups: a target failing in a way it should not."""
    status_error: Exception | None = None
    """Raised by ``status``: an answer the target could not read."""
    status_stalls: bool = False
    """``status`` never answers (a Nomad call hanging on a dead connection)."""

    async def status(self) -> dict[str, GroupStatus]:
        self.status_calls += 1
        if self.status_stalls:
            await asyncio.Event().wait()
        if self.unavailable:
            raise TargetUnavailable("nomad answered 503: no leader")
        if self.status_error is not None:
            raise self.status_error
        return {
            name: GroupStatus(
                name=name,
                pool=POOL,
                capacity_class=g.capacity_class,
                desired=g.count,
                running=g.running,
                placed=g.count,
                healthy=g.running,
                pending=g.count - g.running,
                max_count=g.max_count,
                external_change=g.external,
            )
            for name, g in self.groups.items()
        }

    async def scale(
        self, group: str, count: int, reason: str, meta: Mapping[str, str] | None = None
    ) -> ScaleResult:
        self.calls.append((group, count, reason))
        if group in self.errors:
            raise self.errors[group]
        g = self.groups[group]
        previous = g.count
        if self.refuse is not None:
            return ScaleResult(
                group, ScaleOutcome.REFUSED, count, count, previous, self.refuse, "busy"
            )
        if count == previous:
            return ScaleResult(group, ScaleOutcome.UNCHANGED, count, count, previous)
        g.count = count
        g.running = min(g.running, count)  # a scale-down stops instances at once
        return ScaleResult(group, ScaleOutcome.APPLIED, count, count, previous)

    async def reclaiming(self) -> list[Reclaim]:
        return list(self.reclaims)

    def settle(self) -> None:
        for g in self.groups.values():
            g.running = g.count


class FakeLock:
    """A :class:`LeaderLock` granted and taken away by the test."""

    def __init__(self, grant: bool = True) -> None:
        self.grant = grant
        self.is_leader = False
        self.released = 0
        self.tries = 0
        self._lost = asyncio.Event()

    async def acquire(self) -> bool:
        self.tries += 1
        if self.grant:
            self.is_leader = True
            self._lost = asyncio.Event()
        return self.is_leader

    async def hold(self) -> None:
        await self._lost.wait()

    async def release(self) -> None:
        self.released += 1
        self.is_leader = False
        self._lost.set()

    def lose(self) -> None:
        self.is_leader, self.grant = False, False
        self._lost.set()
