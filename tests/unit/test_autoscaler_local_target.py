"""The local scale target with fake processes: reconcile, drain, victims, failures.

:class:`FakeProcess` implements the target's ``ManagedProcess`` contract; the test
decides when an instance becomes ready, finishes its drain, or crashes.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.autoscaler.app import make_target
from services.autoscaler.metrics import AutoscalerMetrics
from services.autoscaler.settings import load_settings
from services.autoscaler.targets.base import CapacityClass, Refusal, ScaleOutcome
from services.autoscaler.targets.local import LocalGroup, LocalTarget, spawn_service
from tests.autoscaler_fakes import Clock, FakeSource
from tests.conditions import wait_until_async
from voxmesh.mesh.process import ServiceProcess

OD = "asr_small/on-demand"


class FakeProcess:
    """A process that is ready, drains or dies when the test says so."""

    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id
        self.ready_after = 0.0
        self.drain_signalled = False
        self.killed = False
        self.start_calls = 0
        self.code: int | None = None
        self._ready = asyncio.Event()
        self._exit = asyncio.Event()

    async def start(self, ready_timeout: float = 120.0) -> None:
        self.start_calls += 1
        ready = asyncio.create_task(self._ready.wait())
        exited = asyncio.create_task(self._exit.wait())
        await asyncio.wait({ready, exited}, timeout=ready_timeout, return_when="FIRST_COMPLETED")
        ready.cancel()
        exited.cancel()
        if not self._ready.is_set() or self._exit.is_set():
            raise RuntimeError(f"{self.instance_id} did not become ready")

    def signal_drain(self) -> None:
        self.drain_signalled = True

    async def wait(self, timeout: float | None = None) -> int | None:
        try:
            await asyncio.wait_for(self._exit.wait(), timeout)
        except TimeoutError:
            return None
        return self.code

    async def kill(self) -> None:
        self.killed = True
        self.exit(-9)

    def become_ready(self, seconds: float = 2.5) -> None:
        self.ready_after = seconds
        self._ready.set()

    def exit(self, code: int) -> None:
        if not self._exit.is_set():
            self.code = code
            self._exit.set()


class UnmadeProcess(FakeProcess):
    """A :class:`FakeProcess` whose ``start()`` is still making its process (as
    ``create_subprocess_exec`` does) until the test calls :meth:`make`: ``kill()`` has
    nothing to stop until then, like :class:`ServiceProcess`'s."""

    def __init__(self, instance_id: str) -> None:
        super().__init__(instance_id)
        self.making = asyncio.Event()
        self.exists = False
        self._made = asyncio.Event()

    async def start(self, ready_timeout: float = 120.0) -> None:
        self.making.set()
        await self._made.wait()
        self.exists = True
        await super().start(ready_timeout)

    async def kill(self) -> None:
        if self.exists:
            await super().kill()

    def make(self) -> None:
        self._made.set()


class Spawner:
    """The target's spawn function; remembers every process it made."""

    def __init__(self, kind: type[FakeProcess] = FakeProcess) -> None:
        self.made: list[FakeProcess] = []
        self.groups: list[LocalGroup] = []
        self._kind = kind

    def __call__(self, group: LocalGroup, instance_id: str) -> FakeProcess:
        self.groups.append(group)
        self.made.append(self._kind(instance_id))
        return self.made[-1]


@pytest.fixture
def spawner() -> Spawner:
    return Spawner()


@pytest.fixture
def loads() -> dict[str, int]:
    return {}


@pytest.fixture
def started() -> list[tuple[str, float]]:
    return []


@pytest.fixture
def target(
    spawner: Spawner, loads: dict[str, int], started: list[tuple[str, float]]
) -> Iterator[LocalTarget]:
    yield LocalTarget(
        [LocalGroup("asr_small", max_count=3)],
        spawner,
        drain_timeout_s=0.05,
        kill_grace_s=0.0,
        load=loads.get,
        on_started=lambda pool, s: started.append((pool, s)),
        backoff_s=(0.01, 0.01),
    )


async def until_serving(target: LocalTarget, started: list[tuple[str, float]], count: int) -> None:
    """Waits (with a deadline) until ``count`` instances have started and serve."""
    await wait_until_async(lambda: len(started) >= count, 2)
    assert (await target.status())[OD].running == count


async def test_scaling_up_starts_instances_that_count_once_ready(
    target: LocalTarget, spawner: Spawner, started: list[tuple[str, float]]
) -> None:
    result = await target.scale(OD, 2, "queue of 2 streams")
    assert (result.outcome, result.previous, result.count) == (ScaleOutcome.APPLIED, 0, 2)
    status = (await target.status())[OD]
    assert (status.desired, status.pending, status.running) == (2, 2, 0)
    assert all(p.instance_id.startswith("asr_small-od-") for p in spawner.made)
    assert {g.capacity_class for g in spawner.groups} == {CapacityClass.ON_DEMAND}

    spawner.made[0].become_ready(2.5)
    await wait_until_async(lambda: started, 2)
    status = (await target.status())[OD]
    assert (status.pending, status.running, status.healthy) == (1, 1, 1)
    assert started == [("asr_small", 2.5)]

    again = await target.scale(OD, 2, "same")
    assert again.outcome is ScaleOutcome.UNCHANGED
    assert len(spawner.made) == 2


