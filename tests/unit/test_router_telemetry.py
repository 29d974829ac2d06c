"""The router's telemetry watches end, at shutdown, with their status sent."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

import grpc
import pytest

from services.router.servicer import RouterTelemetry
from voxmesh.stt.v1 import stt_pb2


class WatchContext:
    """The part of a servicer context a watch uses: callbacks run once its status is sent."""

    def __init__(self) -> None:
        self._done: list[Callable[[Any], None]] = []

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        self._done.append(callback)

    def status_sent(self) -> None:
        for callback in self._done:
            callback(self)


async def test_end_watches_returns_once_every_watch_has_sent_its_status(
    caplog: pytest.LogCaptureFixture,
) -> None:
    telemetry = RouterTelemetry(lambda: stt_pb2.TelemetrySnapshot(instance_id="router-1"))
    context = WatchContext()
    watch = telemetry.WatchTelemetry(
        stt_pb2.WatchTelemetryRequest(), cast(grpc.aio.ServicerContext[Any, Any], context)
    )
    assert (await anext(watch)).snapshot.instance_id == "router-1"

    # Its status not sent, the wait gives up after its timeout and says so.
    await telemetry.end_watches(0.1)
    assert "1 telemetry watches still open after 0.1 s" in caplog.text
    assert [reply async for reply in watch] == []  # ended

    context.status_sent()
    caplog.clear()
    async with asyncio.timeout(10):
        await telemetry.end_watches(60)
    assert "still open" not in caplog.text
