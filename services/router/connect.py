"""``DataPlaneService.Connect``: the Attach calls of many streams over one call.

The native data path holds one Connect call open for as long as it runs, and
carries every client stream's Attach call over it, sending the events of many
streams in one message (it gathers them for ``control_batch_wait_s`` after each).
What a new stream costs this process is mostly the messages it reads and writes
(``bench/router_setup.py``, docs/router.md): here a stream costs a task, a queue
and a share of a batched read and write.

Each carried stream is served by the same code as an Attach call
(:class:`~services.router.control.DataPlaneService`), as a task of its own, with a
:class:`CarriedCall` for its call: its events come from a queue that the Connect
reader fills, its answers join the batch that the writer sends next, and the status
it ends with goes as ``end``. Batching is left to the loop: every answer made while
a batch is written goes in the next one.

A carried stream ends as its Attach call would: with its status (``end``), when the
data path cancels it (``cancel``), or when the Connect call ends, which cancels every
stream it still carries, so that each releases what it held.

No one stream may end the call of all: its messages go both ways with
``CONNECT_MAX_MESSAGE_BYTES``, the public endpoint's message limit and some headroom
(an open carries the client's first request, whole when it is a config, and the route
sends that config back), and an answer that would not fit even so ends its own stream
with RESOURCE_EXHAUSTED instead of going on the call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, NoReturn, Protocol

import grpc
from prometheus_client import Histogram

from voxmesh import tasks
from voxmesh.errors import ResourceExhausted
from voxmesh.router.v1 import dataplane_pb2
from voxmesh.rpc.server import DEFAULT_MAX_MESSAGE_BYTES
from voxmesh.rpc.status import Abortable

__all__ = [
    "CONNECT_HEADROOM_BYTES",
    "CONNECT_MAX_MESSAGE_BYTES",
    "AttachContext",
    "AttachHandler",
    "CarriedCall",
    "ConnectSession",
    "batches",
]

logger = logging.getLogger(__name__)

CONNECT_HEADROOM_BYTES = 64 * 1024
"""What a Connect message may take beyond the public endpoint's message limit: the
fields around a client's request (the data path's ``server.ControlHeadroomBytes``)."""
CONNECT_MAX_MESSAGE_BYTES = DEFAULT_MAX_MESSAGE_BYTES + CONNECT_HEADROOM_BYTES
"""The message limit of the router's server with the native data path, and of the data
path's connection to it, both ways."""
MAX_BATCH_BYTES = 1 << 20
"""Bound of a ConnectResponse: a backlog of answers (a data path that read nothing for a
while) goes in several, each far under the message size limit."""


class AttachContext(Abortable, Protocol):
    """What serving one Attach call needs of its context: a grpc.aio
    ServicerContext, or a :class:`CarriedCall`."""

    async def write(self, message: dataplane_pb2.AttachResponse) -> None:
        """Sends one answer."""
        ...


AttachHandler = Callable[
    [AsyncIterable[dataplane_pb2.AttachRequest], AttachContext], Awaitable[None]
]
"""Serves one Attach call to its end (raising through ``abort`` to end it with a status)."""


class _Ended(Exception):
    """A carried call ended with a status: what its ``abort`` raises."""

    def __init__(
        self, code: grpc.StatusCode, details: str, trailing: Sequence[tuple[str, str | bytes]]
    ) -> None:
        super().__init__(details)
        self.end = dataplane_pb2.StreamEnd(
            code=code.value[0],
            message=details,
            trailer=[
                dataplane_pb2.TrailerEntry(
                    key=key, value=value if isinstance(value, bytes) else value.encode()
                )
                for key, value in trailing
            ],
        )


class CarriedCall:
    """One stream's Attach call as a Connect call carries it: the iterator of its
    events and its context (see the module docstring)."""

    def __init__(self, key: int, session: ConnectSession, max_message_bytes: int) -> None:
        self.key = key
        self._session = session
        self._max_message_bytes = max_message_bytes
        self._events: asyncio.Queue[dataplane_pb2.AttachRequest] = asyncio.Queue()

    def put(self, event: dataplane_pb2.AttachRequest) -> None:
        """Hands over one event from the data path."""
        self._events.put_nowait(event)

    def __aiter__(self) -> CarriedCall:
        return self

    async def __anext__(self) -> dataplane_pb2.AttachRequest:
        # No half-close: a carried stream ends by finished, by cancel, or with the
        # Connect call, which cancels this wait.
        return await self._events.get()

    async def write(self, message: dataplane_pb2.AttachResponse) -> None:
        """Queues one answer for the next batch; raises RESOURCE_EXHAUSTED for one that
        a ConnectResponse of its own could not carry (it would end the Connect call)."""
        answer = dataplane_pb2.StreamAnswer(stream=self.key, answer=message)
        size = _field_bytes(answer.ByteSize())
        if size > self._max_message_bytes:
            raise ResourceExhausted(
                f"the router's answer about this stream ({size} bytes) exceeds the "
                f"message limit of its native data path ({self._max_message_bytes} bytes)",
                retry_after=0.0,
            )
        self._session.answer(answer)

    async def abort(
        self,
        code: grpc.StatusCode,
        details: str = "",
        trailing_metadata: Sequence[tuple[str, str | bytes]] = (),
    ) -> NoReturn:
        """Ends the stream with ``code``, ``details`` and ``trailing_metadata``."""
        raise _Ended(code, details, trailing_metadata)

    async def abort_with_status(self, status: grpc.Status) -> NoReturn:
        """Ends the stream with ``status``."""
        raise _Ended(status.code, status.details, status.trailing_metadata)


