"""The leader-lock contract.

A replica calls :meth:`LeaderLock.acquire` (one non-blocking try; see
:func:`campaign` for the standby loop), acts while :meth:`LeaderLock.hold` is
running, stops acting the moment ``hold()`` returns (leadership lost), and
calls :meth:`LeaderLock.release` on shutdown::

    await campaign(lock, retry_interval=5.0)
    async with asyncio.TaskGroup() as group:
        work = group.create_task(autoscaler_loop())
        await lock.hold()          # returns when leadership is lost
        work.cancel()
"""

from __future__ import annotations

import asyncio
from typing import Protocol

__all__ = ["LeaderLock", "campaign"]


class LeaderLock(Protocol):
    """A lock that at most one replica holds at a time."""

    @property
    def is_leader(self) -> bool:
        """True while this replica holds the lock (as far as it knows)."""
        ...

    async def acquire(self) -> bool:
        """One try, without waiting for the holder: True if this replica now leads."""
        ...

    async def hold(self) -> None:
        """Keeps the lock alive; returns once it is lost or released (at once if not held)."""

    async def release(self) -> None:
        """Gives the lock up so a standby can take it at once. Idempotent."""


async def campaign(lock: LeaderLock, retry_interval: float) -> None:
    """Standby loop: tries :meth:`LeaderLock.acquire` every ``retry_interval`` s until it wins."""
    while True:
        if await lock.acquire():
            return
        await asyncio.sleep(retry_interval)
