"""A router with fake ASR instances, all in this process on port 0, for integration tests.

The router is the real one (:class:`services.router.app.RouterApp`); the
instances are :class:`tests.doubles.fake_asr.FakeAsr` doubles; discovery is
the in-memory double unless a test passes its own watcher factory. With
:func:`native_mesh` the router runs its native data path's control plane, the
data path's process being a stand-in (:mod:`tests.doubles.dataplane_process`):
tests drive ``DataPlaneService.Attach`` themselves, as the data path would.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from services.router.app import RouterApp
from services.router.membership import Member
from services.router.settings import RouterSettings
from tests.conditions import wait_until_async
from tests.data_paths import DATA_PATH
from tests.doubles.dataplane_process import write_executable
from tests.doubles.fake_asr import FakeAsr, FakeAsrOptions
from tests.doubles.memory_discovery import MemoryDiscovery
from tests.streaming import config_request
from voxmesh.discovery import Watcher
from voxmesh.stt.v1 import stt_pb2, stt_pb2_grpc

__all__ = ["DATA_PATH", "HeldStream", "Mesh", "assert_no_tasks_left", "mesh", "native_mesh", "pcm"]

CHUNK = 3200  # 100 ms of 16 kHz LINEAR16


def pcm(seconds: float, seed: int = 0) -> bytes:
    """Deterministic pseudo-random 16 kHz LINEAR16 audio (the fake hashes it)."""
    return random.Random(seed).randbytes(int(seconds * 16000) * 2)


@dataclass
class Mesh:
    """The router, its fake instances and a client channel to the router."""

    router: RouterApp
    discovery: MemoryDiscovery
    channel: grpc.aio.Channel
    fakes: dict[str, FakeAsr] = field(default_factory=dict)

    async def add(self, instance_id: str, *, announce: bool = True, **options: Any) -> FakeAsr:
        """Starts a fake instance and (unless ``announce`` is False) lists it in discovery."""
        fake = FakeAsr(FakeAsrOptions(instance_id=instance_id, **options))
        await fake.start()
        self.fakes[instance_id] = fake
        if announce:
            self.discovery.put(fake.info)
            await self.known(instance_id)
        return fake

    def member(self, instance_id: str) -> Member | None:
        """The router's view of an instance."""
        for pool in self.router.settings.pools:
            for member in self.router.membership.candidates(pool):
                if member.instance_id == instance_id:
                    return member
        return None

    async def known(self, instance_id: str, active: int | None = None) -> None:
        """Waits until the router has a telemetry snapshot of the instance (with ``active``)."""

        def ready() -> bool:
            m = self.member(instance_id)
            if m is None or m.snapshot is None or not m.accepting():
                return False
            return active is None or m.snapshot.active_streams == active

        await wait_until_async(ready, timeout=5.0)

    def queue(self, pool: str = "asr_small") -> stt_pb2.QueueStats:
        """The router's current QueueStats of ``pool`` (as its telemetry sends it)."""
        for q in self.snapshot().queues:
            if q.pool == pool:
                return q
        raise AssertionError(f"no queue stats for {pool}")

    def snapshot(self) -> stt_pb2.TelemetrySnapshot:
        """A router telemetry snapshot, built as WatchTelemetry builds it."""
        return self.router.telemetry_snapshot()

    def metric(self, name: str, **labels: str) -> float:
        """A sample of the router's Prometheus registry (0 when absent)."""
        value = self.router.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


@contextlib.asynccontextmanager
async def mesh(
    watcher_for: Callable[[str], Watcher] | None = None, **settings: Any
) -> AsyncIterator[Mesh]:
    """A started router (settings overridable) with no instances yet."""
    base: dict[str, Any] = {
        "port": 0,
        "metrics_port": -1,
        "telemetry_interval_s": 0.1,
        "drain_timeout_s": 5.0,
        "data_path": DATA_PATH.get(),
    }
    base.update(settings)
    router_settings = RouterSettings(**base)
    router_settings.validate()
    discovery = MemoryDiscovery()
    router = RouterApp(router_settings, watcher_for=watcher_for or discovery.watcher)
    await router.start()
    channel = grpc.aio.insecure_channel(router.target)
    the_mesh = Mesh(router=router, discovery=discovery, channel=channel)
    try:
        yield the_mesh
    finally:
        await channel.close()
        await router.shutdown()
        for fake in the_mesh.fakes.values():
            await fake.stop()
        await assert_no_tasks_left()


