"""A stand-in for the router's native data path's side of ``DataPlaneService.Attach``
and ``Connect`` (a test double, NOT ``dataplane/``).

:class:`AttachStandIn` is one Attach call driven by hand, as the data path drives it
for one client stream (open, place, attempt_ended, buffered, reject, latency,
finished), over the router's Unix socket; :class:`CarriedStandIn` is the same call
carried by a :class:`ConnectStandIn`, as the data path carries every stream. No
client stream and no instance stream behind it: the test plays both. The data path's
process has its own stand-in, :mod:`tests.doubles.dataplane_process`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from voxmesh import tasks
from voxmesh.router.v1 import dataplane_pb2, dataplane_pb2_grpc
from voxmesh.stt.v1 import stt_pb2

__all__ = ["AttachStandIn", "CarriedStandIn", "ConnectStandIn"]


class AttachStandIn:
    """One Attach call standing in for the data path's side of one client stream."""

    def __init__(self, channel: grpc.aio.Channel, timeout: float = 30.0) -> None:
        self.call: Any = dataplane_pb2_grpc.DataPlaneServiceStub(channel).Attach(timeout=timeout)

    async def send(self, audio_seconds: float = 0.0, **event: Any) -> None:
        """Sends one ``AttachRequest`` with ``event`` set (``open=OpenEvent(...)``) and
        ``audio_seconds`` received so far."""
        await self.call.write(dataplane_pb2.AttachRequest(audio_seconds=audio_seconds, **event))

    async def open(
        self, first: stt_pb2.StreamingRecognizeRequest | None, *, place: bool = False
    ) -> dataplane_pb2.RouteEvent:
        """Sends ``open`` with the client's ``first`` request (None: none), asking for
        an instance with it when ``place``, and returns the ``route`` answered (raises
        the call's error if it ends instead)."""
        opened = dataplane_pb2.OpenEvent(place=place)
        if first is not None:
            opened.first_request.CopyFrom(first)
        await self.send(open=opened)
        route: dataplane_pb2.RouteEvent = (await self.answer("route")).route
        return route

    async def place(self) -> None:
        """Sends ``place`` (the answer comes with :meth:`answer`)."""
        await self.send(place=dataplane_pb2.PlaceEvent())

    async def placement(self) -> dataplane_pb2.PlacementEvent:
        """Sends ``place`` and returns the ``placement`` answered."""
        await self.place()
        placement: dataplane_pb2.PlacementEvent = (await self.answer("placement")).placement
        return placement

    async def ended(self, outcome: dataplane_pb2.AttemptEndedEvent.Outcome.ValueType) -> None:
        """Sends ``attempt_ended`` with ``outcome``."""
        await self.send(attempt_ended=dataplane_pb2.AttemptEndedEvent(outcome=outcome))

    async def finished(self, code: int = 0, audio_seconds: float = 0.0, **fields: Any) -> None:
        """Sends ``finished`` (its ``fields`` as well: ``last_attempt``, ``latency``),
        half-closes and waits for the call to end (OK); answers not read yet (a
        placement that came meanwhile) are read and dropped, as gRPC gives a call's
        status only once its messages are read."""
        await self.send(
            finished=dataplane_pb2.FinishedEvent(code=code, **fields), audio_seconds=audio_seconds
        )
        await self.call.done_writing()
        while await self.call.read() != grpc.aio.EOF:
            pass
        ended = await self.call.code()
        assert ended == grpc.StatusCode.OK, (ended, await self.call.details())

    async def answer(self, kind: str) -> dataplane_pb2.AttachResponse:
        """The next response, which must be of ``kind`` (raises the call's error)."""
        response = await self.call.read()
        assert isinstance(response, dataplane_pb2.AttachResponse), f"the call ended: {kind}?"
        assert response.WhichOneof("event") == kind, response
        return response

    async def status(self) -> tuple[grpc.StatusCode, str]:
        """Waits for the end of the call: its code and details."""
        return await self.call.code(), await self.call.details()


