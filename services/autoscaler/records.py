"""What the loop records and reports: decision records, their log, and pool status views.

:class:`DecisionLog` keeps the last records in memory and fans new ones out to
watchers (the gRPC WatchDecisions stream). A watcher that falls more than its queue
behind is ended rather than allowed to block the loop; it re-subscribes with a replay.
"""

from __future__ import annotations

import asyncio
import enum
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from services.autoscaler.signals.base import PoolLoad
from services.autoscaler.targets.base import CapacityClass

__all__ = [
    "DecisionLog",
    "DecisionRecord",
    "GroupAction",
    "GroupView",
    "Kind",
    "Outcome",
    "Phase",
    "PoolView",
]


class Phase(enum.Enum):
    """The evaluation loop's phase for one pool (diagram in :mod:`services.autoscaler.loop`)."""

    IDLE = "idle"
    SCALING = "scaling"
    COOLDOWN = "cooldown"


class Kind(enum.Enum):
    """What a record describes."""

    SCALE = "scale"
    """The policy asked for a different size of at least one group."""
    HOLD = "hold"
    """The policy kept every group's size."""
    ADOPT = "adopt"
    """An external count change was adopted."""


class Outcome(enum.Enum):
    """What happened to one group's part of a decision."""

    NO_CHANGE = "no-change"
    APPLIED = "applied"
    UNCHANGED = "unchanged"
    REFUSED = "refused"
    DEFERRED = "deferred"
    PAUSED = "paused"
    DRY_RUN = "dry-run"
    FAILED = "failed"


@dataclass(frozen=True)
class GroupAction:
    """One group's part of a decision and its outcome."""

    group: str
    """The group's name (``asr_small/on-demand``)."""
    capacity_class: CapacityClass
    """On-demand or preemptible."""
    current: int
    """Serving plus starting instances when the decision was made."""
    desired: int
    """The size the decision wants."""
    drain: int
    """Serving instances to drain to get there."""
    outcome: Outcome
    """What happened."""
    detail: str = ""
    """The target's message, the refusal or the error."""


@dataclass(frozen=True)
class DecisionRecord:
    """One recorded decision."""

    sequence: int
    """Position in this replica's log (all pools share it), from 1."""
    time: float
    """Wall-clock time (epoch seconds)."""
    pool: str
    """The pool."""
    kind: Kind
    """What it describes."""
    reason: str
    """Why, for people."""
    actions: tuple[GroupAction, ...]
    """One entry per group of the pool, on-demand first."""


@dataclass(frozen=True)
class GroupView:
    """One capacity group as the last evaluation saw it."""

    group: str
    capacity_class: CapacityClass
    target_count: int
    """The count asked of the target."""
    desired: int
    """The count the last decision wanted."""
    serving: int
    starting: int
    draining: int
    reclaiming: int
    min_count: int
    max_count: int
    placement_failing: bool
    placement_reason: str


@dataclass(frozen=True)
class PoolView:
    """One pool's state for the status API."""

    pool: str
    phase: Phase
    paused: bool
    pause_reason: str
    load: PoolLoad | None
    """The signals of the last evaluation; None before it."""
    max_streams: int
    """The per-instance stream limit the last evaluation assumed."""
    groups: tuple[GroupView, ...]
    recent: tuple[DecisionRecord, ...]
    evaluated_at: float | None
    """Wall-clock time of the last evaluation; None before it."""


def _shape(text: str) -> str:
    """``text`` without its numbers."""
    return re.sub(r"\d+(\.\d+)?", "#", text)


class DecisionLog:
    """The last ``keep`` records, and live fan-out to watchers."""

    def __init__(
        self, keep: int = 100, *, queue_size: int = 256, wall: Callable[[], float] = time.time
    ) -> None:
        self._records: deque[DecisionRecord] = deque(maxlen=keep)
        self._watchers: set[asyncio.Queue[DecisionRecord | None]] = set()
        self._queue_size = queue_size
        self._wall = wall
        self._sequence = 0
        self._signatures: dict[str, object] = {}
        self._closed = False

    def record(
        self, pool: str, kind: Kind, reason: str, actions: tuple[GroupAction, ...]
    ) -> DecisionRecord | None:
        """Appends a decision unless it repeats the pool's previous one in shape.

        The shape is everything but the numbers of the texts: a hold repeated with new
        figures is not news, a change of counts, outcome or cause is. A decision with an
        applied action is always news. Returns the record, or None when skipped.
        """
        signature = (
            kind,
            _shape(reason),
            tuple((a.group, a.current, a.desired, a.outcome, _shape(a.detail)) for a in actions),
        )
        applied = any(a.outcome is Outcome.APPLIED for a in actions)
        if not applied and self._signatures.get(pool) == signature:
            return None
        self._signatures[pool] = signature
        return self.append(pool, kind, reason, actions)

    def forget(self, pool: str) -> None:
        """Makes the pool's next decision news (a new leader, a new state)."""
        self._signatures.pop(pool, None)

    def append(
        self, pool: str, kind: Kind, reason: str, actions: tuple[GroupAction, ...]
    ) -> DecisionRecord:
        """Records a decision and hands it to every watcher."""
        self._sequence += 1
        record = DecisionRecord(self._sequence, self._wall(), pool, kind, reason, actions)
        self._records.append(record)
        for queue in list(self._watchers):
            if queue.qsize() < self._queue_size:
                queue.put_nowait(record)
            else:  # too slow: end its stream after what it has; it replays on reconnect
                self._watchers.discard(queue)
                queue.put_nowait(None)  # the one slot kept free for the end
        return record

    def recent(self, pool: str | None = None, limit: int | None = None) -> list[DecisionRecord]:
        """The kept records (of ``pool``, or all), oldest first, at most ``limit``."""
        records = [r for r in self._records if pool is None or r.pool == pool]
        if limit is not None:
            records = records[-limit:] if limit > 0 else []
        return records

    async def watch(
        self, pool: str | None = None, replay: int = 0
    ) -> AsyncIterator[DecisionRecord]:
        """The last ``replay`` records, then new ones until :meth:`close` (or overflow)."""
        if self._closed:
            return
        queue: asyncio.Queue[DecisionRecord | None] = asyncio.Queue(self._queue_size + 1)
        self._watchers.add(queue)
        try:
            for record in self.recent(pool, replay):
                yield record
            while (new := await queue.get()) is not None:
                if pool is None or new.pool == pool:
                    yield new
        finally:
            self._watchers.discard(queue)

    def close(self) -> None:
        """Ends every watch; idempotent."""
        self._closed = True
        for queue in list(self._watchers):
            self._watchers.discard(queue)
            queue.put_nowait(None)
