"""The router's streams in progress, whichever data path relays them.

Every stream (and unary request) is counted from its start to its end: the
router's own ``max_streams`` limit and its drain look at that count. A new one is
refused at once while the router drains (UNAVAILABLE: retry on another router) or
past ``max_streams`` (RESOURCE_EXHAUSTED with a retry hint). Its end is counted
by pool and status code, and the error that ends it becomes the client's status
here, in one place for the Python relay, the unary path and the native data path's
control plane.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc

from services.router.metrics import ROUTER_FULL, RouterMetrics
from services.router.stream_control import UpstreamError
from voxmesh.errors import ResourceExhausted, Unavailable, VoxmeshError
from voxmesh.rpc import status

__all__ = ["ActiveStreams", "StreamTally"]


class StreamTally:
    """What the end of one stream is counted with."""

    def __init__(self, metrics: RouterMetrics) -> None:
        self._metrics = metrics
        self.pool = "unknown"
        """The pool serving the stream ("unknown" until it is routed)."""
        self.code = grpc.StatusCode.OK
        """The status the client got, when the stream ends without an error here."""
        self.audio_seconds = 0.0
        """Seconds of LINEAR16 audio the stream carried."""
        self._routed = False

    def routed(self, pool: str) -> None:
        """The stream goes to ``pool``: counted there as active until it ends."""
        self.pool = pool
        self._routed = True
        self._metrics.streams_active.labels(pool).inc()

    def close(self) -> None:
        """The stream ended: no longer active in its pool."""
        if self._routed:
            self._routed = False
            self._metrics.streams_active.labels(self.pool).dec()


class ActiveStreams:
    """Counts, admits and ends the router's streams (see the module docstring)."""

    def __init__(self, metrics: RouterMetrics, *, max_streams: int, retry_after_s: float) -> None:
        self._metrics = metrics
        self._max_streams = max_streams
        self._retry_after_s = retry_after_s
        self._draining = False
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.audio_seconds_total = 0.0
        """Seconds of LINEAR16 audio relayed by finished streams."""

    @property
    def active(self) -> int:
        """Streams being served (queued or relayed)."""
        return self._active

    @property
    def draining(self) -> bool:
        """True once the router takes no new streams."""
        return self._draining

    def begin_drain(self) -> None:
        """Refuses new streams with UNAVAILABLE; active ones go on."""
        self._draining = True

    async def wait_idle(self, limit_s: float) -> bool:
        """Waits up to ``limit_s`` seconds for the active streams to end; True if they did."""
        try:
            async with asyncio.timeout(limit_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    @contextlib.asynccontextmanager
    async def stream(self, context: status.Abortable) -> AsyncIterator[StreamTally]:
        """One stream, from its RPC's start to its end.

        Refuses it at once while draining or past ``max_streams``; counts it active
        meanwhile; counts its end by pool and code (the tally's code when the block
        ends normally, CANCELLED when it is cancelled); ends the RPC with the status
        of a voxmesh error or of an instance's :class:`UpstreamError` raised inside.
        """
        tally = StreamTally(self._metrics)
        self._enter()
        try:
            self._check_open()
            yield tally
            self._count(tally, tally.code)
        except VoxmeshError as err:
            self._count(tally, status.code_of(err))
            await status.abort(context, err)
        except UpstreamError as err:
            self._count(tally, err.error.code())
            await err.abort(context)
        except asyncio.CancelledError:
            self._count(tally, grpc.StatusCode.CANCELLED)
            raise
        finally:
            tally.close()
            self.audio_seconds_total += tally.audio_seconds
            self._leave()

    def _count(self, tally: StreamTally, code: grpc.StatusCode) -> None:
        self._metrics.streams.labels(tally.pool, code.name).inc()

    def _check_open(self) -> None:
        """Refuses a new stream while draining or past the router's own limit."""
        if self._draining:
            raise Unavailable("the router is draining; retry on another router")
        if self._max_streams and self._active > self._max_streams:
            self._metrics.rejected.labels("any", ROUTER_FULL).inc()
            raise ResourceExhausted(
                f"the router is at capacity ({self._max_streams} streams); retry later",
                retry_after=self._retry_after_s,
            )

    def _enter(self) -> None:
        self._active += 1
        self._idle.clear()

    def _leave(self) -> None:
        self._active -= 1
        if self._active == 0:
            self._idle.set()
