"""A stand-in for the router's native data path's side of ``DataPlaneService.Attach``
(a test double, NOT ``dataplane/``).

:class:`AttachStandIn` is one Attach call driven by hand, as the data path drives it
for one client stream (open, place, attempt_ended, buffered, reject, latency,
finished), over the router's Unix socket. No client stream and no instance stream
behind it: the test plays both. The data path's process has its own stand-in,
:mod:`tests.doubles.dataplane_process`.
"""

from __future__ import annotations

from typing import Any

import grpc

from voxmesh.router.v1 import dataplane_pb2, dataplane_pb2_grpc
from voxmesh.stt.v1 import stt_pb2

__all__ = ["AttachStandIn"]


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
