"""The control plane's Connect call (services.router.connect): its answers cut into
batches, each within the call's message limit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any, cast

import grpc

from services.router.connect import ConnectSession, batches
from tests.conditions import wait_until_async
from voxmesh.router.v1 import dataplane_pb2
from voxmesh.rpc import status


def answer(stream: int, message_bytes: int) -> dataplane_pb2.StreamAnswer:
    end = dataplane_pb2.StreamEnd(code=8, message="x" * message_bytes)
    return dataplane_pb2.StreamAnswer(stream=stream, end=end)


def test_batches_keep_the_order_and_stay_under_their_bound() -> None:
    answers = [answer(i, 100) for i in range(1, 11)]  # all of one size
    one = dataplane_pb2.ConnectResponse(answers=answers[:1]).ByteSize()  # as a batch holds it
    for max_bytes, sizes in [
        (10 * one, [10]),
        (3 * one, [3, 3, 3, 1]),
        (3 * one + one // 2, [3, 3, 3, 1]),
        (one, [1] * 10),
        (1, [1] * 10),
    ]:
        cut = list(batches(answers, max_bytes))
        assert [len(b) for b in cut] == sizes, max_bytes
        assert [a for b in cut for a in b] == answers


def test_an_answer_over_the_bound_goes_alone() -> None:
    answers = [answer(1, 10), answer(2, 5000), answer(3, 10)]
    assert [len(b) for b in batches(answers, 1000)] == [1, 1, 1]
    assert list(batches([], 1000)) == []


class _Context:
    """The Connect call's context as ConnectSession uses it: what it writes."""

    def __init__(self) -> None:
        self.written: list[dataplane_pb2.ConnectResponse] = []

    async def write(self, message: dataplane_pb2.ConnectResponse) -> None:
        self.written.append(message)


async def test_an_answer_over_the_message_limit_ends_its_stream_alone() -> None:
    """Written on the call, it would end the call and every stream it carries."""

    async def attach(events: AsyncIterable[dataplane_pb2.AttachRequest], call: Any) -> None:
        async with status.aborting(call):
            async for event in events:
                message = "x" * int(event.audio_seconds)
                route = dataplane_pb2.RouteEvent(stream_id=message)
                await call.write(dataplane_pb2.AttachResponse(route=route))

    context = _Context()
    session = ConnectSession(attach, cast(Any, context), max_message_bytes=1000)
    requests: asyncio.Queue[dataplane_pb2.ConnectRequest | None] = asyncio.Queue()

    async def incoming() -> AsyncIterator[dataplane_pb2.ConnectRequest]:
        while (request := await requests.get()) is not None:
            yield request

    def event(stream: int, answer_bytes: int) -> dataplane_pb2.StreamEvent:
        return dataplane_pb2.StreamEvent(
            stream=stream, event=dataplane_pb2.AttachRequest(audio_seconds=answer_bytes)
        )

    serving = asyncio.create_task(session.serve(incoming()))
    begin = [dataplane_pb2.StreamEvent(stream=k, begin=True) for k in (1, 2)]
    requests.put_nowait(dataplane_pb2.ConnectRequest(events=[*begin, event(1, 2000)]))
    requests.put_nowait(dataplane_pb2.ConnectRequest(events=[event(2, 900)]))

    def answers() -> list[dataplane_pb2.StreamAnswer]:
        return [a for response in context.written for a in response.answers]

    await wait_until_async(lambda: len(answers()) == 2)
    ended, answered = sorted(answers(), key=lambda a: a.stream)
    assert ended.end.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert "exceeds the message limit of its native data path (1000 bytes)" in ended.end.message
    assert len(answered.answer.route.stream_id) == 900
    assert all(response.ByteSize() <= 1000 for response in context.written)
    requests.put_nowait(None)
    await serving
