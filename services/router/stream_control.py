"""One stream's way through admission, attempt after attempt, whichever data path
relays it.

The Python relay (:mod:`services.router.relay`), the unary ``Recognize`` and the
control plane of the native data path (:mod:`services.router.control`) all place a
stream the same way, with a :class:`StreamControl`::

    place() ──▶ an instance is reserved ──attempt──▶ ended(outcome)
      ▲                                                  │
      │ FULL: the same queue place, the instance         │ DONE, ERROR: the stream is
      │ marked full until it reports again               │ done with instances
      │ FAILED: a new queue place (resumed, served       ▼
      │ first), the instance excluded and marked     check_failovers(): UNAVAILABLE
      └──────── failed; one more failover ◀───────── past max_failovers

The stream keeps one :class:`~services.router.admission.QueuePlace` while
instances refuse it (its turn, its wait counted from its arrival, admitted once)
and takes a new one after a failure. An instance is released before the queue
hears of it, marked full (a refusal) or failed (a failure) first, so that the
stream behind is not sent where this one could not go.

How an instance's status counts (:func:`instance_outcome`) and the errors of a
stream that cannot go on live here too, so both data paths answer alike.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable

import grpc

from services.router.admission import Admission
from services.router.membership import Member
from services.router.metrics import RouterMetrics
from voxmesh.errors import Unavailable, VoxmeshError
from voxmesh.rpc import status

__all__ = [
    "FAILOVER_CODES",
    "Outcome",
    "StreamControl",
    "UpstreamError",
    "instance_outcome",
    "stream_gave_up",
    "unreplayable_error",
]

logger = logging.getLogger(__name__)

FAILOVER_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN}
)
"""Statuses of an instance that mean "the instance failed", not "the stream is bad"."""


class Outcome(enum.Enum):
    """How one attempt on an instance ended."""

    DONE = "done"
    """The instance served the stream to its end (or the client has all of it)."""
    FULL = "full"
    """The instance refused the stream before any result: it waits again in its place."""
    FAILED = "failed"
    """The instance failed under the stream: it fails over."""
    ERROR = "error"
    """The attempt ended otherwise: an instance status the client gets as it is, the
    client's error or cancellation. The instance is released; nothing is counted."""


class UpstreamError(Exception):
    """An instance ended the stream with a status the client must see as it is."""

    def __init__(self, error: grpc.aio.AioRpcError) -> None:
        super().__init__(error.details())
        self.error = error

    async def abort(self, context: status.Abortable) -> None:
        """Ends the client's RPC with the instance's code, details and trailing
        metadata (rich status details such as RetryInfo included). Never returns."""
        err = self.error
        await context.abort(err.code(), err.details() or "", tuple(err.trailing_metadata() or ()))


def instance_outcome(error: grpc.aio.AioRpcError, answered: bool) -> Outcome:
    """What an instance's status means for the stream, ``answered`` when the instance
    sent a response first: FULL for a refusal before any response (full, or not
    accepting: it never started there), FAILED for a failure, ERROR for a status the
    client must get as it is."""
    if not answered and (status.instance_full(error) or status.not_accepting(error)):
        return Outcome.FULL
    if error.code() in FAILOVER_CODES:
        return Outcome.FAILED
    return Outcome.ERROR


def stream_gave_up(failovers: int) -> Unavailable:
    """The error of a stream that failed on more instances than ``max_failovers``."""
    return Unavailable(f"stream failed on {failovers} instances; giving up")


def unreplayable_error(replay_max_bytes: int) -> Unavailable:
    """The error of a stream whose instance failed once it had outgrown the replay
    buffer: it cannot fail over."""
    return Unavailable(
        "the serving instance failed and the stream cannot be replayed: it "
        f"outgrew the replay buffer ({replay_max_bytes} bytes)"
    )


class StreamControl:
    """The admission of one stream's attempts and the accounting of their outcomes
    (see the module docstring).

    ``name`` starts its log lines (``stream <id>``); ``gave_up`` builds the error past
    ``max_failovers``.
    """

    def __init__(
        self,
        *,
        admission: Admission[Member],
        metrics: RouterMetrics,
        pool: str,
        realtime: bool,
        max_failovers: int,
        name: str,
        gave_up: Callable[[int], VoxmeshError] = stream_gave_up,
    ) -> None:
        self._admission = admission
        self._metrics = metrics
        self.pool = pool
        """The pool that serves the stream."""
        self._realtime = realtime
        self._max_failovers = max_failovers
        self._name = name
        self._gave_up = gave_up
        self._place = admission.place()  # kept while instances refuse the stream
        self._exclude: set[str] = set()
        self.failovers = 0
        """Times the stream moved to another instance after a failure."""
        self.attempts = 0
        """Attempts ended so far."""
        self.member: Member | None = None
        """The instance reserved for the current attempt (None between attempts)."""

    async def place(self, buffered: Callable[[], int]) -> Member:
        """Reserves an instance for the next attempt, waiting in the queue while none
        has room; ``buffered`` reports the audio bytes the stream holds meanwhile.
        Raises what :meth:`Admission.admit` raises (queue full, wait too long, router
        shutting down). The instance is :attr:`member` until :meth:`ended`."""
        member = await self._admission.admit(
            self.pool,
            self._realtime,
            exclude=self._exclude,
            resumed=self.failovers > 0,
            buffered=buffered,
            place=self._place,
        )
        self.member = member
        return member

    def place_now(self) -> Member | None:
        """:meth:`place` when it needs no wait: an instance reserved at once while no
        stream waits ahead and one has room (:meth:`Admission.admit_now`), else None
        and nothing reserved (then :meth:`place`)."""
        member = self._admission.admit_now(
            self.pool, self._realtime, exclude=self._exclude, place=self._place
        )
        if member is not None:
            self.member = member
        return member

    def open_metadata(self) -> tuple[tuple[str, str], ...]:
        """The metadata the attempt opens with on :attr:`member`: the last-resort mark
        when it was chosen as a last resort (counted)."""
        assert self.member is not None, "open_metadata() without a placement"
        metadata = self.member.open_metadata()
        if metadata:
            self._metrics.last_resort.labels(self.pool).inc()
        return metadata

    def ended(self, outcome: Outcome) -> None:
        """The attempt on :attr:`member` ended with ``outcome``: releases the instance
        (marked failed first after a failure, full after a refusal), then counts an
        instance rejection (FULL) or a failover (FAILED: the instance is excluded and
        the stream takes a new queue place). Does nothing when no instance is held;
        never raises (:meth:`check_failovers` does, after a failure)."""
        member, self.member = self.member, None
        if member is None:
            return
        if outcome is Outcome.FAILED:
            member.mark_failed()
        member.release(full=outcome is Outcome.FULL)
        self.attempts += 1
        if outcome is Outcome.FULL:
            self._metrics.instance_rejections.labels(self.pool).inc()
        elif outcome is Outcome.FAILED:
            self._exclude.add(member.instance_id)
            self._place = self._admission.place()
            self.failovers += 1
            self._metrics.failovers.labels(self.pool).inc()
            logger.warning(
                "%s: instance %s failed; failing over (%d)",
                self._name,
                member.instance_id,
                self.failovers,
            )

    def check_failovers(self) -> None:
        """Raises the ``gave_up`` error once the stream failed over more than
        ``max_failovers`` times."""
        if self.failovers > self._max_failovers:
            raise self._gave_up(self.failovers)
