"""voxmesh.tasks.stop: a task is stopped, its outcome is not raised, and a cancellation
of the caller while it waits is not swallowed."""

from __future__ import annotations

import asyncio

import pytest

from voxmesh import tasks


async def test_the_tasks_own_cancellation_and_error_are_not_raised() -> None:
    forever = asyncio.ensure_future(asyncio.Event().wait())
    await tasks.stop(forever)
    assert forever.cancelled()

    async def fail() -> None:
        raise RuntimeError("its own")

    failed = asyncio.ensure_future(fail())
    await asyncio.wait({failed})
    await tasks.stop(failed)  # done already: nothing raised, nothing to cancel
    assert isinstance(failed.exception(), RuntimeError)


async def test_a_cancellation_of_the_caller_while_it_waits_is_raised() -> None:
    """The idiom it replaces (``cancel(); with suppress(CancelledError): await task``)
    swallowed the caller's cancellation when it came while the task wound down."""
    started = asyncio.Event()
    winding_down = asyncio.Event()
    release = asyncio.Event()

    async def slow_to_stop() -> None:
        try:
            started.set()
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            winding_down.set()
            await release.wait()  # cleanup that takes a while
            raise

    worker = asyncio.ensure_future(slow_to_stop())
    await started.wait()
    went_on = False

    async def caller() -> None:
        nonlocal went_on
        await tasks.stop(worker)
        went_on = True

    stopping = asyncio.ensure_future(caller())
    await winding_down.wait()
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    assert not went_on
    release.set()
    await asyncio.wait({worker})
    assert worker.cancelled()