class ConnectStandIn:
    """One ``Connect`` call driven by hand, carrying the calls of :class:`CarriedStandIn`
    streams (a test double, NOT ``dataplane/``'s connector): events queued meanwhile go
    in one batch, as the data path batches them."""

    def __init__(self, channel: grpc.aio.Channel, timeout: float = 30.0) -> None:
        self.call: Any = dataplane_pb2_grpc.DataPlaneServiceStub(channel).Connect(timeout=timeout)
        self.batches: list[int] = []
        """The number of events in each batch sent."""
        self.answer_batches: list[int] = []
        """The number of answers in each batch received."""
        self._outbox: list[dataplane_pb2.StreamEvent] = []
        self._queued = asyncio.Event()
        self._streams: dict[int, _CarriedCall] = {}
        self._next = 0
        self._writer = asyncio.create_task(self._write())
        self._reader = asyncio.create_task(self._read())

    def stream(self) -> CarriedStandIn:
        """Begins a stream (its ``begin`` goes in the next batch)."""
        key = self._next
        self._next += 1
        carried = _CarriedCall(self, key)
        self._streams[key] = carried
        self.queue(dataplane_pb2.StreamEvent(stream=key, begin=True))
        return CarriedStandIn(carried)

    def queue(self, event: dataplane_pb2.StreamEvent) -> None:
        """Queues ``event`` for the next batch."""
        self._outbox.append(event)
        self._queued.set()

    async def close(self) -> None:
        """Cancels the call (the data path goes away) and stops the stand-in."""
        self.call.cancel()
        await tasks.stop_all([self._writer, self._reader])

    async def _write(self) -> None:
        while True:
            await self._queued.wait()
            self._queued.clear()
            batch, self._outbox = self._outbox, []
            self.batches.append(len(batch))
            await self.call.write(dataplane_pb2.ConnectRequest(events=batch))

    async def _read(self) -> None:
        end = dataplane_pb2.StreamEnd(
            code=grpc.StatusCode.INTERNAL.value[0], message="Connect ended OK"
        )
        try:
            while (response := await self.call.read()) != grpc.aio.EOF:
                self.answer_batches.append(len(response.answers))
                for answer in response.answers:
                    carried = self._streams.get(answer.stream)
                    assert carried is not None, f"an answer for stream {answer.stream}: {answer}"
                    if answer.WhichOneof("kind") == "end":
                        del self._streams[answer.stream]
                        carried.ended(answer.end)
                    else:
                        carried.answers.put_nowait(answer.answer)
        except grpc.aio.AioRpcError as err:
            end = dataplane_pb2.StreamEnd(code=err.code().value[0], message=err.details() or "")
        except asyncio.CancelledError:  # grpc.aio's word for a cancelled call, too
            end = dataplane_pb2.StreamEnd(
                code=grpc.StatusCode.CANCELLED.value[0], message="Connect cancelled"
            )
            raise
        finally:
            for carried in self._streams.values():
                carried.ended(end)
            self._streams.clear()
            self._writer.cancel()  # the call is over: nothing more to write


class _CarriedCall:
    """One carried stream's call, with the methods of a grpc.aio call that
    :class:`AttachStandIn` and the tests use."""

    def __init__(self, connect: ConnectStandIn, key: int) -> None:
        self._connect = connect
        self.key = key
        self.answers: asyncio.Queue[dataplane_pb2.AttachResponse] = asyncio.Queue()
        self._end: asyncio.Future[dataplane_pb2.StreamEnd] = (
            asyncio.get_running_loop().create_future()
        )

    def ended(self, end: dataplane_pb2.StreamEnd) -> None:
        if not self._end.done():
            self._end.set_result(end)

    async def write(self, request: dataplane_pb2.AttachRequest) -> None:
        self._connect.queue(dataplane_pb2.StreamEvent(stream=self.key, event=request))

    async def done_writing(self) -> None:
        """A carried call has no half-close: finished is its last event."""

    def cancel(self) -> None:
        self._connect.queue(dataplane_pb2.StreamEvent(stream=self.key, cancel=True))
        self.ended(
            dataplane_pb2.StreamEnd(code=grpc.StatusCode.CANCELLED.value[0], message="cancelled")
        )

    async def read(self) -> dataplane_pb2.AttachResponse | Any:
        """The next answer; EOF once the stream ended OK; raises its error otherwise."""
        if self.answers.empty() and not self._end.done():
            get = asyncio.ensure_future(self.answers.get())
            waits: set[asyncio.Future[Any]] = {get, self._end}
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if get.done():
                return get.result()
            get.cancel()
        if not self.answers.empty():
            return self.answers.get_nowait()
        end = self._end.result()
        if end.code == 0:
            return grpc.aio.EOF
        raise grpc.aio.AioRpcError(
            _CODES[end.code],
            grpc.aio.Metadata(),
            await self.trailing_metadata(),
            end.message,
        )

    async def code(self) -> grpc.StatusCode:
        return _CODES[(await self._end).code]

    async def details(self) -> str:
        return (await self._end).message

    async def trailing_metadata(self) -> grpc.aio.Metadata:
        end = await self._end
        return grpc.aio.Metadata(
            *(
                (entry.key, entry.value if entry.key.endswith("-bin") else entry.value.decode())
                for entry in end.trailer
            )
        )


class CarriedStandIn(AttachStandIn):
    """:class:`AttachStandIn` for a stream carried by a :class:`ConnectStandIn`."""

    def __init__(self, call: _CarriedCall) -> None:
        self.call = call


_CODES = {code.value[0]: code for code in grpc.StatusCode}
