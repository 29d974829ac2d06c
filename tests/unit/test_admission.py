"""The router's admission queue: wait for room, realtime first, bounded wait and length."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry

from services.router.admission import Admission, QueueLimits
from services.router.balancer import PowerOfTwoBalancer, Preference
from services.router.metrics import RouterMetrics
from tests.conditions import wait_until_async
from voxmesh.discovery import CAPACITY_ON_DEMAND
from voxmesh.errors import ResourceExhausted, Unavailable


class Slot:
    """An instance with ``capacity`` slots."""

    def __init__(self, instance_id: str, capacity: int, on_release: Callable[[], None]) -> None:
        self.instance_id = instance_id
        self.capacity = capacity
        self.active = 0
        self.region = "local"
        self.gpu_type = "cpu"
        self.capacity_class = CAPACITY_ON_DEMAND
        self._on_release = on_release

    def accepting(self) -> bool:
        return True

    def last_resort(self) -> bool:
        return False

    def has_room(self) -> bool:
        return self.active < self.capacity

    def load(self) -> float:
        return self.active / max(1, self.capacity)

    def reserve(self) -> None:
        self.active += 1

    def release(self) -> None:
        self.active -= 1
        self._on_release()


class Pool:
    """Slots of one pool plus the admission under test."""

    def __init__(self, max_streams: int = 8, max_wait_s: float = 5.0) -> None:
        self.slots: list[Slot] = []
        self.metrics = RouterMetrics(CollectorRegistry())
        self.now = 100.0
        self.admission: Admission[Slot] = Admission(
            pools=["p"],
            candidates=lambda pool: self.slots,
            balancer=PowerOfTwoBalancer(Preference(), random.Random(1)),
            limits=QueueLimits(max_streams=max_streams, max_wait_s=max_wait_s, retry_after_s=3.0),
            metrics=self.metrics,
            clock=lambda: self.now,
        )

    def add(self, instance_id: str, capacity: int) -> Slot:
        slot = Slot(instance_id, capacity, lambda: self.admission.notify("p"))
        self.slots.append(slot)
        self.admission.notify("p")
        return slot

    def depth(self, priority: str) -> float | None:
        return self.metrics.registry.get_sample_value(
            "voxmesh_router_queue_depth", {"pool": "p", "priority": priority}
        )


async def test_admits_at_once_when_there_is_room() -> None:
    pool = Pool()
    slot = pool.add("a", 1)
    assert await pool.admission.admit("p", realtime=True) is slot
    assert slot.active == 1
    assert pool.admission.snapshot("p").admitted_total == 1


async def test_admit_now_takes_free_room_but_never_overtakes_a_waiting_stream() -> None:
    pool = Pool()
    assert pool.admission.admit_now("p", realtime=True) is None  # no instance yet
    slot = pool.add("a", 1)
    place = pool.admission.place()
    pool.now += 0.25
    assert pool.admission.admit_now("p", realtime=True, place=place) is slot
    assert (slot.active, pool.admission.snapshot("p").admitted_total) == (1, 1)
    wait = pool.metrics.registry.get_sample_value(
        "voxmesh_router_queue_wait_seconds_sum", {"pool": "p", "priority": "realtime"}
    )
    assert wait == pytest.approx(0.25)  # counted from the place's arrival, as admit counts it
    assert pool.admission.admit_now("p", realtime=True) is None  # full: nothing reserved
    assert slot.active == 1

    waiting = asyncio.create_task(pool.admission.admit("p", realtime=False))
    await wait_until_async(lambda: pool.admission.queued() == 1)
    pool.add("b", 1)  # room again, and a stream waits: that one gets it
    assert (await waiting).instance_id == "b"
    pool.add("c", 1)
    waiting = asyncio.create_task(pool.admission.admit("p", realtime=False, exclude={"c"}))
    await wait_until_async(lambda: pool.admission.queued() == 1)
    assert pool.admission.admit_now("p", realtime=True) is None  # "c" is free, but not first
    assert (await pool.admission.admit("p", realtime=True)).instance_id == "c"
    assert not waiting.done()
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    pool.admission.close()
    with pytest.raises(Unavailable):
        pool.admission.admit_now("p", realtime=True)


async def test_queue_forms_and_drains_when_capacity_frees() -> None:
    pool = Pool()
    slot = pool.add("a", 1)
    first = await pool.admission.admit("p", realtime=True)
    waiting = asyncio.create_task(pool.admission.admit("p", realtime=True))
    await wait_until_async(lambda: pool.admission.queued() == 1)
    assert pool.depth("realtime") == 1
    assert not waiting.done()
    first.release()
    assert await waiting is slot
    assert pool.admission.queued() == 0
    assert pool.depth("realtime") == 0


async def test_queue_drains_when_an_instance_appears() -> None:
    pool = Pool()
    waiting = asyncio.create_task(pool.admission.admit("p", realtime=False))
    await wait_until_async(lambda: pool.admission.queued() == 1)
    snap = pool.admission.snapshot("p")
    assert (snap.queued_realtime, snap.queued_batch) == (0, 1)
    new = pool.add("new", 2)
    assert await waiting is new


async def test_realtime_is_served_before_batch() -> None:
    pool = Pool()
    slot = pool.add("a", 1)
    await pool.admission.admit("p", realtime=True)
    order: list[str] = []

    async def wait(name: str, realtime: bool) -> None:
        got = await pool.admission.admit("p", realtime=realtime)
        order.append(name)
        got.release()

    batch = asyncio.create_task(wait("batch", False))
    await wait_until_async(lambda: pool.admission.queued() == 1)
    realtime = asyncio.create_task(wait("realtime", True))
    await wait_until_async(lambda: pool.admission.queued() == 2)
    slot.release()
    await asyncio.gather(batch, realtime)
    assert order == ["realtime", "batch"]


async def test_resumed_streams_go_first_within_their_priority() -> None:
    pool = Pool()
    slot = pool.add("a", 1)
    await pool.admission.admit("p", realtime=True)
    new = asyncio.create_task(pool.admission.admit("p", realtime=True))
    await wait_until_async(lambda: pool.admission.queued() == 1)
    resumed = asyncio.create_task(pool.admission.admit("p", realtime=True, resumed=True))
    await wait_until_async(lambda: pool.admission.queued() == 2)
    slot.release()
    await wait_until_async(resumed.done)
    assert not new.done()
    new.cancel()


async def test_wait_timeout_rejects_with_a_retry_hint() -> None:
    pool = Pool(max_wait_s=0.05)
    pool.add("a", 0)
    with pytest.raises(ResourceExhausted) as caught:
        await pool.admission.admit("p", realtime=True)
    assert caught.value.retry_after == 3.0
    assert pool.admission.queued() == 0
    assert pool.admission.snapshot("p").rejected_total == 1
    reg = pool.metrics.registry
    assert (
        reg.get_sample_value("voxmesh_router_rejected_total", {"pool": "p", "reason": "timeout"})
        == 1
    )
    assert (
        reg.get_sample_value(
            "voxmesh_router_queue_wait_seconds_count", {"pool": "p", "priority": "realtime"}
        )
        == 1
    )


async def test_full_queue_rejects_new_streams_at_once_but_not_resumed_ones() -> None:
    pool = Pool(max_streams=1)
    first = asyncio.create_task(pool.admission.admit("p", realtime=True))
    await wait_until_async(lambda: pool.admission.queued() == 1)
    with pytest.raises(ResourceExhausted, match="queue is full"):
        await pool.admission.admit("p", realtime=True)
    resumed = asyncio.create_task(pool.admission.admit("p", realtime=True, resumed=True))
    await wait_until_async(lambda: pool.admission.queued() == 2)
    pool.add("a", 2)
    await asyncio.gather(first, resumed)


async def test_a_realtime_stream_takes_the_place_of_the_last_batch_one_when_full() -> None:
    pool = Pool(max_streams=2)
    batch = [asyncio.create_task(pool.admission.admit("p", realtime=False)) for _ in range(2)]
    await wait_until_async(lambda: pool.admission.queued() == 2)
    realtime = [asyncio.create_task(pool.admission.admit("p", realtime=True))]
    await wait_until_async(batch[1].done)
    with pytest.raises(ResourceExhausted, match="queue is full") as refused:
        await batch[1]
    assert refused.value.retry_after == 3.0
    realtime.append(asyncio.create_task(pool.admission.admit("p", realtime=True)))
    await wait_until_async(batch[0].done)
    with pytest.raises(ResourceExhausted, match="queue is full"):
        await batch[0]
    with pytest.raises(ResourceExhausted, match="queue is full"):
        await pool.admission.admit("p", realtime=True)  # full of realtime: it goes itself
    snap = pool.admission.snapshot("p")
    assert (snap.queued_realtime, snap.queued_batch, snap.rejected_total) == (2, 0, 3)
    pool.add("a", 2)
    await asyncio.gather(*realtime)


async def test_a_stream_an_instance_refused_keeps_its_place_and_counts_once() -> None:
    pool = Pool(max_streams=1)
    slot = pool.add("a", 1)
    place = pool.admission.place()
    first = await pool.admission.admit("p", realtime=True, place=place)
    later = asyncio.create_task(pool.admission.admit("p", realtime=True))
    await wait_until_async(lambda: pool.admission.queued() == 1)
    slot.capacity = 0  # the instance refused the stream: full after all
    first.release()
    again = asyncio.create_task(pool.admission.admit("p", realtime=True, place=place))
    await wait_until_async(lambda: pool.admission.queued() == 2)  # not refused: full queue
    slot.capacity = 1
    pool.admission.notify("p")
    assert await again is slot
    assert not later.done(), "it arrived later: it waits behind"
    assert pool.admission.snapshot("p").admitted_total == 1
    slot.release()
    assert await later is slot
    assert pool.admission.snapshot("p").admitted_total == 2


async def test_a_stream_an_instance_refused_waits_at_most_max_wait_in_all() -> None:
    pool = Pool(max_wait_s=5.0)
    slot = pool.add("a", 1)
    place = pool.admission.place()
    (await pool.admission.admit("p", realtime=True, place=place)).release()
    slot.capacity = 0
    pool.now += 5.0  # refused again and again for 5 s
    with pytest.raises(ResourceExhausted, match="no instance freed up in time"):
        await pool.admission.admit("p", realtime=True, place=place)


async def test_queued_bytes_are_exported() -> None:
    pool = Pool()
    assert (pool.depth("realtime"), pool.depth("batch")) == (0, 0), "exported from the start"
    waiting = asyncio.create_task(pool.admission.admit("p", realtime=True, buffered=lambda: 640))
    await wait_until_async(lambda: pool.admission.queued() == 1)
    sample = {"pool": "p"}
    assert pool.metrics.registry.get_sample_value("voxmesh_router_queue_bytes", sample) == 640
    pool.add("a", 1)
    await waiting
    assert pool.metrics.registry.get_sample_value("voxmesh_router_queue_bytes", sample) == 0


async def test_no_queueing_when_max_streams_is_zero() -> None:
    pool = Pool(max_streams=0)
    with pytest.raises(ResourceExhausted):
        await pool.admission.admit("p", realtime=True)


async def test_cancelled_waiter_leaves_the_queue() -> None:
    pool = Pool()
    waiting = asyncio.create_task(pool.admission.admit("p", realtime=True, buffered=lambda: 640))
    await wait_until_async(lambda: pool.admission.queued() == 1)
    pool.now += 2.5
    snap = pool.admission.snapshot("p")
    assert snap.queued_bytes == 640
    assert snap.oldest_wait_s == pytest.approx(2.5)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    assert pool.admission.queued() == 0
    slot = pool.add("a", 1)
    assert slot.active == 0


async def test_a_waiter_cancelled_in_the_same_turn_neither_holds_a_place_nor_is_evicted() -> None:
    """Its future is cancelled at once, but it leaves the queue only when its task runs:
    a realtime stream arriving in between (the native data path's control plane handles
    a batch of events in one turn) must not count it nor evict it. Evicting it raised
    InvalidStateError out of the newcomer's admit and left the newcomer's waiter queued,
    to be handed a slot that nobody released."""
    pool = Pool(max_streams=1, max_wait_s=5.0)
    slot = pool.add("a", 1)
    holder = await pool.admission.admit("p", realtime=True)
    batch = asyncio.create_task(pool.admission.admit("p", realtime=False))
    await wait_until_async(lambda: pool.admission.queued() == 1)
    place = pool.admission.place()
    pool.now += 5.0  # the newcomer's wait is over as it is queued: it ends in this turn
    batch.cancel()
    with pytest.raises(ResourceExhausted, match="no instance freed up in time"):
        await pool.admission.admit("p", realtime=True, place=place)
    assert (await asyncio.gather(batch, return_exceptions=True))[0].__class__ is (
        asyncio.CancelledError
    )
    assert pool.admission.queued() == 0
    holder.release()
    assert slot.active == 0, "no slot was handed to a waiter nobody awaits"
    assert pool.admission.snapshot("p").rejected_total == 1


async def test_excluded_waiter_does_not_block_the_ones_behind() -> None:
    pool = Pool()
    pool.add("failed", 1)
    stuck = asyncio.create_task(
        pool.admission.admit("p", realtime=True, exclude={"failed"}, resumed=True)
    )
    await wait_until_async(lambda: pool.admission.queued() == 1)
    got = await pool.admission.admit("p", realtime=True)
    assert got.instance_id == "failed"
    assert not stuck.done()
    stuck.cancel()
    await asyncio.gather(stuck, return_exceptions=True)


async def test_close_fails_waiters_and_new_streams() -> None:
    pool = Pool()
    waiting = asyncio.create_task(pool.admission.admit("p", realtime=True))
    await wait_until_async(lambda: pool.admission.queued() == 1)
    pool.admission.close()
    with pytest.raises(Unavailable):
        await waiting
    with pytest.raises(Unavailable):
        await pool.admission.admit("p", realtime=True)


async def test_a_slot_handed_over_as_the_wait_times_out_is_kept() -> None:
    # A busy event loop: the hand-over and the queue timeout fall due in the same
    # turn, the hand-over first, so the timeout cancels a waiter already given a slot.
    pool = Pool(max_wait_s=0.1)
    slot = pool.add("a", 0)
    loop = asyncio.get_running_loop()

    def hand_over() -> None:
        slot.capacity = 1
        pool.admission.notify("p")

    def busy_past_the_timeout() -> None:
        until = loop.time() + 0.1  # later than the timeout the admission just set
        while loop.time() < until:
            pass

    loop.call_later(0.05, hand_over)  # due before the timeout admit() sets next
    waiting = asyncio.create_task(pool.admission.admit("p", realtime=True))
    loop.call_soon(busy_past_the_timeout)  # runs right after the task queued its stream
    got = await waiting
    assert got is slot and slot.active == 1
    snap = pool.admission.snapshot("p")
    assert (snap.admitted_total, snap.rejected_total) == (1, 0)
    assert pool.admission.queued() == 0
    got.release()
    assert slot.active == 0
