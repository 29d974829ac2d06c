"""Stand-ins for the router's native data path (test doubles, NOT ``dataplane/``).

Two halves of what the Go data path does, each standing in for it alone:

* :class:`AttachStandIn` is one ``DataPlaneService.Attach`` call driven by hand,
  as the data path drives it for one client stream (open, place, attempt_ended,
  buffered, reject, latency, finished), over the router's Unix socket. No client
  stream and no instance stream behind it: the test plays both.
* As a process (:func:`write_executable` writes a ``dataplane_bin`` that runs it),
  it is the data path's process as the router starts it: it takes the router's
  flags, binds ``--listen`` (serving nothing on it), prints ``PORT <n>`` and waits
  for SIGTERM; it records its command line and its SIGTERM in a JSON file. Options
  before the router's flags make it misbehave (exit early, never report a port).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc

from voxmesh.router.v1 import dataplane_pb2, dataplane_pb2_grpc
from voxmesh.stt.v1 import stt_pb2

__all__ = ["AttachStandIn", "process_main", "write_executable"]


class AttachStandIn:
    """One Attach call standing in for the data path's side of one client stream."""

    def __init__(self, channel: grpc.aio.Channel, timeout: float = 30.0) -> None:
        self.call: Any = dataplane_pb2_grpc.DataPlaneServiceStub(channel).Attach(timeout=timeout)

    async def send(self, **event: Any) -> None:
        """Sends one ``AttachRequest`` with ``event`` set (``open=OpenEvent(...)``)."""
        await self.call.write(dataplane_pb2.AttachRequest(**event))

    async def open(
        self, first: stt_pb2.StreamingRecognizeRequest | None
    ) -> dataplane_pb2.RouteEvent:
        """Sends ``open`` with the client's ``first`` request (None: none) and returns
        the ``route`` answered (raises the call's error if it ends instead)."""
        opened = dataplane_pb2.OpenEvent()
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

    async def finished(self, code: int = 0, audio_seconds: float = 0.0) -> None:
        """Sends ``finished``, half-closes and waits for the call to end (OK); answers
        not read yet (a placement that came meanwhile) are read and dropped, as gRPC
        gives a call's status only once its messages are read."""
        await self.send(
            finished=dataplane_pb2.FinishedEvent(code=code, audio_seconds=audio_seconds)
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


def write_executable(path: Path, *options: str) -> Path:
    """Writes an executable at ``path`` that runs this stand-in process, with
    ``options`` (:func:`process_main`'s own) before the router's flags."""
    quoted = " ".join(f"'{part}'" for part in (sys.executable, __file__, *options))
    path.write_text(f'#!/bin/sh\nexec {quoted} "$@"\n')
    path.chmod(0o755)
    return path


def process_main(argv: list[str]) -> int:
    """The data path's process stand-in (see the module docstring)."""
    parser = argparse.ArgumentParser(description="native data path stand-in (a test double)")
    parser.add_argument("--record", help="write the command line and events here (JSON)")
    parser.add_argument("--exit-after", type=float, help="exit with code 3 this long after PORT")
    parser.add_argument("--exit-before-port", type=int, help="exit with this code at once")
    parser.add_argument("--silent", action="store_true", help="never print PORT")
    parser.add_argument("--listen", required=True)
    parser.add_argument("--control", required=True)
    parser.add_argument("--forward", required=True)
    parser.add_argument("--tls-cert-file")
    parser.add_argument("--tls-key-file")
    parser.add_argument("--tls-client-ca-file")
    args = parser.parse_args(argv)
    record: dict[str, Any] = {"argv": argv, "pid": os.getpid(), "terminated": False}

    def save() -> None:  # whole or not at all: a test may read it as this is killed
        if args.record:
            partial = Path(f"{args.record}.partial")
            partial.write_text(json.dumps(record))
            partial.replace(args.record)

    save()
    if args.exit_before_port is not None:
        return int(args.exit_before_port)
    host, _, port = args.listen.rpartition(":")
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    listener.bind((host.strip("[]"), int(port)))
    listener.listen()
    record["port"] = listener.getsockname()[1]
    save()
    stop = threading.Event()

    def terminate(signum: int, frame: object) -> None:
        record["terminated"] = True
        save()
        stop.set()

    signal.signal(signal.SIGTERM, terminate)
    if not args.silent:
        print(f"PORT {listener.getsockname()[1]}", flush=True)
        print("stand-in data path serving nothing", flush=True)
    deadline = None if args.exit_after is None else time.monotonic() + args.exit_after
    while not stop.wait(0.05):
        if deadline is not None and time.monotonic() >= deadline:
            return 3
    return 0


if __name__ == "__main__":
    sys.exit(process_main(sys.argv[1:]))
