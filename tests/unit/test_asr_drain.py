"""An ASR instance's drain against a registry that is slow to answer: the streams get
the whole drain from its start, and deregistering follows the drain mark."""

from __future__ import annotations

import asyncio
import logging

import pytest

from voxmesh.asr.app import drain
from voxmesh.discovery import InstanceInfo


class SlowRegistrar:
    """A registry whose drain mark takes until ``answer`` is set (a hung agent)."""

    def __init__(self, fails: bool = False) -> None:
        self.answer = asyncio.Event()
        self.marked = False
        self._fails = fails

    async def register(self, info: InstanceInfo) -> None:
        del info

    async def set_draining(self) -> None:
        await self.answer.wait()
        if self._fails:
            raise RuntimeError("no such agent")
        self.marked = True

    async def deregister(self) -> None:
        return None


async def test_the_streams_get_the_whole_drain_while_the_registry_is_slow() -> None:
    registrar = SlowRegistrar()
    waits: list[float] = []

    async def wait_idle(timeout: float) -> bool:
        waits.append(timeout)  # the drain runs although the registry has not answered
        assert not registrar.marked
        registrar.answer.set()
        return True

    assert await asyncio.wait_for(drain(wait_idle, registrar, 30.0), 5)
    assert waits == [30.0]
    assert registrar.marked, "drain returns (and deregistering follows) after the mark"


async def test_a_drain_mark_that_fails_is_logged_and_the_drain_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registrar = SlowRegistrar(fails=True)

    async def wait_idle(timeout: float) -> bool:
        registrar.answer.set()
        return False

    with caplog.at_level(logging.ERROR, logger="voxmesh.asr.app"):
        assert not await asyncio.wait_for(drain(wait_idle, registrar, 1.0), 5)
    assert "marking the instance draining failed" in caplog.text