class ConnectSession:
    """One Connect call: serves the streams it carries with ``attach``; ``batch_events``
    observes the number of events in each message; an answer is at most
    ``max_message_bytes`` (with the bytes that frame it in a ConnectResponse)."""

    def __init__(
        self,
        attach: AttachHandler,
        context: grpc.aio.ServicerContext[Any, Any],
        batch_events: Histogram | None = None,
        max_message_bytes: int = CONNECT_MAX_MESSAGE_BYTES,
    ) -> None:
        self._attach = attach
        self._context = context
        self._batch_events = batch_events
        self._max_message_bytes = max_message_bytes
        self._calls: dict[int, tuple[CarriedCall, asyncio.Task[None]]] = {}
        self._outbox: list[dataplane_pb2.StreamAnswer] = []
        self._answered = asyncio.Event()

    async def serve(self, requests: AsyncIterator[dataplane_pb2.ConnectRequest]) -> None:
        """Serves the call until the data path ends it; then ends every stream it carries."""
        writer = asyncio.create_task(self._write(), name="connect-write")
        try:
            async for request in requests:
                if self._batch_events is not None:
                    self._batch_events.observe(len(request.events))
                for event in request.events:
                    self._on(event)
                if writer.done():  # the call broke under a write
                    break
        finally:
            carried = [task for _, task in self._calls.values()]
            self._calls.clear()
            if carried:
                logger.info("Connect ended: %d streams it carried are cancelled", len(carried))
            await tasks.stop_all([*carried, writer])

    def answer(self, answer: dataplane_pb2.StreamAnswer) -> None:
        """Queues ``answer`` for the next batch."""
        self._outbox.append(answer)
        self._answered.set()

    def _on(self, event: dataplane_pb2.StreamEvent) -> None:
        kind = event.WhichOneof("kind")
        key = event.stream
        if kind == "begin":
            if key in self._calls:
                logger.error("data path protocol error: Connect began stream %d twice", key)
                return
            call = CarriedCall(key, self, self._max_message_bytes)
            task = asyncio.create_task(self._serve_call(call), name=f"connect-stream-{key}")
            self._calls[key] = (call, task)
        elif kind == "event":
            # A key that ended takes no more events (as an Attach call that ended): the
            # data path may send some before it has the end.
            if (entry := self._calls.get(key)) is not None:
                entry[0].put(event.event)
        elif kind == "cancel":
            if (entry := self._calls.pop(key, None)) is not None:
                entry[1].cancel()
        else:
            logger.error("data path protocol error: an empty Connect event (stream %d)", key)

    async def _serve_call(self, call: CarriedCall) -> None:
        end = dataplane_pb2.StreamEnd()  # OK
        try:
            await self._attach(call, call)
        except _Ended as ended:
            end = ended.end
        except Exception:
            # What grpc.aio answers for an Attach handler's unexpected error.
            logger.exception("stream %d carried by Connect failed", call.key)
            end = dataplane_pb2.StreamEnd(
                code=grpc.StatusCode.UNKNOWN.value[0],
                message="unexpected error in the router's control plane",
            )
        # Cancelled (by the data path, or with the Connect call): no end, as a
        # cancelled Attach call has no status to send.
        if (entry := self._calls.get(call.key)) is not None and entry[0] is call:
            del self._calls[call.key]
            self.answer(dataplane_pb2.StreamAnswer(stream=call.key, end=end))

    async def _write(self) -> None:
        while True:
            await self._answered.wait()
            self._answered.clear()
            answers, self._outbox = self._outbox, []
            for batch in batches(answers, min(MAX_BATCH_BYTES, self._max_message_bytes)):
                await self._context.write(dataplane_pb2.ConnectResponse(answers=batch))


def _field_bytes(size: int) -> int:
    """What a message of ``size`` bytes takes as a field (tag 1) of another."""
    return 1 + max(1, -(-size.bit_length() // 7)) + size  # the tag, the length's varint


def batches(
    answers: list[dataplane_pb2.StreamAnswer], max_bytes: int
) -> Iterator[list[dataplane_pb2.StreamAnswer]]:
    """``answers`` in order, cut into batches whose ConnectResponse is at most
    ``max_bytes`` (an answer larger than that goes alone)."""
    batch: list[dataplane_pb2.StreamAnswer] = []
    size = 0
    for answer in answers:
        answer_bytes = _field_bytes(answer.ByteSize())
        size += answer_bytes
        if batch and size > max_bytes:
            yield batch
            batch, size = [], answer_bytes
        batch.append(answer)
    if batch:
        yield batch