@contextlib.asynccontextmanager
async def native_mesh(
    directory: Path, *standin: str, **settings: Any
) -> AsyncIterator[tuple[Mesh, grpc.aio.Channel]]:
    """A started router with ``data_path=native`` whose data path is the process stand-in
    (``standin`` its own options; it records itself in ``directory/standin.json``), and a
    channel to the router's Unix socket, where the data path calls Attach."""
    record = directory / "standin.json"
    binary = write_executable(directory / "voxmesh-dataplane", "--record", str(record), *standin)
    async with mesh(data_path="native", dataplane_bin=str(binary), **settings) as the_mesh:
        channel = grpc.aio.insecure_channel(f"unix:{the_mesh.router.control_socket}")
        try:
            yield the_mesh, channel
        finally:
            await channel.close()


async def assert_no_tasks_left(timeout: float = 2.0) -> None:
    """Fails unless every task but the caller's ends (cancelled ones get a few loop turns)."""
    current = asyncio.current_task()

    def others() -> list[asyncio.Task[Any]]:
        return [t for t in asyncio.all_tasks() if t is not current and not t.done()]

    try:
        await wait_until_async(lambda: not others(), timeout=timeout)
    except AssertionError:
        raise AssertionError(f"tasks left behind: {others()}") from None


class HeldStream:
    """A stream that sends audio and stays open until :meth:`finish`."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        first: stt_pb2.StreamingRecognizeRequest | None = None,
        timeout: float | None = 30.0,
    ) -> None:
        stub = stt_pb2_grpc.RecognizerServiceStub(channel)
        self.call: Any = stub.StreamingRecognize(timeout=timeout)
        self._first = first if first is not None else config_request(model="asr_small")
        self.responses: list[stt_pb2.StreamingRecognizeResponse] = []
        self.sent = b""
        self._reader: asyncio.Task[None] | None = None
        self.error: grpc.aio.AioRpcError | None = None

    async def open(self, audio: bytes = b"\0" * CHUNK) -> HeldStream:
        """Sends the config and ``audio``; responses are collected in the background."""
        await self.call.write(self._first)
        await self.send(audio)
        self._reader = asyncio.create_task(self._read())
        return self

    async def send(self, audio: bytes) -> None:
        """Sends more audio in 100 ms chunks."""
        for i in range(0, len(audio), CHUNK):
            await self.call.write(
                stt_pb2.StreamingRecognizeRequest(audio_content=audio[i : i + CHUNK])
            )
        self.sent += audio

    async def _read(self) -> None:
        try:
            while (response := await self.call.read()) != grpc.aio.EOF:
                self.responses.append(response)
        except grpc.aio.AioRpcError as err:
            self.error = err

    def got_results(self) -> bool:
        """True once a result arrived (the stream is on an instance)."""
        return any(r.WhichOneof("streaming_response") == "result" for r in self.responses)

    async def finish(self) -> stt_pb2.StreamSummary:
        """Half-closes, waits for the end and returns the summary (raises on error)."""
        await self.call.done_writing()
        assert self._reader is not None
        await self._reader
        if self.error is not None:
            raise self.error
        return self.summary()

    def summary(self) -> stt_pb2.StreamSummary:
        """The summary received."""
        for r in self.responses:
            if r.WhichOneof("streaming_response") == "summary":
                return r.summary
        raise AssertionError("no summary")

    def finals(self) -> list[str]:
        """Final transcripts received."""
        return [
            r.result.alternatives[0].transcript
            for r in self.responses
            if r.WhichOneof("streaming_response") == "result" and r.result.is_final
        ]

    async def cancel(self) -> None:
        """Cancels the call and waits for the reader."""
        self.call.cancel()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
