"""The live view of the instances: discovery sets plus each instance's own telemetry.

For every pool a discovery :class:`~voxmesh.discovery.Watcher` yields the
healthy set; for every instance in it the router keeps one channel and two
subscriptions on it: ``TelemetryService.WatchTelemetry`` (active and maximum
streams, pending work, serving state) and ``grpc.health.v1.Health.Watch``.
A :class:`Member` combines them with the router's own in-flight count into
the live load the balancer uses.

An instance takes new streams only while it is listed by discovery, its
telemetry stream is up (or was never tried) and not silent (a snapshot within
``stale_after_s``: a peer gone without a reset sends nothing, and nothing says
so), its health is SERVING and its telemetry state is SERVING. One that leaves
discovery keeps its channel until the router's last stream on it ends. With the last resort on
(``last_resort_min_drain_s`` set), one that leaves it because it drains (health
NOT_SERVING or telemetry DRAINING) is also followed until it goes away, since
while its drain has that much left it may take a stream the balancer sends as a
last resort (see :meth:`Member.last_resort`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import grpc
from google.protobuf import duration_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.router.metrics import RouterMetrics
from voxmesh.discovery import InstanceInfo, Watcher
from voxmesh.rpc.metadata import LAST_RESORT_KEY
from voxmesh.stt.v1 import stt_pb2, stt_pb2_grpc

__all__ = ["Member", "Membership", "PoolStats"]

logger = logging.getLogger(__name__)

_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 20 * 1024 * 1024),
    ("grpc.max_send_message_length", 20 * 1024 * 1024),
]
_BACKOFF_MIN_S = 0.05
_BACKOFF_MAX_S = 2.0
STALE_AFTER_MIN_S = 5.0
STALE_AFTER_INTERVALS = 10
"""An instance whose telemetry is silent for this many intervals (at least
``STALE_AFTER_MIN_S``) takes no new streams until it speaks again."""


class Member:
    """One instance as the router sees it; a :class:`~services.router.admission.Slot`."""

    def __init__(
        self,
        info: InstanceInfo,
        channel: grpc.aio.Channel,
        on_change: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
        last_resort_min_drain_s: float | None = None,
        stale_after_s: float = float("inf"),
    ) -> None:
        self.info = info
        self.channel = channel
        self.recognizer = stt_pb2_grpc.RecognizerServiceStub(channel)
        self.inflight = 0
        """Streams of this router on the instance now."""
        self.listed = True
        """Still in the discovery set."""
        self.reachable = True
        """False after its telemetry stream or a stream on it failed, until a snapshot arrives."""
        self.health_serving = True
        """The last health status (instances register once SERVING)."""
        self.snapshot: stt_pb2.TelemetrySnapshot | None = None
        """The last telemetry snapshot."""
        self._inflight_at_snapshot = 0
        self._snapshot_at = 0.0
        self._full = False
        self._on_change = on_change
        self._clock = clock
        self._last_resort_min_drain_s = last_resort_min_drain_s
        self._stale_after_s = stale_after_s

    @property
    def instance_id(self) -> str:
        """Unique id of the instance."""
        return self.info.instance_id

    @property
    def region(self) -> str:
        """Region of the instance."""
        return self.info.region

    @property
    def gpu_type(self) -> str:
        """GPU type of the instance."""
        return self.info.gpu_type

    @property
    def capacity_class(self) -> str:
        """Capacity class of the instance."""
        return self.info.capacity_class

    @property
    def max_streams(self) -> int:
        """The instance's admission limit (telemetry first, discovery until then)."""
        if self.snapshot is not None and self.snapshot.max_streams > 0:
            return self.snapshot.max_streams
        return self.info.max_streams

    def active(self) -> int:
        """Streams on the instance: the last snapshot corrected by this router's changes since."""
        if self.snapshot is None:
            return self.inflight
        since = self.inflight - self._inflight_at_snapshot
        return max(self.inflight, self.snapshot.active_streams + since)

    def telemetry_age_s(self) -> float | None:
        """Seconds since the last snapshot arrived; None before the first."""
        if self.snapshot is None:
            return None
        return self._clock() - self._snapshot_at

    def accepting(self) -> bool:
        """True while the instance may get new streams."""
        if not (self.listed and self.reachable and self.health_serving) or self.info.draining:
            return False
        if self.snapshot is None:
            return True
        silent = self._clock() - self._snapshot_at > self._stale_after_s
        return not silent and self.snapshot.state == stt_pb2.SERVING_STATE_SERVING

    def draining(self) -> bool:
        """True once the instance drains: health NOT_SERVING or telemetry DRAINING."""
        if self.snapshot is not None and self.snapshot.state == stt_pb2.SERVING_STATE_DRAINING:
            return True
        return not self.health_serving or self.info.draining

    def last_resort(self) -> bool:
        """True while, draining, it may still take a stream sent as a last resort:
        reachable, and its telemetry says its drain has at least
        ``last_resort_min_drain_s`` left (counted down since that snapshot). Never
        when that is None (the last resort is off)."""
        snap, min_drain = self.snapshot, self._last_resort_min_drain_s
        if min_drain is None or not self.reachable or snap is None:
            return False
        if snap.state != stt_pb2.SERVING_STATE_DRAINING:
            return False
        left = self.drain_left_s()
        return left is not None and left >= min_drain

    def drain_left_s(self) -> float | None:
        """Seconds left of the instance's drain: its last snapshot's ``drain_remaining``
        counted down since; None unless that snapshot reports a bounded drain."""
        if self.snapshot is None or not self.snapshot.HasField("drain_remaining"):
            return None
        reported = self.snapshot.drain_remaining.ToMilliseconds() / 1000
        return max(0.0, reported - (self._clock() - self._snapshot_at))

    def open_metadata(self) -> tuple[tuple[str, str], ...]:
        """What a stream opened here now carries: the last-resort mark when the instance
        no longer accepts (the balancer chose it as a last resort)."""
        return () if self.accepting() else ((LAST_RESORT_KEY, "1"),)

    def has_room(self) -> bool:
        """True when the instance can take one more stream."""
        return not self._full and self.active() < self.max_streams

    def load(self) -> float:
        """(active streams + pending work) / max streams."""
        pending = self.snapshot.pending_work if self.snapshot is not None else 0
        return (self.active() + pending) / max(1, self.max_streams)

    def reserve(self) -> None:
        """Counts one more stream of this router here."""
        self.inflight += 1

    def release(self, full: bool = False) -> None:
        """A stream of this router left the instance; ``full`` when the instance refused
        it for lack of room: then no more streams go there until it reports again (or
        another stream leaves it). Waiting streams are told only once that is known,
        so the one behind is not sent to the instance that just refused."""
        self.inflight -= 1
        self._full = full
        self._on_change()

    def mark_failed(self) -> None:
        """A stream on the instance failed: no new ones until its telemetry speaks again."""
        self.reachable = False

    def update(self, snapshot: stt_pb2.TelemetrySnapshot) -> None:
        """Takes a new telemetry snapshot."""
        self.snapshot = snapshot
        self._snapshot_at = self._clock()
        self._inflight_at_snapshot = self.inflight
        self._full = False
        self.reachable = True
        self._on_change()


