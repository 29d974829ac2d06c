"""The local scale target: ASR instances as processes on this machine (single-machine mode).

Each capacity group (``asr_small/on-demand``; ``/preemptible`` only when configured: the
local mesh treats everything as on-demand) runs ``python -m services.<pool>`` processes
that announce themselves in the file registry. :meth:`LocalTarget.scale` only sets the
group's count; a reconcile step then starts or stops processes, like a scheduler would:

- up: start the missing instances (``ServiceProcess``, which waits for the instance's
  ``VOXMESH_READY`` line; the process start to ready time is the measured start-up);
- down: cancel starting instances first (they have no streams: killed, or never started
  if their process is not made yet), then drain serving ones, fewest active streams
  first: SIGTERM, the instance finishes its streams and exits; it is killed only if still
  alive ``drain_timeout_s`` plus a grace later;
- an instance that exits on its own or fails to start (its process cannot even be made,
  or never prints its ready line) is replaced after a backoff; while its group keeps
  failing, its status reports a placement failure with the reason.

Instance states::

    STARTING --(ready line)--> SERVING --(scale down: SIGTERM)--> DRAINING --(exit)--> gone
        |                         |
        +--(scale down: kill)--> gone        (unexpected exit or failed start: replaced)
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from services.autoscaler.targets.base import (
    CapacityClass,
    GroupStatus,
    Reclaim,
    Refusal,
    ScaleOutcome,
    ScaleResult,
    group_name,
)
from voxmesh.mesh.process import ServiceProcess

__all__ = ["LocalGroup", "LocalTarget", "ManagedProcess", "spawn_service"]

logger = logging.getLogger(__name__)

_FAILING_AFTER = 2
"""Consecutive failed starts or crashes after which a group reports failing placements."""


class ManagedProcess(Protocol):
    """The part of :class:`~voxmesh.mesh.process.ServiceProcess` the target uses."""

    @property
    def ready_after(self) -> float:
        """Seconds from process start to its ready line."""
        ...

    async def start(self, ready_timeout: float = 120.0) -> None:
        """Starts the process and waits for its ready line; raises if it never comes."""
        ...

    def signal_drain(self) -> None:
        """Sends SIGTERM (the instance drains) without waiting."""
        ...

    async def wait(self, timeout: float | None = None) -> int | None:
        """Waits for the exit; the exit code, or None on timeout."""
        ...

    async def kill(self) -> None:
        """SIGKILL now."""
        ...


Spawn = Callable[["LocalGroup", str], ManagedProcess]
"""Makes (not starts) the process of one instance of a group, given its instance id."""


@dataclass(frozen=True)
class LocalGroup:
    """One capacity group run as local processes."""

    pool: str
    """The pool (``asr_small``); the module run is ``services.<pool>``."""
    capacity_class: CapacityClass = CapacityClass.ON_DEMAND
    """Published in discovery as the instances' capacity class."""
    args: tuple[str, ...] = ()
    """Extra flags of every instance (``--max-streams=1``)."""
    max_count: int | None = None
    """Most instances the group may run; None for no limit."""

    @property
    def name(self) -> str:
        """The capacity group's name."""
        return group_name(self.pool, self.capacity_class)


def spawn_service(
    registry_dir: str, log_dir: str, drain_timeout_s: float, env: Mapping[str, str] | None = None
) -> Spawn:
    """The default :data:`Spawn`: ``python -m services.<pool>`` on the file registry."""

    def spawn(group: LocalGroup, instance_id: str) -> ManagedProcess:
        args = [
            f"--instance-id={instance_id}",
            "--discovery=file",
            f"--registry-dir={registry_dir}",
            f"--capacity-class={group.capacity_class.value}",
            f"--drain-timeout={drain_timeout_s:g}",
            *group.args,
        ]
        log = Path(log_dir) / f"{instance_id}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        return ServiceProcess(
            f"services.{group.pool}", args, env=env, log_path=log, name=instance_id
        )

    return spawn


class _State(enum.Enum):
    STARTING = "starting"
    SERVING = "serving"
    DRAINING = "draining"


