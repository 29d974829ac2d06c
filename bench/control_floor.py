"""The floor of a control plane for the router's native data path: a grpc.aio
``DataPlaneService`` that decides nothing (``bench/router_setup.py`` runs it).

Every stream goes to one backend at once: ``open`` is answered with a route that
carries the placement (as the router's control plane answers when an instance has
room), a later ``place`` with the same placement, and ``finished`` or ``reject``
ends the stream. No validation, discovery, admission, limits or metrics, and no
task per stream: ``Connect`` answers each batch of events in line, the least a
grpc.aio control plane that the data path reaches over ``Connect`` can spend.
(``Attach``, one call per stream, answers the same way.)

    python -m bench.control_floor --socket PATH --backend HOST:PORT

prints ``READY`` once it serves.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import grpc

from services.router.control import relay_limits
from services.router.relay import RelayLimits
from services.router.settings import load_settings
from voxmesh.router.v1 import dataplane_pb2, dataplane_pb2_grpc
from voxmesh.stt.v1 import stt_pb2

POOL = "asr_small"
_END = dataplane_pb2.AttachResponse()  # marks a stream's end; never sent


class FloorControl(dataplane_pb2_grpc.DataPlaneServiceServicer):
    """Routes and places every stream on ``backend`` at once."""

    def __init__(self, backend: str) -> None:
        self._placement = dataplane_pb2.PlacementEvent(
            instance_id="bench-backend", target=backend, model="tiny.en"
        )
        self._limits = relay_limits(RelayLimits.of(load_settings([], {})))
        self._streams = 0

    async def Attach(  # type: ignore[override]
        self,
        request_iterator: AsyncIterator[dataplane_pb2.AttachRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        """Answers one stream's events (see the module docstring)."""
        async for request in request_iterator:
            answer = self._answer(request)
            if answer is _END:
                return
            if answer is not None:
                await context.write(answer)

    async def Connect(  # type: ignore[override]
        self,
        request_iterator: AsyncIterator[dataplane_pb2.ConnectRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        """Answers every carried stream's events in line, a batch for a batch."""
        async for request in request_iterator:
            answers = []
            for event in request.events:
                if event.WhichOneof("kind") != "event":
                    continue  # begin, cancel: nothing held
                answer = self._answer(event.event)
                if answer is _END:
                    end = dataplane_pb2.StreamEnd()
                    answers.append(dataplane_pb2.StreamAnswer(stream=event.stream, end=end))
                elif answer is not None:
                    answers.append(dataplane_pb2.StreamAnswer(stream=event.stream, answer=answer))
            if answers:
                await context.write(dataplane_pb2.ConnectResponse(answers=answers))

    def _answer(self, request: dataplane_pb2.AttachRequest) -> dataplane_pb2.AttachResponse | None:
        """The answer to one event: None for none, ``_END`` when the stream ends (OK)."""
        kind = request.WhichOneof("event")
        if kind == "open":
            route = self._route(request.open.first_request)
            if request.open.place:
                route.placement.CopyFrom(self._placement)
            return dataplane_pb2.AttachResponse(route=route)
        if kind == "place":
            return dataplane_pb2.AttachResponse(placement=self._placement)
        if kind in ("finished", "reject"):
            return _END
        return None

    def _route(self, first: stt_pb2.StreamingRecognizeRequest) -> dataplane_pb2.RouteEvent:
        self._streams += 1
        config = stt_pb2.StreamingRecognizeRequest()
        config.CopyFrom(first)
        streaming = config.streaming_config
        streaming.config.model = POOL
        streaming.stream_id = streaming.stream_id or f"floor-{self._streams}"
        linear16 = streaming.config.encoding == stt_pb2.AUDIO_ENCODING_LINEAR16
        return dataplane_pb2.RouteEvent(
            config=config,
            pool=POOL,
            stream_id=streaming.stream_id,
            linear16=linear16,
            sample_rate_hertz=streaming.config.sample_rate_hertz if linear16 else 0,
            limits=self._limits,
        )


async def serve(socket_path: str, backend: str) -> None:
    """Serves :class:`FloorControl` on a Unix socket until cancelled."""
    server = grpc.aio.server()
    dataplane_pb2_grpc.add_DataPlaneServiceServicer_to_server(FloorControl(backend), server)
    server.add_insecure_port(f"unix:{socket_path}")
    await server.start()
    print("READY", flush=True)
    try:
        await server.wait_for_termination()
    finally:
        await server.stop(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--socket", required=True, help="Unix socket path to serve on")
    parser.add_argument("--backend", required=True, help="host:port every stream goes to")
    args = parser.parse_args()
    if os.path.exists(args.socket):
        os.unlink(args.socket)
    asyncio.run(serve(args.socket, args.backend))


if __name__ == "__main__":
    main()