@dataclass(frozen=True)
class PoolStats:
    """What the router knows about one pool's instances."""

    instances: int
    """Instances that take new streams."""
    listed: int
    """Instances in the discovery set."""
    active_streams: int
    """Streams of this router on the pool."""
    capacity_streams: int
    """Sum of ``max_streams`` of the instances that take new streams."""


class Membership:
    """Follows discovery and every instance's telemetry and health."""

    def __init__(
        self,
        pools: Iterable[str],
        watcher_for: Callable[[str], Watcher],
        metrics: RouterMetrics,
        telemetry_interval_s: float,
        on_change: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
        last_resort_min_drain_s: float | None = None,
    ) -> None:
        self._pools = list(pools)
        self._last_resort_min_drain_s = last_resort_min_drain_s
        self._watcher_for = watcher_for
        self._metrics = metrics
        self._interval = duration_pb2.Duration()
        self._interval.FromMilliseconds(round(telemetry_interval_s * 1000))
        self._on_change = on_change
        self._clock = clock
        self._members: dict[str, dict[str, Member]] = {p: {} for p in self._pools}
        self._retired: set[Member] = set()
        self._grace: set[Member] = set()
        # How long a member that left discovery is still followed to see whether it
        # drains: its health or telemetry may say so just after discovery does.
        self._grace_s = max(0.5, 3 * telemetry_interval_s)
        # Silent for this long: no new streams (generous: a busy router reads late).
        self._stale_after_s = max(STALE_AFTER_MIN_S, STALE_AFTER_INTERVALS * telemetry_interval_s)
        self._followers: dict[Member, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def start(self) -> None:
        """Starts one discovery watch per pool."""
        for pool in self._pools:
            self._spawn(self._watch_pool(pool), f"discovery-{pool}")

    def candidates(self, pool: str) -> list[Member]:
        """The listed instances of ``pool`` (accepting or not), and those discovery
        dropped while they drain that may take a last-resort stream."""
        listed = list(self._members[pool].values())
        draining = [m for m in self._retired if m.info.pool == pool and m.last_resort()]
        return listed + sorted(draining, key=lambda m: m.instance_id)

    def instances(self) -> list[Member]:
        """Every instance known, sorted by pool then id: listed, or gone but still in use.

        An instance that left discovery stays until this router's last stream on it ends.
        """
        members = [m for ms in self._members.values() for m in ms.values()]
        members.extend(self._retired)
        return sorted(members, key=lambda m: (m.info.pool, m.instance_id, m.info.target))

    def served_models(self) -> dict[str, str]:
        """Model -> pool, from the instances discovered."""
        return {
            m.info.model: pool for pool, members in self._members.items() for m in members.values()
        }

    def stats(self, pool: str) -> PoolStats:
        """Instances, streams and capacity of ``pool``."""
        members = list(self._members[pool].values())
        inflight = sum(m.inflight for m in members) + sum(
            m.inflight for m in self._retired if m.info.pool == pool
        )
        serving = [m for m in members if m.accepting()]
        return PoolStats(
            instances=len(serving),
            listed=len(members),
            active_streams=inflight,
            capacity_streams=sum(m.max_streams for m in serving),
        )

    async def shutdown(self) -> None:
        """Stops every watch and subscription and closes the channels (idempotent)."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        members = [m for ms in self._members.values() for m in ms.values()] + list(self._retired)
        self._members = {p: {} for p in self._pools}
        self._retired.clear()
        self._grace.clear()
        await asyncio.gather(*(m.channel.close() for m in members), return_exceptions=True)

    def _spawn(self, coro: object, name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _watch_pool(self, pool: str) -> None:
        backoff = _BACKOFF_MIN_S
        while True:
            try:
                async for infos in self._watcher_for(pool).watch():
                    backoff = _BACKOFF_MIN_S
                    self._apply(pool, infos)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("pool %s: discovery watch failed; retrying", pool)
            await asyncio.sleep(backoff)
            backoff = min(_BACKOFF_MAX_S, backoff * 2)

    def _apply(self, pool: str, infos: list[InstanceInfo]) -> None:
        current = self._members[pool]
        wanted = {i.instance_id: i for i in infos if i.pool == pool}
        for instance_id in list(current):
            info = wanted.get(instance_id)
            if info is None or info.target != current[instance_id].info.target:
                self._retire(current.pop(instance_id))
        for instance_id, info in wanted.items():
            member = current.get(instance_id)
            if member is None:
                current[instance_id] = self._add(info)
                logger.info("pool %s: instance %s at %s", pool, instance_id, info.target)
            else:
                member.info = info
        self._refresh(pool)
        self._on_change(pool)

    def _add(self, info: InstanceInfo) -> Member:
        channel = grpc.aio.insecure_channel(info.target, options=_CHANNEL_OPTIONS)
        member = Member(
            info,
            channel,
            lambda: self._changed(member),
            self._clock,
            self._last_resort_min_drain_s,
            stale_after_s=self._stale_after_s,
        )
        self._followers[member] = self._spawn(self._follow(member), f"follow-{info.instance_id}")
        return member

    def _retire(self, member: Member) -> None:
        logger.info("pool %s: instance %s left discovery", member.info.pool, member.instance_id)
        member.listed = False
        self._retired.add(member)
        if self._last_resort_min_drain_s is not None and not member.draining():
            self._grace.add(member)
            self._spawn(self._end_grace(member), f"grace-{member.instance_id}")
        self._close_if_idle(member)

    async def _end_grace(self, member: Member) -> None:
        try:
            await asyncio.sleep(self._grace_s)
        finally:
            self._grace.discard(member)
        self._close_if_idle(member)

    def _still_followed(self, member: Member) -> bool:
        """A member out of discovery is still followed while it is reachable and drains
        (it may take last-resort streams until it goes away), or has just left; only
        with the last resort on."""
        if self._last_resort_min_drain_s is None or not member.reachable:
            return False
        return member.draining() or member in self._grace

    def _stop_following(self, member: Member) -> None:
        follower = self._followers.pop(member, None)
        if follower is not None:
            follower.cancel()

    def _changed(self, member: Member) -> None:
        if not member.listed:
            self._close_if_idle(member)
        if not self._closed:
            self._refresh(member.info.pool)
            self._on_change(member.info.pool)

    def _close_if_idle(self, member: Member) -> None:
        if member.inflight or member not in self._retired or self._closed:
            return
        if self._still_followed(member):
            return
        self._retired.discard(member)
        self._stop_following(member)
        self._spawn(member.channel.close(), f"close-{member.instance_id}")

    def _refresh(self, pool: str) -> None:
        stats = self.stats(pool)
        self._metrics.instances.labels(pool, "accepting").set(stats.instances)
        self._metrics.instances.labels(pool, "not_accepting").set(stats.listed - stats.instances)
        self._metrics.capacity.labels(pool).set(stats.capacity_streams)

    async def _follow(self, member: Member) -> None:
        await asyncio.gather(self._follow_telemetry(member), self._follow_health(member))

    async def _follow_telemetry(self, member: Member) -> None:
        stub = stt_pb2_grpc.TelemetryServiceStub(member.channel)
        request = stt_pb2.WatchTelemetryRequest(interval=self._interval)
        backoff = _BACKOFF_MIN_S
        while True:
            try:
                async for response in stub.WatchTelemetry(request):
                    backoff = _BACKOFF_MIN_S
                    member.update(response.snapshot)
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.UNIMPLEMENTED:
                    logger.warning("instance %s has no telemetry", member.instance_id)
                    return
                logger.debug("instance %s telemetry: %s", member.instance_id, err.code())
            if member.reachable:
                member.reachable = False
                self._changed(member)
            await asyncio.sleep(backoff)
            backoff = min(_BACKOFF_MAX_S, backoff * 2)

    async def _follow_health(self, member: Member) -> None:
        stub = health_pb2_grpc.HealthStub(member.channel)
        backoff = _BACKOFF_MIN_S
        while True:
            with contextlib.suppress(grpc.aio.AioRpcError):
                async for response in stub.Watch(health_pb2.HealthCheckRequest(service="")):
                    backoff = _BACKOFF_MIN_S
                    serving = response.status == health_pb2.HealthCheckResponse.SERVING
                    if serving != member.health_serving:
                        member.health_serving = serving
                        self._changed(member)
            await asyncio.sleep(backoff)
            backoff = min(_BACKOFF_MAX_S, backoff * 2)
