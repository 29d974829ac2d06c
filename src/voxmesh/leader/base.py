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
import logging
from typing import Protocol

__all__ = ["LeaderLock", "campaign"]

logger = logging.getLogger(__name__)


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
    """Standby loop: tries :meth:`LeaderLock.acquire` every ``retry_interval`` s until it wins.

    A try that raises (a full disk under the file lock, a Consul answer the lock does not
    map) is a failed try, not the end: ending there would stop the replica from ever
    leading while it went on reporting itself healthy. The first error of a run is logged
    with its traceback and the repeats at debug level, so a lasting fault shows once
    without flooding the log; the first try that works again says so. A cancellation is
    no ``Exception``: it ends the campaign.
    """
    failures = 0
    while True:
        try:
            won = await lock.acquire()
        except Exception as exc:
            failures += 1
            if failures == 1:
                logger.exception("leader lock: acquire failed; retrying every %g s", retry_interval)
            else:
                logger.debug("leader lock: acquire failed again (%d in a row): %r", failures, exc)
        else:
            if failures:
                logger.info("leader lock: acquire works again after %d failed tries", failures)
                failures = 0
            if won:
                return
        await asyncio.sleep(retry_interval)
