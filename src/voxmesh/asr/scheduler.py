"""The per-process decode scheduler: one model, many streams.

Sessions submit :class:`~voxmesh.asr.decoder.DecodeJob` s; one worker takes
them in priority order and runs them on the model in batches:

* order: realtime before batch, finals before interims, then oldest first;
* a batch holds at most ``max_batch`` jobs; once the first job is taken the
  worker waits up to ``max_wait`` for more (0 on CPU, where batching does
  not pay; a few milliseconds on a GPU);
* the model runs in a single-thread executor, off the event loop;
* finals ask for a wider beam search than interims (``DecodeJob.wide_beam``);
  when other jobs are still waiting once a batch is taken, the batch is
  decoded greedily instead: under load, the beam's extra model time would
  come out of other streams' latency (``narrowed`` counts those jobs);
* a job whose submitter was cancelled (stream gone), or that its session
  withdrew (:meth:`DecodeTicket.withdraw`: an interim made pointless by the
  pause that just began), is dropped before it runs.

``pending`` (jobs waiting) is the load signal sessions use to thin out their
interim decodes and that telemetry reports.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from voxmesh import tasks
from voxmesh.asr.decoder import DecodeJob, DecodeOutput, Decoder
from voxmesh.errors import Unavailable

__all__ = ["DecodeScheduler", "DecodeTicket", "JobKind", "SchedulerOptions", "SchedulerStats"]

logger = logging.getLogger(__name__)


class JobKind:
    """Urgency classes; lower sorts first."""

    REALTIME_FINAL = 0
    REALTIME_INTERIM = 1
    BATCH_FINAL = 2
    BATCH_INTERIM = 3

    @staticmethod
    def of(*, realtime: bool, final: bool) -> int:
        """The class of a job."""
        return (0 if realtime else 2) + (0 if final else 1)


@dataclass(frozen=True)
class SchedulerOptions:
    """Batching bounds."""

    max_batch: int = 4
    """Most jobs decoded in one model call."""
    max_wait: float = 0.0
    """Seconds to wait for a fuller batch once a job is ready."""
    prioritise: bool = True
    """Order by urgency class; False serves strictly first come first served."""


@dataclass
class SchedulerStats:
    """Totals since start (read by metrics and telemetry)."""

    batches: int = 0
    jobs: int = 0
    dropped: int = 0
    narrowed: int = 0
    """Jobs that asked for the wide beam and were decoded greedily (others were waiting)."""
    busy_seconds: float = 0.0


@dataclass(order=True)
class _Entry:
    key: tuple[int, float, int]
    job: DecodeJob = field(compare=False)
    future: asyncio.Future[DecodeOutput] = field(compare=False)
    started: bool = field(default=False, compare=False)


class DecodeTicket:
    """A queued job: its output, and a way to take it back while it has not started."""

    def __init__(self, entry: _Entry) -> None:
        self._entry = entry

    @property
    def future(self) -> asyncio.Future[DecodeOutput]:
        """Resolves to the job's output (cancelled if withdrawn or dropped; UNAVAILABLE
        if the scheduler shut down first)."""
        return self._entry.future

    @property
    def started(self) -> bool:
        """The model has taken the job (it can no longer be withdrawn)."""
        return self._entry.started

    def withdraw(self) -> bool:
        """Drops the job if the model has not taken it yet; True if it was dropped."""
        if self._entry.started or self._entry.future.done():
            return False
        self._entry.future.cancel()
        return True


class DecodeScheduler:
    """Batches decode work from every stream of the process."""

    def __init__(
        self,
        decoder: Decoder,
        options: SchedulerOptions,
        clock: Callable[[], float] = time.monotonic,
        on_batch: Callable[[int, float, list[float], int], None] | None = None,
    ) -> None:
        self._decoder = decoder
        self._options = options
        self._clock = clock
        self._on_batch = on_batch
        self._heap: list[_Entry] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="voxmesh-decode")
        self._task: asyncio.Task[None] | None = None
        self.stats = SchedulerStats()
        self._busy: collections.deque[tuple[float, float]] = collections.deque(maxlen=64)

    @property
    def pending(self) -> int:
        """Jobs waiting for the model (not counting the batch running)."""
        return sum(1 for e in self._heap if not e.future.done())

    def utilization(self, window: float = 5.0) -> float:
        """Share of the last ``window`` seconds the model was busy, in [0, 1]."""
        now = self._clock()
        since = now - window
        busy = sum(max(0.0, end - max(start, since)) for start, end in self._busy if end > since)
        return min(1.0, busy / window)

    @property
    def max_batch(self) -> int:
        """The batch bound."""
        return self._options.max_batch

    def start(self) -> None:
        """Starts the worker task (idempotent)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="voxmesh-decode-scheduler")

    def enqueue(self, job: DecodeJob, *, realtime: bool, final: bool) -> DecodeTicket:
        """Queues ``job``; the ticket's future resolves to its output."""
        if self._task is None or self._task.done():
            raise RuntimeError("decode scheduler is not running")
        kind = JobKind.of(realtime=realtime, final=final) if self._options.prioritise else 0
        future: asyncio.Future[DecodeOutput] = asyncio.get_running_loop().create_future()
        entry = _Entry((kind, self._clock(), next(self._seq)), job, future)
        heapq.heappush(self._heap, entry)
        self._wake.set()
        return DecodeTicket(entry)

    async def submit(self, job: DecodeJob, *, realtime: bool, final: bool) -> DecodeOutput:
        """Queues ``job`` and waits for its output; cancelling drops the job."""
        return await self.enqueue(job, realtime=realtime, final=final).future

    async def _next_batch(self) -> list[_Entry]:
        while True:
            while self._heap and self._heap[0].future.done():
                heapq.heappop(self._heap)
                self.stats.dropped += 1
            if self._heap:
                break
            self._wake.clear()
            await self._wake.wait()
        if self._options.max_wait > 0 and len(self._heap) < self._options.max_batch:
            deadline = self._clock() + self._options.max_wait
            while len(self._heap) < self._options.max_batch and self._clock() < deadline:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(deadline - self._clock()):
                        await self._wake.wait()
        batch: list[_Entry] = []
        while self._heap and len(batch) < self._options.max_batch:
            entry = heapq.heappop(self._heap)
            if entry.future.done():
                self.stats.dropped += 1
                continue
            entry.started = True
            batch.append(entry)
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            started = self._clock()
            waits = [started - e.key[1] for e in batch]
            jobs = [e.job for e in batch]
            narrowed = 0
            if self.pending:
                narrowed = sum(j.wide_beam for j in jobs)
                jobs = [replace(j, wide_beam=False) if j.wide_beam else j for j in jobs]
            try:
                outputs = await loop.run_in_executor(self._executor, self._decoder.decode, jobs)
            except asyncio.CancelledError:
                for entry in batch:
                    if not entry.future.done():
                        entry.future.set_exception(_shutting_down())
                raise
            except Exception as err:  # the model failed: fail these jobs, keep serving
                logger.exception("decode batch of %d failed", len(batch))
                for entry in batch:
                    if not entry.future.done():
                        entry.future.set_exception(err)
                continue
            elapsed = self._clock() - started
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "batch kinds=%s waits=%s narrowed=%d took %.3f s (%d pending)",
                    [e.key[0] for e in batch],
                    [round(w, 3) for w in waits],
                    narrowed,
                    elapsed,
                    self.pending,
                )
            self.stats.batches += 1
            self.stats.jobs += len(batch)
            self.stats.narrowed += narrowed
            self.stats.busy_seconds += elapsed
            self._busy.append((started, started + elapsed))
            if self._on_batch is not None:
                self._on_batch(len(batch), elapsed, waits, narrowed)
            for entry, output in zip(batch, outputs, strict=True):
                if not entry.future.done():
                    entry.future.set_result(output)

    async def shutdown(self) -> None:
        """Stops the worker; queued jobs fail with UNAVAILABLE (idempotent), so that
        their streams end in an error, not as if complete. Returns once a decode still
        running on the model has ended, without blocking the event loop meanwhile."""
        if self._task is not None:
            await tasks.stop(self._task)
        for entry in self._heap:
            if not entry.future.done():
                entry.future.set_exception(_shutting_down())
        self._heap.clear()
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)


def _shutting_down() -> Unavailable:
    return Unavailable("instance shutting down: the decode was not run")
