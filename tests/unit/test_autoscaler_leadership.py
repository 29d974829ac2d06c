"""``run_elected`` with a fake leader lock: a lock that raises never ends the campaign.

:class:`RaisingLock` is a :class:`~tests.autoscaler_fakes.FakeLock` whose ``acquire``
raises the errors the test queues before it answers as usual: a full disk under the
file lock, a Consul answer the Consul lock does not map.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from services.autoscaler.leadership import run_elected
from tests.autoscaler_fakes import FakeLock
from tests.conditions import wait_until_async

LOGGER = "voxmesh.leader.base"


class RaisingLock(FakeLock):
    """A :class:`FakeLock` whose next tries raise ``errors`` (in order), then grant."""

    def __init__(self, errors: list[Exception], *, grant: bool = True) -> None:
        super().__init__(grant=grant)
        self.errors = errors

    async def acquire(self) -> bool:
        if self.errors:
            self.tries += 1
            raise self.errors.pop(0)
        return await super().acquire()


@pytest.mark.parametrize(
    "error",
    [OSError(28, "No space left on device"), ValueError("unexpected Consul answer")],
    ids=["file-lock-disk-full", "consul-unmapped-answer"],
)
async def test_an_acquire_that_raises_is_retried_and_the_replica_still_comes_to_lead(
    error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    lock = RaisingLock([error, error, error])
    stop = asyncio.Event()
    changes: list[bool] = []
    working = asyncio.Event()

    async def work() -> None:
        working.set()
        await stop.wait()

    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        elected = asyncio.create_task(
            run_elected(lock, work, stop, retry_s=0.01, on_change=changes.append)
        )
        leading = asyncio.ensure_future(working.wait())
        await asyncio.wait({leading, elected}, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        leading.cancel()
    assert not elected.done(), f"the campaign ended: {elected.exception()!r}"
    assert working.is_set() and lock.tries == 4 and lock.is_leader and changes == [True]

    failed = [r for r in caplog.records if r.name == LOGGER and "acquire failed" in r.message]
    assert len(failed) == 3
    assert [r.exc_info is not None for r in failed] == [True, False, False]  # traceback once
    assert failed[0].levelno == logging.ERROR
    assert failed[0].exc_info is not None and failed[0].exc_info[1] is error
    assert any("works again after 3 failed tries" in r.message for r in caplog.records)

    stop.set()
    await asyncio.wait_for(elected, 5)
    assert changes == [True, False]
    assert lock.released == 1 and not lock.is_leader


async def test_stop_ends_a_campaign_whose_every_try_raises_and_releases_the_lock() -> None:
    lock = RaisingLock([OSError(5, "Input/output error")] * 1000)
    stop = asyncio.Event()
    changes: list[bool] = []

    async def work() -> None:
        raise AssertionError("a replica that never got the lock must not work")

    elected = asyncio.create_task(
        run_elected(lock, work, stop, retry_s=0.01, on_change=changes.append)
    )
    await wait_until_async(lambda: lock.tries >= 3, 5)
    assert not elected.done()
    stop.set()
    await asyncio.wait_for(elected, 5)
    assert elected.exception() is None
    assert changes == [] and lock.released == 1


async def test_a_cancellation_is_not_taken_for_a_failed_try() -> None:
    """Cancelling ``run_elected`` (not ``stop``) during a failing campaign ends it."""
    lock = RaisingLock([OSError(5, "Input/output error")] * 1000)
    stop = asyncio.Event()
    changes: list[bool] = []

    async def work() -> None:
        await stop.wait()

    elected = asyncio.create_task(
        run_elected(lock, work, stop, retry_s=0.01, on_change=changes.append)
    )
    await wait_until_async(lambda: lock.tries >= 2, 5)
    elected.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(elected, 5)
    assert changes == [] and lock.released == 1
