"""The local mesh launcher's stop sequence, with fake processes: order, escalation, and
one process failing to stop without keeping the others running."""

from __future__ import annotations

import asyncio
import logging
import signal

import pytest

from tests.conditions import wait_until_async
from voxmesh.mesh.local import StopSignals, _stop
from voxmesh.mesh.process import ServiceProcess


class FakeProcess(ServiceProcess):
    """A :class:`ServiceProcess` that starts nothing and records what it was asked.

    ``fail`` makes ``terminate`` raise; ``stubborn`` makes it wait until killed.
    """

    def __init__(
        self, name: str, calls: list[str], *, fail: bool = False, stubborn: bool = False
    ) -> None:
        super().__init__(f"fake.{name}", name=name)
        self.calls, self.fail, self.stubborn = calls, fail, stubborn
        self.killed = asyncio.Event()

    async def terminate(self, timeout: float = 60.0) -> int | None:
        self.calls.append(f"terminate {self.name}")
        if self.fail:
            raise ValueError("Separator is found, but chunk is longer than limit")
        if self.stubborn:
            await self.killed.wait()
        return 0

    def signal_drain(self) -> None:
        self.calls.append(f"signal {self.name}")

    async def kill(self) -> None:
        self.calls.append(f"kill {self.name}")
        self.killed.set()


async def test_a_process_that_fails_to_stop_does_not_keep_the_others_running(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[str] = []
    router = FakeProcess("router", calls, fail=True)
    autoscaler = FakeProcess("autoscaler", calls)
    with caplog.at_level(logging.ERROR, logger="voxmesh.mesh.local"):
        await _stop([router, autoscaler], StopSignals())
    assert calls == ["terminate router", "terminate autoscaler"]
    assert "stopping router failed; stopping the others" in caplog.text


async def test_signals_escalate_from_drain_to_stop_at_once_to_kill() -> None:
    calls: list[str] = []
    started = [FakeProcess("router", calls), FakeProcess("autoscaler", calls, stubborn=True)]
    signals = StopSignals()
    stopping = asyncio.create_task(_stop(started, signals))
    await wait_until_async(lambda: "terminate autoscaler" in calls)
    signals.deliver(signal.SIGINT)
    await wait_until_async(lambda: "signal autoscaler" in calls)
    assert not stopping.done()
    signals.deliver(signal.SIGINT)
    await asyncio.wait_for(stopping, timeout=5)
    assert calls == [
        "terminate router",
        "terminate autoscaler",
        "signal router",
        "signal autoscaler",
        "kill router",
        "kill autoscaler",
    ]
