"""The relay's bound on the audio a waiting stream holds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

from prometheus_client import CollectorRegistry

from services.router.metrics import RouterMetrics
from services.router.relay import RelayLimits, StreamRelay
from services.router.routing import Route
from tests.conditions import wait_until_async
from voxmesh.stt.v1 import stt_pb2

CHUNK = 3200


class NeverAdmits:
    """An admission queue with no instance ever freeing up."""

    def place(self) -> object:
        return object()

    async def admit(self, *args: Any, **kwargs: Any) -> Any:
        await asyncio.Event().wait()


async def test_a_waiting_stream_holds_no_more_than_queue_max_bytes() -> None:
    pulled = 0

    async def requests() -> AsyncIterator[stt_pb2.StreamingRecognizeRequest]:
        # The relay pulls a chunk only once it took the one before: the async for
        # runs this generator inline, so a pull happens in the same step as the append.
        nonlocal pulled
        for _ in range(3):
            pulled += 1
            yield stt_pb2.StreamingRecognizeRequest(audio_content=bytes(CHUNK))

    relay = StreamRelay(
        route=Route("asr_small", True, True, 16000, "s"),
        config=stt_pb2.StreamingRecognizeRequest(),
        context=cast(Any, None),
        admission=cast(Any, NeverAdmits()),
        limits=RelayLimits(
            queue_max_bytes=4000,
            relay_buffer_bytes=1 << 20,
            replay_max_bytes=1 << 20,
            max_chunk_bytes=1 << 16,
            max_failovers=1,
        ),
        metrics=RouterMetrics(CollectorRegistry()),
    )
    task = asyncio.create_task(relay.run(requests()))
    try:
        await wait_until_async(lambda: pulled >= 2)  # the relay took the first chunk
        assert pulled == 2, "a second chunk went past the 4000-byte bound"
        assert relay.audio_seconds() == CHUNK / 32000
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
