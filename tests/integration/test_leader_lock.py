"""Leader election: the Consul lock (py-consul against the Consul double) and the file lock."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import consul
import pytest

from tests.conditions import wait_until_async
from tests.doubles.consul_double import ConsulDouble
from voxmesh.discovery.consul import ConsulUnavailable
from voxmesh.leader import ConsulLeaderLock, FileLeaderLock, PyConsulSessionApi, campaign

KEY = "voxmesh/autoscaler/leader"


@pytest.fixture
def double() -> Iterator[ConsulDouble]:
    """A Consul double whose ``session_ttl_min`` (a Consul server setting) is 1s."""
    instance = ConsulDouble(grpc_probes=False, session_ttl_min=1.0)
    instance.start()
    yield instance
    instance.stop()


@pytest.fixture
async def locks(double: ConsulDouble) -> AsyncIterator[list[ConsulLeaderLock]]:
    created: list[ConsulLeaderLock] = []
    yield created
    for lock in created:
        await lock.release()


def new_lock(
    double: ConsulDouble, locks: list[ConsulLeaderLock], holder: str, lock_delay: float = 1.0
) -> ConsulLeaderLock:
    api = PyConsulSessionApi.connect("127.0.0.1", double.port)
    lock = ConsulLeaderLock(
        api, KEY, holder=holder, ttl=1.0, lock_delay=lock_delay, retry_interval=0.05, min_ttl=1.0
    )
    locks.append(lock)
    return lock


@contextlib.asynccontextmanager
async def holding(lock: ConsulLeaderLock) -> AsyncIterator[asyncio.Task[None]]:
    """Runs ``lock.hold()`` in the background for the duration of the block."""
    task = asyncio.create_task(lock.hold())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_every_session_call_carries_the_acl_token_and_datacenter(
    double: ConsulDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CONSUL_HTTP_TOKEN", raising=False)
    api = PyConsulSessionApi(
        consul.Consul(host="127.0.0.1", port=double.port, token="s3cret", dc="dc1")
    )
    session = await api.create_session("voxmesh leader t", "10s", "1s")
    assert await api.acquire(KEY, session, b"t")
    await api.renew_session(session)
    assert await api.release(KEY, session)
    await api.destroy_session(session)
    sent = [r for r in double.requests if r.path.startswith(("/v1/session/", "/v1/kv/"))]
    assert [r.path.split("/")[3] for r in sent[:1]] == ["create"]
    assert all(r.headers.get("X-Consul-Token") == "s3cret" for r in sent), sent
    assert all(r.query.get("dc") == "dc1" for r in sent), sent


async def test_two_contenders_one_wins(double: ConsulDouble, locks: list[ConsulLeaderLock]) -> None:
    a, b = new_lock(double, locks, "a"), new_lock(double, locks, "b")
    assert await a.acquire()
    assert not await b.acquire()
    assert a.is_leader and not b.is_leader
    entry = double.kv_entry(KEY)
    assert entry is not None and entry["Session"] == a.session_id
    assert entry["Value"] == "YQ==", "the value names the holder"


async def test_standby_waits_out_lock_delay_after_leader_session_dies(
    double: ConsulDouble, locks: list[ConsulLeaderLock]
) -> None:
    a, b = new_lock(double, locks, "a"), new_lock(double, locks, "b")
    assert await a.acquire()
    start = time.monotonic()
    assert double.kill_leader_session(KEY) == a.session_id

    assert "Session" not in (double.kv_entry(KEY) or {}), "the key is free..."
    assert not await b.acquire(), "...but lock-delay refuses it"
    await asyncio.wait_for(campaign(b, retry_interval=0.05), timeout=5)
    assert b.is_leader
    assert time.monotonic() - start >= 1.0


async def test_renew_404_loses_leadership(
    double: ConsulDouble, locks: list[ConsulLeaderLock]
) -> None:
    a = new_lock(double, locks, "a")
    assert await a.acquire()
    async with holding(a) as hold:
        double.kill_session(a.session_id or "")
        await asyncio.wait_for(hold, timeout=3)  # the next renew (TTL/2) gets 404
    assert not a.is_leader and a.session_id is None


async def test_unreachable_consul_for_a_whole_ttl_loses_leadership(
    double: ConsulDouble, locks: list[ConsulLeaderLock]
) -> None:
    a = new_lock(double, locks, "a")
    assert await a.acquire()
    async with holding(a) as hold:
        start = time.monotonic()
        double.pause("refuse")
        await asyncio.wait_for(hold, timeout=5)
        # The last renew was up to a renew interval (0.5 s) before the pause, and the
        # leader steps down a tenth of the TTL early.
        assert time.monotonic() - start >= 1.0 - 0.5 - 0.1, "not before a TTL without a renew"
    assert not a.is_leader
    double.resume()


async def test_a_leader_whose_key_was_deleted_steps_down_for_the_replica_that_took_it(
    double: ConsulDouble, locks: list[ConsulLeaderLock]
) -> None:
    """An operator's ``consul kv delete``, or a snapshot restore, frees the key while the
    leader's session lives on: renewing that session is no longer leading."""
    a, b = new_lock(double, locks, "a", lock_delay=0.0), new_lock(double, locks, "b")
    assert await a.acquire()
    async with holding(a) as hold:
        consul.Consul(port=double.port).kv.delete(KEY)
        assert await b.acquire(), "the deleted key is free for the standby"
        await asyncio.wait_for(hold, timeout=3)  # the next renew reads the key
    assert not a.is_leader and b.is_leader
    entry = double.kv_entry(KEY)
    assert entry is not None and entry["Session"] == b.session_id
    assert not await a.acquire(), "b holds it"


