"""The admission queue: a stream waits here while no instance of its pool has room.

One ordered queue per pool. A stream that finds room is admitted at once;
otherwise it waits, realtime ahead of batch and, within a priority, streams
being failed over ahead of new ones, first come first served. Waiting streams
are served when capacity frees up or an instance appears (:meth:`notify`);
after ``max_wait_s`` a stream is rejected with ``RESOURCE_EXHAUSTED`` and a
retry hint, and so is a new stream that finds the queue full; a realtime
stream that finds it full of batch streams takes the place of the last one
instead. Admitted streams are never preempted: overload is absorbed by the
queue, not spread over them.

A stream refused by the instance it was given (full after all) waits again in
its :class:`QueuePlace`: its place in the order, its wait counted from its
arrival, never refused for a full queue, admitted (and counted) once.

Choosing and reserving an instance happen together and synchronously, so two
streams never see the same free slot.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import itertools
import logging
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from services.router.balancer import Candidate, PowerOfTwoBalancer
from services.router.metrics import QUEUE_FULL, QUEUE_TIMEOUT, RouterMetrics
from voxmesh.errors import ResourceExhausted, Unavailable

__all__ = ["Admission", "QueueLimits", "QueuePlace", "QueueSnapshot", "Slot"]

logger = logging.getLogger(__name__)


class Slot(Candidate, Protocol):
    """A candidate whose capacity can be reserved for one stream."""

    def reserve(self) -> None:
        """Counts one more stream of this router on the instance."""

    def release(self) -> None:
        """Undoes :meth:`reserve` when the stream leaves the instance."""


S = TypeVar("S", bound=Slot)


@dataclass(frozen=True)
class QueueLimits:
    """Bounds of every pool's queue."""

    max_streams: int
    """Most waiting streams per pool (failovers may exceed it); 0 disables queueing."""
    max_wait_s: float
    """Longest wait before rejection."""
    retry_after_s: float
    """Retry hint of rejections."""


@dataclass(frozen=True)
class QueueSnapshot:
    """The state of one pool's queue (the router telemetry's ``QueueStats``)."""

    queued_realtime: int
    queued_batch: int
    queued_bytes: int
    oldest_wait_s: float
    admitted_total: int
    rejected_total: int


@dataclass(eq=False)
class QueuePlace:
    """One stream's turn in the queue (:meth:`Admission.place`), kept while instances
    refuse it; a stream being failed over takes a new one."""

    seq: int
    since: float
    """When the stream started waiting."""
    admitted: bool = False
    """True once given an instance: counted, and not refused for a full queue."""


@dataclass(eq=False)
class _Waiter(Generic[S]):
    key: tuple[int, int, int]
    realtime: bool
    resumed: bool
    exclude: frozenset[str]
    place: QueuePlace
    buffered: Callable[[], int]
    future: asyncio.Future[S]

    @property
    def evictable(self) -> bool:
        """A new batch stream: what a realtime one may take the place of."""
        return not (self.realtime or self.resumed or self.place.admitted)


@dataclass
class _PoolQueue(Generic[S]):
    waiters: list[_Waiter[S]] = field(default_factory=list)
    admitted_total: int = 0
    rejected_total: int = 0