async def test_scaling_down_cancels_starting_instances_first_then_drains_the_least_loaded(
    target: LocalTarget, spawner: Spawner, loads: dict[str, int], started: list[tuple[str, float]]
) -> None:
    await target.scale(OD, 3, "burst")
    first, second, third = spawner.made
    first.become_ready()
    second.become_ready()
    await until_serving(target, started, 2)
    loads.update({first.instance_id: 3, second.instance_id: 1})

    await target.scale(OD, 1, "quiet")
    await wait_until_async(lambda: third.killed and second.drain_signalled, 2)
    assert not first.drain_signalled and not first.killed  # the busy one keeps serving
    status = (await target.status())[OD]
    assert (status.desired, status.running, status.pending) == (1, 1, 0)

    second.exit(0)  # its streams finished
    await wait_until_async(lambda: second.code == 0, 1)
    assert not second.killed
    assert len(spawner.made) == 3  # nothing replaced: every stop was asked for


async def test_an_instance_that_does_not_drain_in_time_is_killed(
    target: LocalTarget, spawner: Spawner, started: list[tuple[str, float]]
) -> None:
    await target.scale(OD, 1, "up")
    spawner.made[0].become_ready()
    await until_serving(target, started, 1)
    await target.scale(OD, 0, "idle")
    await wait_until_async(lambda: spawner.made[0].killed, 2)
    assert spawner.made[0].drain_signalled


async def test_crashes_are_replaced_and_repeated_failures_are_reported(
    target: LocalTarget, spawner: Spawner, started: list[tuple[str, float]]
) -> None:
    await target.scale(OD, 1, "up")
    spawner.made[0].exit(1)  # dies while loading the model
    await wait_until_async(lambda: len(spawner.made) == 2, 2)
    status = (await target.status())[OD]
    assert not status.placement_failing  # one failure is not a pattern yet

    spawner.made[1].exit(1)
    await wait_until_async(lambda: len(spawner.made) == 3, 2)
    status = (await target.status())[OD]
    assert status.placement_failing
    assert "failed to start" in status.placement_reason

    spawner.made[2].become_ready()
    await until_serving(target, started, 1)
    assert not (await target.status())[OD].placement_failing

    spawner.made[2].exit(137)  # a crash while serving is replaced too
    await wait_until_async(lambda: len(spawner.made) == 4, 2)


async def test_counts_are_clamped_and_unknown_groups_refused(target: LocalTarget) -> None:
    clamped = await target.scale(OD, 9, "spike")
    assert (clamped.outcome, clamped.count, clamped.detail) == (
        ScaleOutcome.APPLIED,
        3,
        "clamped from 9 to 3",
    )
    unknown = await target.scale("asr_small/preemptible", 1, "burst")
    assert (unknown.outcome, unknown.refusal) == (ScaleOutcome.REFUSED, Refusal.UNKNOWN_GROUP)
    assert await target.reclaiming() == []


async def test_shutdown_drains_everything_and_waits_for_the_exits(
    target: LocalTarget, spawner: Spawner, started: list[tuple[str, float]]
) -> None:
    await target.scale(OD, 2, "up")
    spawner.made[0].become_ready()
    await until_serving(target, started, 1)
    stopping = asyncio.create_task(target.shutdown())
    await wait_until_async(lambda: spawner.made[0].drain_signalled, 2)
    assert spawner.made[1].killed  # it was still starting
    assert not stopping.done()
    spawner.made[0].exit(0)
    await asyncio.wait_for(stopping, 2)
    refused = await target.scale(OD, 1, "after shutdown")
    assert refused.refusal is Refusal.DISABLED


def test_spawn_service_runs_the_pool_module_on_the_file_registry(tmp_path: Path) -> None:
    spawn = spawn_service("/reg", str(tmp_path), 12.0)
    process = spawn(
        LocalGroup("asr_large", CapacityClass.PREEMPTIBLE, args=("--max-streams=2",)), "x-1"
    )
    assert isinstance(process, ServiceProcess)
    assert process.module == "services.asr_large"
    assert process.args == [
        "--instance-id=x-1",
        "--discovery=file",
        "--registry-dir=/reg",
        "--capacity-class=preemptible",
        "--drain-timeout=12",
        "--max-streams=2",
    ]


def target_failing_first(
    failures: int, spawner: Spawner, started: list[tuple[str, float]]
) -> LocalTarget:
    """An asr_small target whose first ``failures`` processes cannot even be made (no
    room for their logs); its backoff is 10 ms."""
    errors = [OSError(28, "No space left on device")] * failures

    def spawn(group: LocalGroup, instance_id: str) -> FakeProcess:
        if errors:
            raise errors.pop()
        return spawner(group, instance_id)

    return LocalTarget(
        [LocalGroup("asr_small")],
        spawn,
        on_started=lambda pool, s: started.append((pool, s)),
        backoff_s=(0.01, 0.01),
    )


