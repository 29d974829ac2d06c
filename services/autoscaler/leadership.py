"""Running the autoscaler's work only while this replica holds the leader lock::

    STANDBY --(lock acquired)--> LEADER --(lock lost: hold() returned)--> STANDBY
       ^                                                                     |
       +---------------------------------------------------------------------+

A standby only campaigns (one try every ``retry_s``); it evaluates nothing. When the
lock is lost the work is cancelled at once: a replica that may no longer lead must not
act. When ``stop`` is set the work is left to finish what it is doing (it watches
``stop`` itself), and the lock is released so that a standby takes over at once.

A try that raises is a failed try (:func:`~voxmesh.leader.campaign`), not the end of the
evaluation.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from voxmesh.leader import LeaderLock, campaign

__all__ = ["run_elected"]

logger = logging.getLogger(__name__)


async def run_elected(
    lock: LeaderLock,
    work: Callable[[], Awaitable[None]],
    stop: asyncio.Event,
    *,
    retry_s: float,
    on_change: Callable[[bool], None],
) -> None:
    """Runs ``work()`` whenever this replica leads, until ``stop`` is set; then releases."""
    try:
        while not stop.is_set():
            if not await _first(campaign(lock, retry_s), stop.wait()):
                break
            on_change(True)
            try:
                if not await _first(work(), lock.hold()) and not stop.is_set():
                    logger.warning("leader lock lost: standing by")
            finally:
                on_change(False)
    finally:
        await lock.release()


async def _first(primary: Awaitable[None], other: Awaitable[object]) -> bool:
    """Runs both until one ends and cancels the other; True if ``primary`` ended first.

    An error of ``primary`` is raised. A cancellation of the caller cancels both.
    """
    main, side = asyncio.ensure_future(primary), asyncio.ensure_future(other)
    try:
        await asyncio.wait({main, side}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        main.cancel()
        side.cancel()
        await asyncio.wait({main, side})
    if main.cancelled():
        return False
    main.result()
    return True