@dataclass
class _Instance:
    instance_id: str
    process: ManagedProcess
    started_at: float
    state: _State = _State.STARTING
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the instance is stopped while starting: its start is given up."""


@dataclass
class _Group:
    spec: LocalGroup
    desired: int = 0
    instances: dict[str, _Instance] = field(default_factory=dict)
    failures: int = 0
    last_error: str = ""
    retry_at: float = 0.0

    def count(self, state: _State) -> int:
        return sum(1 for i in self.instances.values() if i.state is state)


class LocalTarget:
    """:class:`~services.autoscaler.targets.base.ScaleTarget` over local processes."""

    def __init__(
        self,
        groups: Sequence[LocalGroup],
        spawn: Spawn,
        *,
        drain_timeout_s: float = 30.0,
        kill_grace_s: float = 15.0,
        ready_timeout_s: float = 120.0,
        load: Callable[[str], int | None] | None = None,
        on_started: Callable[[str, float], None] | None = None,
        backoff_s: tuple[float, float] = (1.0, 30.0),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._groups = {g.name: _Group(g) for g in groups}
        self._spawn = spawn
        self._drain_timeout_s, self._ready_timeout_s = drain_timeout_s, ready_timeout_s
        self._kill_grace_s = kill_grace_s
        self._load = load or (lambda _instance_id: None)
        self._on_started = on_started or (lambda _pool, _seconds: None)
        self._backoff = backoff_s
        self._clock = clock
        self._tasks: set[asyncio.Task[None]] = set()
        self._retry: asyncio.TimerHandle | None = None
        self._closed = False

    async def status(self) -> dict[str, GroupStatus]:
        """Every group's counts: running means serving (draining ones are on their way out)."""
        result = {}
        now = self._clock()
        for name, g in self._groups.items():
            starting, serving = g.count(_State.STARTING), g.count(_State.SERVING)
            failing = g.failures >= _FAILING_AFTER
            since = [i.started_at for i in g.instances.values() if i.state is _State.STARTING]
            result[name] = GroupStatus(
                name=name,
                pool=g.spec.pool,
                capacity_class=g.spec.capacity_class,
                desired=g.desired,
                running=serving,
                placed=starting + serving,
                healthy=serving,
                pending=starting,
                oldest_pending_s=now - min(since) if since else 0.0,
                max_count=g.spec.max_count,
                placement_failing=failing,
                placement_reason=g.last_error if failing else "",
            )
        return result

    async def scale(
        self, group: str, count: int, reason: str, meta: Mapping[str, str] | None = None
    ) -> ScaleResult:
        """Sets the group's count (clamped to its bounds) and starts or stops processes."""
        del meta  # nothing to record it in locally
        g = self._groups.get(group)
        if g is None:
            detail = f"the local target runs no group {group!r}"
            return ScaleResult(
                group, ScaleOutcome.REFUSED, count, count, 0, Refusal.UNKNOWN_GROUP, detail
            )
        previous = g.desired
        if self._closed:
            return ScaleResult(
                group, ScaleOutcome.REFUSED, count, count, previous, Refusal.DISABLED, "closing"
            )
        high = g.spec.max_count
        target = max(0, count if high is None else min(count, high))
        detail = f"clamped from {count} to {target}" if target != count else ""
        if target == previous:
            return ScaleResult(group, ScaleOutcome.UNCHANGED, count, target, previous, None, detail)
        g.desired = target
        logger.info("%s: %d -> %d instances: %s", group, previous, target, reason)
        self._reconcile(g)
        return ScaleResult(group, ScaleOutcome.APPLIED, count, target, previous, None, detail)

    async def reclaiming(self) -> list[Reclaim]:
        """Nothing is ever reclaimed on this machine."""
        return []

    async def shutdown(self) -> None:
        """Drains every instance and waits for them to exit; idempotent."""
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
        for g in self._groups.values():
            g.desired = 0
            self._reconcile(g)
        if self._tasks:
            await asyncio.wait(set(self._tasks))

    async def kill_all(self) -> None:
        """Kills every instance at once (streams are lost): the last resort on exit."""
        self._closed = True
        for g in self._groups.values():
            g.desired = 0
            for instance in list(g.instances.values()):
                instance.state = _State.DRAINING
                instance.cancelled.set()
                await instance.process.kill()

    def _reconcile(self, g: _Group) -> None:
        """Starts or stops processes until the group's live instances match its count."""
        live = [i for i in g.instances.values() if i.state is not _State.DRAINING]
        if len(live) > g.desired:
            # Starting instances first (no streams yet), then the least loaded, newest first.
            victims = sorted(
                live,
                key=lambda i: (
                    i.state is not _State.STARTING,
                    self._load(i.instance_id) or 0,
                    -i.started_at,
                ),
            )
            for instance in victims[: len(live) - g.desired]:
                self._stop(g, instance)
            return
        missing = g.desired - len(live)
        if missing <= 0 or self._closed:
            return
        wait = g.retry_at - self._clock()
        if wait > 0:
            self._retry_later(wait)
            return
        for _ in range(missing):
            if not self._launch(g):
                return

    def _launch(self, g: _Group) -> bool:
        """Starts one instance; False when its process could not even be made.

        Such an error (no room for the log file, say) is a failed start like any other:
        it counts towards the group's failures and the start is retried after the backoff,
        so the count never stands with nothing behind it, and ``scale`` does not raise.
        """
        short = "od" if g.spec.capacity_class is CapacityClass.ON_DEMAND else "pe"
        instance_id = f"{g.spec.pool}-{short}-{uuid.uuid4().hex[:6]}"
        try:
            process = self._spawn(g.spec, instance_id)
        except Exception as exc:
            delay = self._count_failure(g, f"{instance_id} could not be started: {exc}")
            self._retry_later(delay)  # never at once: a spawn that keeps failing must not spin
            return False
        instance = _Instance(instance_id, process, self._clock())
        g.instances[instance_id] = instance
        self._track(self._lifecycle(g, instance), instance_id)
        return True

    def _stop(self, g: _Group, instance: _Instance) -> None:
        was = instance.state
        instance.state = _State.DRAINING
        if was is _State.STARTING:
            # kill() stops a process that exists; ``cancelled`` makes _lifecycle give up a
            # start that has not made its process yet (kill() finds nothing to stop then).
            logger.info("%s: cancelling %s (still starting)", g.spec.name, instance.instance_id)
            instance.cancelled.set()
            self._track(instance.process.kill(), f"kill-{instance.instance_id}")
            return
        logger.info("%s: draining %s", g.spec.name, instance.instance_id)
        instance.process.signal_drain()
        self._track(self._watch_drain(instance), f"drain-{instance.instance_id}")

    async def _lifecycle(self, g: _Group, instance: _Instance) -> None:
        """Starts one instance, follows it until it exits, and replaces it if unwanted.

        An instance cancelled before this task first ran is never started: starting it
        anyway would run a whole start-up (during which it may register and take
        streams) only to kill it once ready, and hold up a shutdown for as long.
        """
        if _stopped(instance):
            g.instances.pop(instance.instance_id, None)
            logger.info("%s: %s cancelled before it started", g.spec.name, instance.instance_id)
            return
        try:
            await self._start(instance)
        except (RuntimeError, OSError) as exc:
            g.instances.pop(instance.instance_id, None)
            if not _stopped(instance):
                self._failed(g, f"{instance.instance_id} failed to start: {exc}")
            return
        if _stopped(instance):  # cancelled while starting
            await instance.process.kill()
            g.instances.pop(instance.instance_id, None)
            return
        instance.state = _State.SERVING
        g.failures, g.last_error = 0, ""
        seconds = instance.process.ready_after
        logger.info("%s: %s serving after %.1f s", g.spec.name, instance.instance_id, seconds)
        self._on_started(g.spec.pool, seconds)
        code = await instance.process.wait()
        g.instances.pop(instance.instance_id, None)
        if instance.state is _State.DRAINING and code == 0:
            logger.info("%s: %s drained and exited", g.spec.name, instance.instance_id)
        elif instance.state is _State.DRAINING:
            logger.warning(
                "%s: %s stopped with exit code %s", g.spec.name, instance.instance_id, code
            )
        else:
            self._failed(g, f"{instance.instance_id} exited with code {code}")

    async def _start(self, instance: _Instance) -> None:
        """``process.start()``, cancelled as soon as the instance is (see :meth:`_stop`).

        Returns early, without raising, when cancelled; the caller then kills whatever
        process the start had made. A failed start raises as ``start()`` does.
        """
        start = asyncio.ensure_future(instance.process.start(self._ready_timeout_s))
        cancelled = asyncio.ensure_future(instance.cancelled.wait())
        try:
            await asyncio.wait({start, cancelled}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            start.cancel()  # nothing when it has ended
            cancelled.cancel()
            await asyncio.wait({start, cancelled})
        if not start.cancelled():
            start.result()

    async def _watch_drain(self, instance: _Instance) -> None:
        """Kills a draining instance still alive after its drain timeout plus a grace."""
        if await instance.process.wait(self._drain_timeout_s + self._kill_grace_s) is None:
            logger.warning("%s did not drain in time: killed", instance.instance_id)
            await instance.process.kill()

    def _failed(self, g: _Group, why: str) -> None:
        self._count_failure(g, why)
        self._reconcile(g)

    def _count_failure(self, g: _Group, why: str) -> float:
        """Records a failed start or crash; returns the backoff before the next start."""
        g.failures += 1
        g.last_error = why
        base, cap = self._backoff
        delay = min(cap, base * 2.0 ** (g.failures - 1))
        g.retry_at = self._clock() + delay
        logger.warning("%s: %s; replacing it in %.0f s", g.spec.name, why, delay)
        return delay

    def _retry_later(self, delay: float) -> None:
        """Reconciles every group in ``delay`` s, or sooner if that was already due: one
        timer for all groups, set to the earliest retry (a group not due yet when it
        fires asks again), so no group waits out another's longer backoff."""
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        if self._retry is not None:
            if self._retry.when() <= when:
                return
            self._retry.cancel()

        def fire() -> None:
            self._retry = None
            for g in self._groups.values():
                self._reconcile(g)

        self._retry = loop.call_at(when, fire)

    def _track(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=f"local-target-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _stopped(instance: _Instance) -> bool:
    """Whether the instance was stopped (scale-down, shutdown); read afresh after an await."""
    return instance.state is _State.DRAINING