async def test_a_leader_cut_off_from_consul_takes_the_key_back_with_its_live_session() -> None:
    """Stepping down at the deadline is a guess that the session may be gone; when Consul
    kept it (its reaping allows twice the TTL, five times in this double), the next try
    renews it and retakes the key at once, with no new session and no lock delay."""
    double = ConsulDouble(grpc_probes=False, session_ttl_min=1.0, session_ttl_multiplier=5.0)
    double.start()
    a = new_lock(double, [], "a", lock_delay=15.0)
    try:
        assert await a.acquire()
        session = a.session_id
        async with holding(a) as hold:
            double.pause("refuse")
            await asyncio.wait_for(hold, timeout=5)
        assert not a.is_leader
        double.resume()
        assert await a.acquire(), "the same session still holds the key"
        assert a.session_id == session and double.session_ids() == [session]
    finally:
        await a.release()
        double.stop()


async def test_a_consul_blackhole_steps_the_leader_down_before_the_ttl(
    double: ConsulDouble, locks: list[ConsulLeaderLock]
) -> None:
    """A renew lost in a blackhole is not waited for (py-consul's own timeout is 30 s)."""
    a = new_lock(double, locks, "a")
    assert await a.acquire()
    async with holding(a) as hold:
        await wait_until_async(lambda: renews(double) >= 1, timeout=3)
        renewed = time.monotonic()  # the last renew the leader saw answered was sent before
        double.pause("hang")
        await asyncio.wait_for(hold, timeout=5)
        assert time.monotonic() - renewed < 1.0, "stepped down within the TTL"
    assert not a.is_leader
    double.resume()


async def test_a_session_call_into_a_blackhole_times_out(double: ConsulDouble) -> None:
    api = PyConsulSessionApi.connect("127.0.0.1", double.port, timeout_s=0.2)
    session = await api.create_session("voxmesh leader t", "10s", "0s")
    double.pause("hang")
    try:
        with pytest.raises(ConsulUnavailable):
            await asyncio.wait_for(api.renew_session(session), timeout=5)
    finally:
        double.resume()


def renews(double: ConsulDouble) -> int:
    return sum(r.path.startswith("/v1/session/renew/") for r in double.requests)


async def test_release_hands_over_at_once(
    double: ConsulDouble, locks: list[ConsulLeaderLock]
) -> None:
    a, b = new_lock(double, locks, "a", lock_delay=15.0), new_lock(double, locks, "b")
    assert await a.acquire()
    assert not await b.acquire()
    session = a.session_id
    async with holding(a) as hold:
        await a.release()
        await asyncio.wait_for(hold, timeout=5)
    assert await b.acquire(), "a released key has no lock-delay"
    assert session not in double.session_ids()
    await a.release()  # idempotent


async def test_leader_renews_on_the_ttl_consul_returns(
    double: ConsulDouble, locks: list[ConsulLeaderLock]
) -> None:
    a = new_lock(double, locks, "a")
    assert await a.acquire()
    assert a.renew_interval == 0.5
    double.set_session_renew_ttl("3s")  # a loaded server asks for fewer renews
    async with holding(a):
        await wait_until_async(lambda: a.renew_interval == 1.5, timeout=3)
        assert a.is_leader


async def test_standby_session_expiry_is_survived(
    double: ConsulDouble, locks: list[ConsulLeaderLock]
) -> None:
    a, b = new_lock(double, locks, "a"), new_lock(double, locks, "b")
    assert await a.acquire()
    assert not await b.acquire()
    double.kill_session(b.session_id or "")  # e.g. expired between two tries
    await a.release()
    assert await b.acquire()
    assert b.session_id in double.session_ids()


async def test_file_lock_one_holder_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "leader.lock"
    a, b = FileLeaderLock(path), FileLeaderLock(path)
    assert await a.acquire() and await a.acquire()
    assert not await b.acquire()
    assert path.read_text() == f"{os.getpid()}\n"
    hold = asyncio.create_task(a.hold())
    await a.release()
    await asyncio.wait_for(hold, timeout=5)
    assert not a.is_leader
    assert await b.acquire() and b.is_leader
    await b.release()
    await b.release()
    await b.hold()  # not held: returns at once


async def test_a_file_lock_that_cannot_write_its_holder_keeps_no_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ``flock`` is taken before the PID is written: a failed write must drop it,
    or a descriptor nobody knows of would hold the lock until the process exits."""
    path = tmp_path / "leader.lock"
    a, b = FileLeaderLock(path), FileLeaderLock(path)

    def disk_full(fd: int, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:  # only for this call: it never yields
        patch.setattr(os, "write", disk_full)
        with pytest.raises(OSError, match="No space left"):
            await a.acquire()
    assert not a.is_leader
    assert await b.acquire(), "a failed acquire left the file locked"
    await b.release()
    assert await a.acquire()  # the next try of the same lock works
    assert path.read_text() == f"{os.getpid()}\n"
    await a.release()


async def test_file_lock_is_freed_when_its_holder_process_dies(tmp_path: Path) -> None:
    path = tmp_path / "leader.lock"
    script = (
        "import fcntl, os, time\n"
        f"fd = os.open({str(path)!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n"
    )
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert holder.stdout is not None
        assert await asyncio.wait_for(holder.stdout.readline(), timeout=10) == b"locked\n"
        lock = FileLeaderLock(path)
        assert not await lock.acquire()
        holder.kill()
        await holder.wait()
        assert await lock.acquire(), "the kernel drops a dead holder's flock"
        await lock.release()
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()