class Admission(Generic[S]):
    """Admission control for all pools of the router."""

    def __init__(
        self,
        *,
        pools: Iterable[str],
        candidates: Callable[[str], Sequence[S]],
        balancer: PowerOfTwoBalancer,
        limits: QueueLimits,
        metrics: RouterMetrics,
        clock: Callable[[], float],
    ) -> None:
        self._queues: dict[str, _PoolQueue[S]] = {p: _PoolQueue() for p in pools}
        self._candidates = candidates
        self._balancer = balancer
        self._limits = limits
        self._metrics = metrics
        self._clock = clock
        self._seq = itertools.count()
        self._closed = False
        for pool in self._queues:  # every pool exported from the start, empty
            metrics.queue_bytes.labels(pool).set_function(functools.partial(self._bytes, pool))
            self._gauge(pool)

    def place(self) -> QueuePlace:
        """A new place at the end of the queue, for one stream (or one failover)."""
        return QueuePlace(seq=next(self._seq), since=self._clock())

    async def admit(
        self,
        pool: str,
        realtime: bool,
        *,
        exclude: Collection[str] = (),
        resumed: bool = False,
        buffered: Callable[[], int] = lambda: 0,
        place: QueuePlace | None = None,
    ) -> S:
        """Reserves an instance of ``pool`` for a stream, waiting if none has room.

        ``resumed`` marks a stream being failed over (served first, never
        refused for a full queue); ``exclude`` lists instances it must avoid;
        ``buffered`` reports the audio bytes it holds (for the statistics);
        ``place`` is its turn, kept when an instance refused it (default: a new
        one).
        The caller must ``release()`` the returned slot (a slot handed over in
        the same turn of the loop as the wait times out is returned too). Raises
        :class:`ResourceExhausted` when the queue is full or the wait is too
        long, :class:`Unavailable` when the router shuts down.
        """
        place = place or self.place()
        slot = self.admit_now(pool, realtime, exclude=exclude, place=place)
        if slot is not None:
            return slot
        queue = self._queues[pool]
        waiter: _Waiter[S] = _Waiter(
            key=(0 if realtime else 1, 0 if resumed else 1, place.seq),
            realtime=realtime,
            resumed=resumed,
            exclude=frozenset(exclude),
            place=place,
            buffered=buffered,
            future=asyncio.get_running_loop().create_future(),
        )
        bisect.insort(queue.waiters, waiter, key=lambda w: w.key)
        try:
            self._dispatch(pool)
        except BaseException:
            self._leave(pool, waiter)
            raise
        if not waiter.future.done():
            # A waiter whose task was cancelled in this turn of the loop (its client
            # left, its wait timed out) has a done future and leaves when that task
            # runs: it holds no place and cannot be evicted.
            waiting = sum(1 for w in queue.waiters if not w.future.done())
            if waiting > self._limits.max_streams and not (resumed or place.admitted):
                try:
                    self._make_room(pool, waiter)
                except BaseException:
                    self._leave(pool, waiter)
                    raise
            self._gauge(pool)
        wait_left = self._limits.max_wait_s - (self._clock() - place.since)
        try:
            async with asyncio.timeout(max(0.0, wait_left)):
                slot = await waiter.future
        except TimeoutError:
            self._leave(pool, waiter)
            handed = self._handed_over(waiter)
            if handed is not None:
                # The slot and the timeout came in the same turn of the loop: the
                # stream was admitted (and counted so); it keeps the slot.
                return handed
            raise self._reject(pool, waiter, QUEUE_TIMEOUT) from None
        except BaseException:
            self._leave(pool, waiter)
            handed = self._handed_over(waiter)
            if handed is not None:
                handed.release()
            raise
        return slot

    def admit_now(
        self,
        pool: str,
        realtime: bool,
        *,
        exclude: Collection[str] = (),
        place: QueuePlace | None = None,
    ) -> S | None:
        """An instance of ``pool`` reserved at once, or None: only while no stream waits
        in the pool's queue (none to overtake) and one has room. Counted as
        :meth:`admit` counts an admission; the caller must ``release()`` the slot.
        :meth:`admit` starts with it; a caller that must not wait (the native data
        path's control plane, answering ``open``) calls it alone, then :meth:`admit`
        with the same ``place`` if it got None. Raises :class:`Unavailable` when the
        router shuts down."""
        if self._closed:
            raise Unavailable("the router is shutting down")
        if self._queues[pool].waiters:
            return None
        slot = self._balancer.choose(self._candidates(pool), realtime, exclude)
        if slot is None:
            return None
        slot.reserve()
        self._admitted(pool, place or self.place(), realtime)
        return slot

    def notify(self, pool: str | None = None) -> None:
        """Capacity may have freed up (``pool`` or every pool): serve waiting streams."""
        for name in [pool] if pool is not None else list(self._queues):
            if name in self._queues and self._queues[name].waiters:
                self._dispatch(name)

    def snapshot(self, pool: str) -> QueueSnapshot:
        """The current figures of ``pool``'s queue."""
        queue = self._queues[pool]
        now = self._clock()
        realtime = sum(1 for w in queue.waiters if w.realtime)
        return QueueSnapshot(
            queued_realtime=realtime,
            queued_batch=len(queue.waiters) - realtime,
            queued_bytes=self._bytes(pool),
            oldest_wait_s=max((now - w.place.since for w in queue.waiters), default=0.0),
            admitted_total=queue.admitted_total,
            rejected_total=queue.rejected_total,
        )

    def queued(self) -> int:
        """Streams waiting in all pools."""
        return sum(len(q.waiters) for q in self._queues.values())

    def close(self) -> None:
        """Refuses new streams and fails waiting ones with UNAVAILABLE (idempotent)."""
        self._closed = True
        for pool, queue in self._queues.items():
            for waiter in list(queue.waiters):
                if not waiter.future.done():
                    waiter.future.set_exception(Unavailable("the router is shutting down"))
                self._leave(pool, waiter)

    def _make_room(self, pool: str, newcomer: _Waiter[S]) -> None:
        """The queue is full: a realtime newcomer takes the place of the last new batch
        stream; otherwise the newcomer is refused."""
        queue = self._queues[pool]
        victim = newcomer
        if newcomer.realtime:
            victim = next(
                (w for w in reversed(queue.waiters) if w.evictable and not w.future.done()),
                newcomer,
            )
        self._leave(pool, victim)
        err = self._reject(pool, victim, QUEUE_FULL)
        if victim is newcomer:
            raise err
        victim.future.set_exception(err)

    def _dispatch(self, pool: str) -> None:
        queue = self._queues[pool]
        served: list[_Waiter[S]] = []
        candidates: Sequence[S] | None = None
        for waiter in queue.waiters:
            if waiter.future.done():
                continue
            if candidates is None:
                candidates = self._candidates(pool)
            slot = self._balancer.choose(candidates, waiter.realtime, waiter.exclude)
            if slot is None:
                if not waiter.exclude:
                    break  # nobody behind it can be served either
                continue
            slot.reserve()
            waiter.future.set_result(slot)
            served.append(waiter)
        for waiter in served:
            self._leave(pool, waiter)
            self._admitted(pool, waiter.place, waiter.realtime)

    def _admitted(self, pool: str, place: QueuePlace, realtime: bool) -> None:
        """Counts a stream's admission, once per place (not again after a refusal)."""
        if not place.admitted:
            place.admitted = True
            self._queues[pool].admitted_total += 1
            self._metrics.admitted.labels(pool).inc()
            self._observe_wait(pool, realtime, place.since)

    @staticmethod
    def _handed_over(waiter: _Waiter[S]) -> S | None:
        """The slot reserved for ``waiter``, if it was given one."""
        fut = waiter.future
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            return fut.result()
        return None

    def _leave(self, pool: str, waiter: _Waiter[S]) -> None:
        queue = self._queues[pool]
        index = bisect.bisect_left(queue.waiters, waiter.key, key=lambda w: w.key)
        if index < len(queue.waiters) and queue.waiters[index] is waiter:
            del queue.waiters[index]
            self._gauge(pool)

    def _reject(self, pool: str, waiter: _Waiter[S], reason: str) -> ResourceExhausted:
        self._queues[pool].rejected_total += 1
        self._metrics.rejected.labels(pool, reason).inc()
        self._observe_wait(pool, waiter.realtime, waiter.place.since)
        logger.info("pool %s: stream rejected (%s)", pool, reason)
        detail = "queue is full" if reason == QUEUE_FULL else "no instance freed up in time"
        return ResourceExhausted(
            f"pool {pool} is at capacity: {detail}; retry later",
            retry_after=self._limits.retry_after_s,
        )

    def _observe_wait(self, pool: str, realtime: bool, since: float) -> None:
        priority = "realtime" if realtime else "batch"
        self._metrics.queue_wait.labels(pool, priority).observe(self._clock() - since)

    def _bytes(self, pool: str) -> int:
        """Audio bytes the waiting streams of ``pool`` hold (read at scrape time too, from
        the metrics thread: a copy of the list, and ``buffered`` only reads counters)."""
        return sum(w.buffered() for w in list(self._queues[pool].waiters))

    def _gauge(self, pool: str) -> None:
        waiters = self._queues[pool].waiters
        realtime = sum(1 for w in waiters if w.realtime)
        self._metrics.queue_depth.labels(pool, "realtime").set(realtime)
        self._metrics.queue_depth.labels(pool, "batch").set(len(waiters) - realtime)