async def test_a_spawn_error_is_a_failed_start_retried_after_a_backoff(
    spawner: Spawner, started: list[tuple[str, float]]
) -> None:
    """A process that cannot even be made (no room for its log) fails like a failed start:
    the count stands, the group reports the failure, and the start is retried."""
    target = target_failing_first(2, spawner, started)
    result = await target.scale(OD, 1, "queue of 1 stream")
    assert result.outcome is ScaleOutcome.APPLIED
    await wait_until_async(lambda: spawner.made, 2)  # retried after two failures
    status = (await target.status())[OD]
    assert (status.desired, status.pending) == (1, 1)
    assert status.placement_failing
    assert "No space left on device" in status.placement_reason

    spawner.made[0].become_ready()
    await until_serving(target, started, 1)
    assert not (await target.status())[OD].placement_failing


async def test_a_retry_due_soon_is_not_held_back_by_a_longer_one(
    spawner: Spawner, started: list[tuple[str, float]]
) -> None:
    """One timer serves every group's retries: it kept the first delay asked for, so a
    group whose start failed waited out another group's longer backoff."""
    target = target_failing_first(1, spawner, started)
    try:
        target._retry_later(60.0)  # another group's backoff, long after many failures
        await target.scale(OD, 1, "queue of 1 stream")  # fails; due again in 0.01 s
        await wait_until_async(lambda: spawner.made, 2)
    finally:
        await target.shutdown()


async def test_the_status_says_how_long_the_oldest_instance_has_been_starting(
    spawner: Spawner, started: list[tuple[str, float]]
) -> None:
    clock = Clock()
    target = LocalTarget(
        [LocalGroup("asr_small")],
        spawner,
        on_started=lambda pool, s: started.append((pool, s)),
        clock=clock,
    )
    assert (await target.status())[OD].oldest_pending_s == 0.0
    await target.scale(OD, 1, "up")
    clock.advance(30.0)
    await target.scale(OD, 2, "up again")
    clock.advance(10.0)
    assert (await target.status())[OD].oldest_pending_s == 40.0

    spawner.made[0].become_ready()
    await until_serving(target, started, 1)
    assert (await target.status())[OD].oldest_pending_s == 10.0  # only the second starts


@pytest.mark.parametrize("stop", ["scale down", "shutdown"])
async def test_an_instance_cancelled_before_its_start_began_is_never_started(
    target: LocalTarget, spawner: Spawner, stop: str
) -> None:
    """Cancelled in the same turn as the scale-up: its process is not made yet, so
    ``kill()`` finds nothing to stop, and starting it anyway would only kill it later."""
    await target.scale(OD, 1, "up")
    if stop == "shutdown":
        await target.shutdown()  # not in a task of its own: the start must not run first
    else:
        await target.scale(OD, 0, "idle")
        await asyncio.wait_for(target.shutdown(), 2)  # waits for the instance's task
    (process,) = spawner.made
    assert process.start_calls == 0
    status = (await target.status())[OD]
    assert (status.desired, status.placed, status.placement_failing) == (0, 0, False)
    assert len(spawner.made) == 1  # a cancel is no failure: nothing replaces it


async def test_an_instance_cancelled_while_its_process_is_made_gives_up_the_start(
    started: list[tuple[str, float]],
) -> None:
    """``kill()`` cannot stop a process still being made: the start itself is given up,
    and the instance never serves (nor holds a shutdown up for a whole start-up)."""
    spawner = Spawner(UnmadeProcess)
    target = LocalTarget(
        [LocalGroup("asr_small")],
        spawner,
        on_started=lambda pool, s: started.append((pool, s)),
        backoff_s=(0.01, 0.01),
    )
    await target.scale(OD, 1, "up")
    (process,) = spawner.made
    assert isinstance(process, UnmadeProcess)
    await asyncio.wait_for(process.making.wait(), 2)

    await asyncio.wait_for(target.shutdown(), 2)
    assert not process.exists and started == []
    status = (await target.status())[OD]
    assert (status.placed, status.placement_failing) == (0, False)


@pytest.mark.parametrize(
    ("flags", "expected"), [((), os.cpu_count() or 1), (("--local-max-instances=3",), 3)]
)
async def test_local_groups_are_capped_at_the_cpu_count_by_default(
    flags: tuple[str, ...], expected: int, tmp_path: Path
) -> None:
    """The local groups had no cap of their own, so the policy's 64 applied on one
    machine: a rising real-time factor asked for ever more CPU-bound instances."""
    settings = load_settings(
        ["--target=local", f"--registry-dir={tmp_path}", "--pools=asr_small", *flags]
    )
    target = make_target(settings, FakeSource(), AutoscalerMetrics())
    assert isinstance(target, LocalTarget)
    statuses = await target.status()
    assert {status.max_count for status in statuses.values()} == {expected}
