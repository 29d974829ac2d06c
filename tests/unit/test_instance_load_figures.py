"""The load figures of telemetry snapshots (real-time factor, host CPU) are the same
for every reader: measured over a fixed trailing window, not since "the previous
snapshot", which another subscriber may just have taken.

No model and no sockets: decode time is added to the scheduler's counters directly,
audio through :meth:`AsrInstance.add_audio`, and a fake clock moves time; the
samples the instance records on its own cadence once started are recorded by
calling :meth:`AsrInstance.sample_load` every half second of fake time.
Also the other figures that sampling keeps current (pending decodes), and how the end
of a drain shows in admission.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from tests.conditions import wait_until_async
from tests.session_fakes import GatedDecoder, fake_instance
from voxmesh.asr.decoder import DecodeJob
from voxmesh.asr.instance import AsrInstance
from voxmesh.errors import Draining
from voxmesh.telemetry.host import HostSampler

WINDOW = 5.0
STEP = 0.1
"""Fake seconds between two chunks of audio (and between two reads of the fastest reader)."""
SAMPLE_EVERY = 5
"""Steps between two load samples: the instance samples every ``WINDOW / 10`` s."""


class FakeClock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def new_instance(**options: Any) -> AsrInstance:
    """An instance on a fake model, not started: nothing samples the load but the test."""
    return fake_instance(**options)


@pytest.fixture
async def clocked() -> AsyncIterator[tuple[AsrInstance, FakeClock]]:
    clock = FakeClock()
    instance = new_instance(load_window=WINDOW, clock=clock)
    try:
        yield instance, clock
    finally:
        await instance.shutdown()


def gauge(instance: AsrInstance) -> float | None:
    return instance.metrics.registry.get_sample_value("voxmesh_asr_real_time_factor")


def run_load(
    instance: AsrInstance, clock: FakeClock, rtfs: list[float], every: dict[str, int]
) -> dict[str, list[float]]:
    """Moves the clock 0.1 s per step and, at step ``i``, feeds 0.1 s of audio that
    takes ``rtfs[i]`` model seconds per audio second (0: no audio, idle); each reader
    takes a snapshot every ``every[reader]`` steps. Returns what each reader saw."""
    seen: dict[str, list[float]] = {reader: [] for reader in every}
    for step, rtf in enumerate(rtfs, start=1):
        clock.now += STEP
        if rtf > 0:
            instance.add_audio(STEP)
            instance.scheduler.stats.busy_seconds += rtf * STEP
        if step % SAMPLE_EVERY == 0:
            instance.sample_load()
        for reader, period in every.items():
            if step % period == 0:
                seen[reader].append(instance.snapshot().real_time_factor)
    return seen


async def test_a_snapshot_does_not_change_what_the_next_reader_sees() -> None:
    instance = new_instance()
    try:
        instance.add_audio(10.0)
        instance.scheduler.stats.busy_seconds += 3.0
        first, second = (instance.snapshot().real_time_factor for _ in range(2))
        assert (first, second) == pytest.approx((0.3, 0.3))
        assert instance.real_time_factor() == pytest.approx(0.3)
    finally:
        await instance.shutdown()


async def test_the_gauge_shows_the_figure_with_no_subscriber() -> None:
    instance = new_instance()
    try:
        instance.add_audio(10.0)
        instance.scheduler.stats.busy_seconds += 4.0
        assert gauge(instance) == pytest.approx(0.4), "no snapshot was taken"
        assert instance.snapshot().real_time_factor == pytest.approx(0.4)
        assert gauge(instance) == pytest.approx(0.4)
    finally:
        await instance.shutdown()


async def test_readers_at_different_rates_see_the_same_figure() -> None:
    """A 1 s reader sees the same figures alone as beside a 0.1 s one (the reviewer saw
    [0.31, 0.32, 0.43, ...] alone and only zeros beside a fast reader)."""
    load = [0.2] * 100 + [0.6] * 100  # 10 s at RTF 0.2, then 10 s at 0.6
    alone_clock, beside_clock = FakeClock(), FakeClock()
    alone = new_instance(load_window=WINDOW, clock=alone_clock)
    beside = new_instance(load_window=WINDOW, clock=beside_clock)
    try:
        slow_alone = run_load(alone, alone_clock, load, {"slow": 10})["slow"]
        seen = run_load(beside, beside_clock, load, {"fast": 1, "slow": 10, "half": 5})
        assert seen["slow"] == slow_alone
        assert seen["slow"] == seen["fast"][9::10] == seen["half"][1::2]
        assert all(rtf > 0 for rtf in seen["fast"]), seen["fast"]
        assert seen["slow"][:10] == pytest.approx([0.2] * 10)
        assert seen["slow"][-5:] == pytest.approx([0.6] * 5), "a full window after the change"
        assert 0.2 < seen["slow"][11] < 0.6, "the window slides: both loads in it"
        assert gauge(beside) == pytest.approx(seen["fast"][-1])
    finally:
        await alone.shutdown()
        await beside.shutdown()


async def test_the_figure_drops_to_zero_a_window_after_the_load_stops(
    clocked: tuple[AsrInstance, FakeClock],
) -> None:
    instance, clock = clocked
    seen = run_load(instance, clock, [0.5] * 100 + [0.0] * 100, {"reader": 1})["reader"]
    idle = seen[100:]
    # Within the window the ratio of what it holds is still the load's; once the newest
    # sample at least a window old was taken after the load, nothing is left in it.
    assert idle[: int(WINDOW / STEP) - 1] == pytest.approx([0.5] * (int(WINDOW / STEP) - 1))
    assert idle[int(WINDOW / STEP) + SAMPLE_EVERY :] == [0.0] * (
        len(idle) - int(WINDOW / STEP) - SAMPLE_EVERY
    )
    assert gauge(instance) == 0.0


async def test_a_started_instance_samples_the_load_by_itself() -> None:
    """With a short window on the real clock, the figure of a load that stopped
    drops to 0 with nobody reading: the instance's own sampling moves the window."""
    instance = new_instance(load_window=0.3)
    instance.start()
    try:
        instance.add_audio(10.0)
        instance.scheduler.stats.busy_seconds += 2.0
        assert instance.real_time_factor() == pytest.approx(0.2)
        await wait_until_async(lambda: gauge(instance) == 0.0)
    finally:
        await instance.shutdown()


