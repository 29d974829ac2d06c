"""Stopping asyncio tasks without swallowing the caller's own cancellation.

``task.cancel(); with suppress(CancelledError): await task`` is the common idiom, and
it has a flaw: if the caller is itself cancelled while it waits (a client cancels its
call as its stream's worker ends), that cancellation is the one suppressed, and the
caller carries on as if nothing happened. :func:`stop` waits with
:func:`asyncio.wait`, which never raises the task's outcome, so only the caller's own
cancellation propagates.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any

__all__ = ["stop", "stop_all"]


async def stop(task: asyncio.Future[Any]) -> None:
    """Cancels ``task`` and returns once it has ended (idempotent).

    The task's own outcome, its cancellation or its error, is not raised: it belongs to
    whoever reads the task (an error stays readable through ``task.exception()``). A
    cancellation of the caller while it waits is raised, as it should be."""
    if not task.done():
        task.cancel()
        await asyncio.wait({task})
    if not task.cancelled():
        task.exception()  # retrieved: no "exception was never retrieved" at collection


async def stop_all(tasks: Collection[asyncio.Future[Any]]) -> None:
    """:func:`stop` for many tasks at once: all are cancelled before any is awaited."""
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks)
    for task in tasks:
        if not task.cancelled():
            task.exception()
