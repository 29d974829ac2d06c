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
from collections.abc import Iterable
from typing import Any

__all__ = ["stop", "stop_all"]


async def stop(task: asyncio.Future[Any]) -> None:
    """Cancels ``task`` and returns once it has ended (idempotent).

    The task's own outcome, its cancellation or its error, is not raised: it belongs to
    whoever reads the task (an error stays readable through ``task.exception()``). A
    cancellation of the caller while it waits is raised, as it should be."""
    await stop_all((task,))


async def stop_all(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """:func:`stop` for many tasks at once: all are cancelled before any is awaited.
    ``tasks`` is copied first, so it may be a set the tasks leave as they end."""
    pending = list(tasks)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
    for task in pending:
        if not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" at collection