class FakeCpu:
    """Cumulative (busy, total) CPU seconds of a 4-CPU host."""

    cpus = 4

    def __init__(self) -> None:
        self.busy = 100.0
        self.total = 1000.0

    def run(self, seconds: float, utilization: float) -> None:
        self.total += self.cpus * seconds
        self.busy += self.cpus * seconds * utilization

    def __call__(self) -> tuple[float, float]:
        return self.busy, self.total


def test_host_cpu_is_the_same_for_every_reader_and_drops_when_idle() -> None:
    clock, cpu = FakeClock(), FakeCpu()
    host = HostSampler(WINDOW, clock=clock, cpu_seconds=cpu)
    fast: list[float] = []
    slow: list[float] = []
    for step in range(1, 201):  # 10 s at 75 %, then 10 s idle
        clock.now += STEP
        cpu.run(STEP, 0.75 if step <= 100 else 0.0)
        if step % SAMPLE_EVERY == 0:
            host.tick()
        fast.append(host.read()[0])
        if step % 10 == 0:
            slow.append(host.read()[0])
    assert slow == fast[9::10]
    assert fast[:100] == pytest.approx([0.75] * 100)
    assert 0.0 < fast[120] < 0.75, "the window slides"
    assert fast[100 + int(WINDOW / STEP) + SAMPLE_EVERY :] == [0.0] * (
        100 - int(WINDOW / STEP) - SAMPLE_EVERY
    )


def test_host_cpu_is_over_the_window_not_since_the_last_read() -> None:
    clock, cpu = FakeClock(), FakeCpu()
    host = HostSampler(WINDOW, clock=clock, cpu_seconds=cpu)
    for _ in range(10):  # 5 s at 40 %, sampled every 0.5 s
        clock.now += 0.5
        cpu.run(0.5, 0.4)
        host.tick()
    assert host.read()[0] == pytest.approx(0.4)
    clock.now += 0.5
    cpu.run(0.5, 1.0)
    host.tick()
    # 0.5 s at 100 % after 4.5 s at 40 %: not the 100 % since the previous read.
    assert host.read()[0] == pytest.approx(0.46)
    assert host.read()[0] == pytest.approx(0.46), "a read changes nothing"


async def test_pending_decodes_reach_the_gauge_with_no_subscriber() -> None:
    """``decode_pending`` was set only by telemetry snapshots: with no router watching
    (or between its reconnects) Prometheus read a frozen figure."""
    decoder = GatedDecoder()
    instance = fake_instance(decoder)
    instance.start()
    try:
        job = DecodeJob(audio=np.zeros(16000, dtype=np.float32))
        tickets = [instance.scheduler.enqueue(job, realtime=True, final=False) for _ in range(3)]
        await wait_until_async(lambda: instance.scheduler.pending == 2)  # one on the model
        instance.sample_load()
        assert instance.metrics.registry.get_sample_value("voxmesh_asr_decode_pending") == 2
        decoder.gate.set()
        await asyncio.gather(*(t.future for t in tickets))
        instance.sample_load()
        assert instance.metrics.registry.get_sample_value("voxmesh_asr_decode_pending") == 0
    finally:
        decoder.gate.set()
        await instance.shutdown()


async def test_a_drain_that_ended_idle_takes_no_last_resort_stream(
    clocked: tuple[AsrInstance, FakeClock],
) -> None:
    """Once the drain found no stream left, what remains is to deregister and stop,
    which would cut a stream a second later: the 30 s a last resort is promised
    are no longer there, however long the drain had to run."""
    instance, _ = clocked
    instance.start()
    instance.begin_drain(100.0)
    with instance.admit(last_resort=True):
        pass  # while the drain runs, a last resort is taken
    assert await instance.wait_idle(1.0)
    with pytest.raises(Draining), instance.admit(last_resort=True):
        pass
    assert instance.drain_remaining() == 0
