"""A relayed stream that is cancelled ends, whatever its instance does at that moment.

No sockets: the relay runs on a fake admission queue and a fake instance whose stream
fails (UNAVAILABLE, as a dead instance's does) in the same turn of the loop as the
client's stream is cancelled.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import grpc
from prometheus_client import CollectorRegistry

from services.router.downstream import ClientWriter
from services.router.metrics import RouterMetrics
from services.router.relay import RelayLimits, StreamRelay
from services.router.routing import Route
from voxmesh.stt.v1 import stt_pb2

CHUNK = 3200


class NoDeadline:
    """Stands in for the client's ``grpc.aio.ServicerContext``."""

    def time_remaining(self) -> float | None:
        return None

    async def send_initial_metadata(self, metadata: object) -> None:
        pass

    async def write(self, response: stt_pb2.StreamingRecognizeResponse) -> None:
        pass


class DyingCall:
    """An instance's stream that takes no audio and fails at its first read, calling
    ``on_failure`` just before it raises."""

    def __init__(self, on_failure: Callable[[], None]) -> None:
        self._on_failure = on_failure
        self.cancelled = False

    async def write(self, request: stt_pb2.StreamingRecognizeRequest) -> None:
        await asyncio.Event().wait()

    async def done_writing(self) -> None:
        await asyncio.Event().wait()

    async def read(self) -> stt_pb2.StreamingRecognizeResponse:
        await asyncio.sleep(0)  # the writer is under way
        self._on_failure()
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "gone"
        )

    def cancel(self) -> bool:
        self.cancelled = True
        return True


class DyingInstance:
    """A pool member (and its stub) whose streams are :class:`DyingCall` s."""

    instance_id = "a"

    def __init__(self, on_failure: Callable[[], None]) -> None:
        self.recognizer = self
        self.calls: list[DyingCall] = []
        self.reserved = 0
        self._on_failure = on_failure

    def open_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    def StreamingRecognize(self, **kwargs: Any) -> DyingCall:
        self.calls.append(DyingCall(self._on_failure))
        return self.calls[-1]

    def mark_failed(self) -> None:
        pass

    def release(self, full: bool = False) -> None:
        self.reserved -= 1


class OneInstance:
    """An admission queue that admits to ``member`` once, then never again."""

    def __init__(self, member: DyingInstance) -> None:
        self.member = member
        self.admits = 0

    def place(self) -> object:
        return object()

    async def admit(self, *args: Any, **kwargs: Any) -> DyingInstance:
        self.admits += 1
        if self.admits > 1:
            await asyncio.Event().wait()
        self.member.reserved += 1
        return self.member


async def test_a_cancel_as_the_instance_fails_is_not_swallowed() -> None:
    """The cancel, landing while the relay waited for its writer to end, was taken for
    the writer's and swallowed: the stream its client had left failed over to another
    instance and went on (here, queued for one forever)."""

    async def requests() -> AsyncIterator[stt_pb2.StreamingRecognizeRequest]:
        yield stt_pb2.StreamingRecognizeRequest(audio_content=bytes(CHUNK))
        await asyncio.Event().wait()  # the client sends no more, and stays

    stream: asyncio.Task[None] | None = None

    def client_cancels() -> None:
        assert stream is not None
        asyncio.get_running_loop().call_soon(stream.cancel)

    instance = DyingInstance(client_cancels)
    admission = OneInstance(instance)
    relay = StreamRelay(
        route=Route("asr_small", True, True, 16000, "s"),
        config=stt_pb2.StreamingRecognizeRequest(),
        context=cast(Any, NoDeadline()),
        admission=cast(Any, admission),
        limits=RelayLimits(
            queue_max_bytes=1 << 20,
            relay_buffer_bytes=1 << 20,
            replay_max_bytes=1 << 20,
            max_chunk_bytes=1 << 16,
            max_failovers=3,
        ),
        metrics=RouterMetrics(CollectorRegistry()),
    )
    stream = asyncio.create_task(relay.run(requests()))
    done, _ = await asyncio.wait({stream}, timeout=10.0)
    assert done, "the cancelled stream went on"
    assert stream.cancelled()
    assert admission.admits == 1, "the cancelled stream was failed over"
    assert instance.reserved == 0
    assert all(call.cancelled for call in instance.calls)


class HeldWrite:
    """A ``ServicerContext`` whose writes take until ``release`` is set, as gRPC core's
    do while it sends one."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.writing = asyncio.Event()
        self.written: list[str] = []

    async def send_initial_metadata(self, metadata: object) -> None:
        pass

    async def write(self, response: str) -> None:
        self.writing.set()
        await self.release.wait()
        self.written.append(response)


async def test_a_cancelled_client_write_ends_before_the_cancellation_propagates() -> None:
    """A write cut short leaves gRPC core unable to send the call's status; the handler
    may end the call only once its write has ended."""
    context = HeldWrite()
    writer = asyncio.create_task(ClientWriter(cast(Any, context), 30.0, "stream s").write("result"))
    await context.writing.wait()
    writer.cancel()
    for _ in range(5):  # the cancellation has every chance to land
        await asyncio.sleep(0)
    assert not writer.done()
    context.release.set()
    await asyncio.wait({writer})
    assert writer.cancelled()
    assert context.written == ["result"]
