"""The Python relay's writes to its client end a stream whose client stopped reading.

No sockets: a stand-in for the client's ``ServicerContext`` whose writes wait, as gRPC
core's do while flow control holds a response back, and which records the statuses
started and the order of events.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, NoReturn, cast

import grpc
import pytest

from services.router.downstream import ClientWriter, StatusSent
from tests.conditions import wait_until_async


class UnreadContext:
    """A ``ServicerContext`` whose client takes nothing: writes wait for ever; an abort
    records its status, then waits for the client too (gRPC sends it after the unread
    responses)."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.writing = asyncio.Event()

    async def send_initial_metadata(self, metadata: object) -> None:
        self.events.append("metadata")

    async def write(self, response: str) -> None:
        self.events.append(f"write {response}")
        self.writing.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.events.append("write cancelled")
            raise

    async def abort(
        self,
        code: grpc.StatusCode,
        details: str = "",
        trailing_metadata: Sequence[tuple[str, str | bytes]] = (),
    ) -> NoReturn:
        self.events.append(f"status {code.name}: {details}")
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def abort_with_status(self, status: grpc.Status) -> NoReturn:
        await self.abort(status.code, status.details, status.trailing_metadata)


STATUS = "status OUT_OF_RANGE: no result was read for 0.05 s: read the results as they come"


async def test_a_response_untaken_for_the_idle_timeout_ends_the_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The status starts before the write is cancelled (a status started after a
    cancelled write is refused), the initial metadata went out before the write (a
    status started while they are pending with it is refused too), and the status's
    send is given up after another idle timeout, so no task is left for a client that
    never reads again."""
    context = UnreadContext()
    writer = ClientWriter(cast(Any, context), 0.05, "stream s")
    with pytest.raises(StatusSent) as sent:
        await writer.write("result")
    assert sent.value.code == grpc.StatusCode.OUT_OF_RANGE
    assert sent.value is writer.ended
    assert context.events == ["metadata", "write result", STATUS, "write cancelled"]
    assert "stream s: the client took no result for 0.05 s" in caplog.text
    current = asyncio.current_task()
    await wait_until_async(lambda: asyncio.all_tasks() == {current}, timeout=2.0)


async def test_a_cancelled_write_the_client_never_takes_ends_the_call_at_the_timeout() -> None:
    """A cancelled write is waited for (a status started while it is pending would be
    refused), but not for ever: a client that reads no more would hold the stream as
    before, its handler waiting on the write."""
    context = UnreadContext()
    writer = ClientWriter(cast(Any, context), 0.05, "stream s")
    task = asyncio.create_task(writer.write("result"))
    await context.writing.wait()
    task.cancel()
    await asyncio.wait({task}, timeout=2.0)
    assert task.cancelled()
    assert writer.ended is not None and writer.ended.code == grpc.StatusCode.OUT_OF_RANGE
    assert context.events == ["metadata", "write result", STATUS, "write cancelled"]


async def test_a_response_taken_in_time_is_written() -> None:
    class Taking:
        def __init__(self) -> None:
            self.written: list[str] = []

        async def send_initial_metadata(self, metadata: object) -> None:
            self.written.append("metadata")

        async def write(self, response: str) -> None:
            await asyncio.sleep(0.01)
            self.written.append(response)

    context = Taking()
    writer = ClientWriter(cast(Any, context), 0.5, "stream s")
    for response in ("a", "b"):
        await writer.write(response)
    assert context.written == ["metadata", "a", "b"]  # the metadata once, on its own
    assert writer.ended is None
