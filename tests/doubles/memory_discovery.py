"""An in-memory discovery double: the test decides which instances are healthy.

It implements :class:`voxmesh.discovery.Watcher` exactly (the full set at
once, then again on every change) without any registry behind it, for tests
that are about the router, not about a discovery backend.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from voxmesh.discovery import InstanceInfo, Watcher

__all__ = ["MemoryDiscovery"]


class MemoryDiscovery:
    """Healthy sets per pool, changed by the test, followed by watchers."""

    def __init__(self) -> None:
        self._instances: dict[str, InstanceInfo] = {}
        self._changed = asyncio.Event()

    def put(self, info: InstanceInfo) -> None:
        """Adds or replaces an instance."""
        self._instances[info.instance_id] = info
        self._notify()

    def remove(self, instance_id: str) -> None:
        """Removes an instance (it left, or turned unhealthy)."""
        self._instances.pop(instance_id, None)
        self._notify()

    def watcher(self, pool: str) -> Watcher:
        """A watcher of ``pool``."""
        return _MemoryWatcher(self, pool)

    def current(self, pool: str) -> list[InstanceInfo]:
        """The healthy set of ``pool`` now."""
        return [i for i in self._instances.values() if i.pool == pool]

    async def changed(self) -> None:
        """Returns at the next change."""
        await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()


class _MemoryWatcher:
    def __init__(self, discovery: MemoryDiscovery, pool: str) -> None:
        self._discovery = discovery
        self._pool = pool

    async def watch(self) -> AsyncIterator[list[InstanceInfo]]:
        last: list[InstanceInfo] | None = None
        while True:
            current = self._discovery.current(self._pool)
            if current != last:
                last = current
                yield list(current)
            await self._discovery.changed()
