"""Signals from gRPC telemetry: every instance's and every router's WatchTelemetry stream.

Discovery says who to follow: one watcher per pool for the instances and one for the
routers (a fixed list in single-machine mode, the ``voxmesh-router`` Consul service in a
cluster). Each listed endpoint gets one subscription, re-opened with backoff after an
error. An instance that leaves discovery (it is draining, or gone) keeps its subscription
until its stream ends, so the streams it is still finishing keep counting as demand; it
no longer counts for the signals' age. Every endpoint sends a snapshot per interval: a
stream silent for ``silence_s`` is taken for dead and re-opened (or, unlisted, ended). A
host that vanished without a reset (a reclaimed node) never ends its stream otherwise, and
its last snapshot would count as demand, its feed stay, for as long as the source runs.
An instance listed again under the same id at a new address (it restarted elsewhere) is
followed there: the subscription to the old address is cancelled at once, since its feed
no longer counts for anything.

Per pool, :meth:`TelemetrySource.read` combines the last snapshots: demand is the active
streams (the larger of the instances' sum and the routers' in-flight count, which cover
each other's lag) plus the routers' queued streams; the age is that of the oldest snapshot
of a listed endpoint (an endpoint listed but never heard from counts from when it was
listed), and the router age that of the oldest listed router's alone: one silent instance
makes the signals stale (no scale-down) but leaves the demand, which the routers give on
their own, fresh enough to scale up on. Without any router there is no queue information,
so the pool is reported missing and the loop holds it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import grpc

from services.autoscaler.signals.base import InstanceLoad, PoolLoad
from voxmesh import tasks
from voxmesh.discovery import InstanceInfo, Watcher
from voxmesh.rpc.tls import ClientTls
from voxmesh.stt.v1 import stt_pb2, stt_pb2_grpc
from voxmesh.telemetry.stats import known_figure, max_known

__all__ = ["StaticWatcher", "TelemetrySource"]

logger = logging.getLogger(__name__)

_ROUTER = ""
"""The feed kind of routers (instance feeds use their pool's name)."""


class StaticWatcher:
    """A :class:`~voxmesh.discovery.Watcher` of a fixed list of ``host:port`` endpoints."""

    def __init__(self, targets: Sequence[str], role: str = "router") -> None:
        self._infos = [_endpoint(target, role) for target in targets]

    async def watch(self) -> AsyncIterator[list[InstanceInfo]]:
        """Yields the list once and then nothing (it never changes)."""
        yield list(self._infos)
        await asyncio.Event().wait()


def _endpoint(target: str, role: str) -> InstanceInfo:
    host, _, port = target.rpartition(":")
    return InstanceInfo(instance_id=target, pool=role, model="", address=host, port=int(port))


@dataclass
class _Feed:
    """One endpoint's subscription and what it last said."""

    kind: str
    info: InstanceInfo
    listed_at: float
    listed: bool = True
    snapshot: stt_pb2.TelemetrySnapshot | None = None
    received_at: float | None = None
    task: asyncio.Task[None] | None = None

    def age(self, now: float) -> float:
        return now - (self.received_at if self.received_at is not None else self.listed_at)


class TelemetrySource:
    """:class:`~services.autoscaler.signals.base.SignalSource` over WatchTelemetry streams."""

    def __init__(
        self,
        pools: Sequence[str],
        instance_watcher: Callable[[str], Watcher],
        router_watcher: Watcher,
        *,
        interval_s: float = 0.5,
        backoff_s: tuple[float, float] = (0.2, 5.0),
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        router_tls: ClientTls | None = None,
        silence_s: float | None = None,
    ) -> None:
        """``router_tls``: how routers serving TLS are reached (None: plaintext);
        instances are always reached in plaintext, inside the mesh. ``silence_s``: how long
        a stream may say nothing before it counts as dead (None: ten intervals, at least
        10 s)."""
        self._pools = list(pools)
        self._router_credentials = router_tls.credentials() if router_tls else None
        self._instance_watcher = instance_watcher
        self._router_watcher = router_watcher
        self._interval_s = interval_s
        self._silence_s = max(10 * interval_s, 10.0) if silence_s is None else silence_s
        self._backoff = backoff_s
        self._clock = clock
        self._rng = rng or random.Random()
        self._feeds: dict[tuple[str, str], _Feed] = {}
        self._subscriptions: set[asyncio.Task[None]] = set()
        """Every feed's task until it ends, also those no longer in ``_feeds``."""
        self._stop = asyncio.Event()
        self._finished = asyncio.Event()
        self._started = False

    async def run(self) -> None:
        """Follows discovery and the telemetry streams until :meth:`shutdown`."""
        if self._started or self._stop.is_set():
            return
        self._started = True
        watchers = [
            asyncio.create_task(self._follow(pool, self._instance_watcher(pool)), name=pool)
            for pool in self._pools
        ]
        watchers.append(asyncio.create_task(self._follow(_ROUTER, self._router_watcher)))
        try:
            await self._stop.wait()
        finally:
            # The watchers first, so that no feed starts while the feeds are cancelled; then
            # every subscription, in ``_feeds`` or not (a moved instance's old one).
            await tasks.stop_all(watchers)
            await tasks.stop_all(self._subscriptions)
            self._feeds.clear()
            self._finished.set()

    async def shutdown(self) -> None:
        """Stops every subscription; idempotent."""
        self._stop.set()
        if self._started:
            await self._finished.wait()

    def read(self, pool: str) -> PoolLoad:
        """The pool's load from the last snapshots (see the module docstring)."""
        now = self._clock()
        routers = [f for f in self._feeds.values() if f.kind == _ROUTER and f.listed]
        instances = [f for f in self._feeds.values() if f.kind == pool]
        ages = [f.age(now) for f in routers + instances if f.listed]
        heard = [f.snapshot for f in routers if f.snapshot is not None]
        queues = [q for snapshot in heard for q in snapshot.queues if q.pool == pool]
        reported = [(f, f.snapshot) for f in instances if f.snapshot is not None]
        limits = [s.max_streams for f, s in reported if f.listed and s.max_streams > 0]
        limits += [f.info.max_streams for f in instances if f.listed and f.snapshot is None]
        missing = ""
        if not routers:
            missing = "no router to follow (the admission queues are invisible)"
        elif not heard:
            missing = "no telemetry from any router yet"
        return PoolLoad(
            pool=pool,
            active_streams=max(
                sum(s.active_streams for _, s in reported),
                sum(q.active_streams for q in queues),
            ),
            queued_realtime=sum(q.queued_realtime for q in queues),
            queued_batch=sum(q.queued_batch for q in queues),
            oldest_wait_s=max((q.oldest_wait_seconds for q in queues), default=0.0),
            max_streams=max(limits, default=None),
            instances=tuple(_instance_load(f, s) for f, s in reported),
            age_s=max(ages, default=math.inf),
            router_age_s=max((f.age(now) for f in routers), default=math.inf),
            missing=missing,
        )

    def instance_streams(self, instance_id: str) -> int | None:
        """Active streams of one instance from its last snapshot; None when never heard."""
        for feed in self._feeds.values():
            if feed.kind != _ROUTER and feed.info.instance_id == instance_id and feed.snapshot:
                return int(feed.snapshot.active_streams)
        return None

    async def _follow(self, kind: str, watcher: Watcher) -> None:
        """Keeps one feed per listed endpoint of ``kind``; restarts a failing watcher."""
        failures = 0
        while True:
            try:
                async for infos in watcher.watch():
                    failures = 0
                    self._relist(kind, infos)
            except Exception:
                logger.exception("discovery watch of %s failed", kind or "routers")
            failures += 1
            await asyncio.sleep(self._delay(failures))

    def _relist(self, kind: str, infos: list[InstanceInfo]) -> None:
        listed = {info.instance_id: info for info in infos}
        for key, old in self._feeds.items():
            if key[0] == kind and key[1] not in listed and old.listed:
                old.listed = False
                logger.info("%s left discovery: following its stream to the end", key[1])
        for instance_id, info in listed.items():
            feed = self._feeds.get((kind, instance_id))
            if feed is not None and feed.info.target == info.target:
                feed.listed, feed.info = True, info
                continue
            if feed is not None:
                # Moved: the old feed leaves ``_feeds`` and so counts for nothing any more.
                logger.info("%s moved from %s to %s", instance_id, feed.info.target, info.target)
                feed.listed = False
                if feed.task is not None:
                    feed.task.cancel()
            new = _Feed(kind, info, listed_at=self._clock())
            self._feeds[(kind, instance_id)] = new
            new.task = asyncio.create_task(self._subscribe(new), name=f"telemetry-{instance_id}")
            self._subscriptions.add(new.task)
            new.task.add_done_callback(self._subscriptions.discard)

    async def _subscribe(self, feed: _Feed) -> None:
        """Follows one endpoint's stream, re-opening it while the endpoint stays listed."""
        request = stt_pb2.WatchTelemetryRequest()
        request.interval.FromMilliseconds(round(self._interval_s * 1000))
        failures = 0
        try:
            while True:
                try:
                    async with self._channel(feed) as channel:
                        stub = stt_pb2_grpc.TelemetryServiceStub(channel)
                        call = stub.WatchTelemetry(request)
                        while True:
                            try:
                                async with asyncio.timeout(self._silence_s):
                                    response = await call.read()
                            except TimeoutError:  # the read is cancelled, and the call
                                why = f"nothing for {self._silence_s:g} s"
                                break
                            if not isinstance(response, stt_pb2.WatchTelemetryResponse):  # EOF
                                why = "stream ended"
                                if _drained(feed):
                                    why += " after its drain"
                                break
                            feed.snapshot, feed.received_at = response.snapshot, self._clock()
                            failures = 0
                except grpc.aio.AioRpcError as err:
                    why = f"{err.code().name}: {err.details()}"
                if not _wanted(feed):
                    return
                failures += 1
                # A router or instance that drained and stopped ends its stream: news, not
                # a fault (its replacement, if any, comes through discovery).
                first = logger.info if _drained(feed) else logger.warning
                log = first if failures == 1 else logger.debug
                log("telemetry of %s (%s): %s", feed.info.instance_id, feed.info.target, why)
                await asyncio.sleep(self._delay(failures))
                if not _wanted(feed):
                    return
        finally:
            key = (feed.kind, feed.info.instance_id)
            if self._feeds.get(key) is feed:
                del self._feeds[key]

    def _channel(self, feed: _Feed) -> grpc.aio.Channel:
        if feed.kind == _ROUTER and self._router_credentials is not None:
            return grpc.aio.secure_channel(feed.info.target, self._router_credentials)
        return grpc.aio.insecure_channel(feed.info.target)

    def _delay(self, failures: int) -> float:
        base, cap = self._backoff
        return min(cap, base * 2.0 ** (failures - 1)) * (0.5 + self._rng.random() / 2)


def _drained(feed: _Feed) -> bool:
    """Whether the feed's last snapshot said its endpoint drains."""
    return feed.snapshot is not None and feed.snapshot.state == stt_pb2.SERVING_STATE_DRAINING


def _wanted(feed: _Feed) -> bool:
    """Whether a feed's endpoint is still listed (read afresh after every await)."""
    return feed.listed


def _instance_load(feed: _Feed, snapshot: stt_pb2.TelemetrySnapshot) -> InstanceLoad:
    gpus = list(snapshot.gpus) if snapshot.gpu_available else []
    memory = [
        used / total
        for g in gpus
        if (used := known_figure(g, "memory_used_bytes")) is not None
        and (total := known_figure(g, "memory_total_bytes"))
    ]
    return InstanceLoad(
        instance_id=snapshot.instance_id or feed.info.instance_id,
        capacity_class=snapshot.capacity_class or feed.info.capacity_class,
        active_streams=snapshot.active_streams,
        max_streams=snapshot.max_streams,
        serving=feed.listed and snapshot.state == stt_pb2.SERVING_STATE_SERVING,
        gpu_utilisation=max_known(gpus, "utilization_ratio"),
        gpu_memory_ratio=max(memory, default=None),
        real_time_factor=snapshot.real_time_factor,
    )
