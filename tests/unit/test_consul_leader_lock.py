"""The Consul leader lock's timing rules against a fake session API (no sockets).

:class:`FakeSessions` implements :class:`~voxmesh.leader.consul_api.ConsulSessionApi`
in memory; its renews can be made to hang, as a call lost in a network blackhole
does. The real client against the Consul double is in
``tests/integration/test_leader_lock.py``.
"""

from __future__ import annotations

import asyncio
import inspect
import time

import pytest

from tests.conditions import wait_until_async
from voxmesh.errors import SettingsError
from voxmesh.leader import ConsulLeaderLock, PyConsulSessionApi

TTL = 1.0


class FakeSessions:
    """A session API that answers at once; with ``hang`` set, renews never answer."""

    def __init__(self) -> None:
        self.hang = False
        self.renews = 0
        self.cancelled = 0

    async def create_session(self, name: str, ttl: str, lock_delay: str) -> str:
        return "session-1"

    async def renew_session(self, session_id: str) -> float | None:
        self.renews += 1
        if self.hang:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        return TTL

    async def destroy_session(self, session_id: str) -> None:
        return None

    async def acquire(self, key: str, session_id: str, value: bytes) -> bool:
        return True

    async def release(self, key: str, session_id: str) -> bool:
        return True

    async def holder(self, key: str) -> str | None:
        return "session-1"


async def test_a_renew_that_never_answers_is_cut_and_the_leader_steps_down_before_the_ttl() -> None:
    api = FakeSessions()
    lock = ConsulLeaderLock(api, ttl=TTL, min_ttl=TTL, lock_delay=0, retry_interval=0.05)
    created = time.monotonic()  # the session's TTL runs from its creation at the latest
    assert await lock.acquire()
    api.hang = True

    await asyncio.wait_for(lock.hold(), timeout=5)

    assert time.monotonic() - created < TTL, "it stopped acting before Consul may drop it"
    assert not lock.is_leader
    assert lock.session_id == "session-1", "kept: Consul may not have dropped it"
    assert (api.renews, api.cancelled) == (1, 1), "the hanging renew was abandoned"


async def test_renews_keep_the_lock_while_they_answer() -> None:
    api = FakeSessions()
    lock = ConsulLeaderLock(api, ttl=TTL, min_ttl=TTL, lock_delay=0, retry_interval=0.05)
    assert await lock.acquire()
    hold = asyncio.create_task(lock.hold())
    try:
        await wait_until_async(lambda: api.renews >= 3 or hold.done())  # more than a TTL
        assert lock.is_leader and not hold.done()
    finally:
        await lock.release()
        await asyncio.wait_for(hold, timeout=5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ttl": 5.0}, "leader lock ttl=5.0: Consul accepts a session TTL of 10 s to 86400 s"),
        ({"ttl": 86401.0}, "leader lock ttl=86401.0"),
        ({"ttl": 2.0, "min_ttl": 3.0}, "session TTL of 3 s to 86400 s"),
        ({"lock_delay": -1.0}, "leader lock lock_delay=-1.0: Consul applies 0 s to 60 s"),
        ({"lock_delay": 61.0}, "leader lock lock_delay=61.0"),
    ],
)
def test_a_ttl_or_lock_delay_consul_refuses_is_a_settings_error(
    kwargs: dict[str, float], message: str
) -> None:
    limits = {"ttl": 15.0, "lock_delay": 15.0, "min_ttl": 10.0, **kwargs}
    with pytest.raises(SettingsError) as info:
        ConsulLeaderLock(
            FakeSessions(),
            ttl=limits["ttl"],
            lock_delay=limits["lock_delay"],
            min_ttl=limits["min_ttl"],
        )
    assert message in str(info.value)


@pytest.mark.parametrize(("ttl", "lock_delay"), [(10.0, 0.0), (86400.0, 60.0), (15.0, 15.0)])
def test_the_limits_themselves_are_accepted(ttl: float, lock_delay: float) -> None:
    ConsulLeaderLock(FakeSessions(), ttl=ttl, lock_delay=lock_delay)


def test_the_http_client_times_out_below_half_the_shortest_ttl() -> None:
    default = inspect.signature(PyConsulSessionApi.connect).parameters["timeout_s"].default
    assert default < 10.0 / 2


class GatedSessions(FakeSessions):
    """Renews answer only when ``gate`` is opened (once per renew)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()

    async def renew_session(self, session_id: str) -> float | None:
        self.renews += 1
        self.waiting.set()
        await self.gate.wait()
        self.gate.clear()
        return TTL


async def test_hold_cancelled_as_a_renew_answers_ends_rather_than_renew_on() -> None:
    """The owner cancels hold() (shutdown, or the work ended) just as a renew answers.

    ``asyncio.wait_for`` before Python 3.12 returns the answer then and drops the
    cancellation: hold() went on renewing, and the owner, waiting for it to end before
    releasing the lock, kept the lock (and no standby could lead) until it gave up."""
    api = GatedSessions()
    lock = ConsulLeaderLock(api, ttl=TTL, min_ttl=TTL, lock_delay=0, retry_interval=0.05)
    assert await lock.acquire()
    holding = asyncio.create_task(lock.hold())
    await asyncio.wait_for(api.waiting.wait(), 5)
    api.gate.set()
    await asyncio.sleep(0)  # the renew has answered; hold() has not seen it yet
    holding.cancel()
    done, _ = await asyncio.wait({holding}, timeout=2 * TTL)
    assert holding in done and holding.cancelled()
    assert api.renews == 1
