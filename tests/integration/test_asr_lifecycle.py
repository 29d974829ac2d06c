"""Lifecycle of a real instance: Consul registration (against the Consul HTTP API
test double, which probes the instance's gRPC health for real), file discovery,
and SIGTERM drain under load with no stream dropped."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.asr_server import AsrServerThread
from tests.conditions import wait_until, wait_until_async
from tests.doubles.consul_double import ConsulDouble
from tests.speech import silence_pcm, utterance_recording, wer
from tests.streaming import run_stream
from voxmesh.asr import app
from voxmesh.discovery import InstanceInfo
from voxmesh.mesh.process import ServiceProcess
from voxmesh.rpc.metadata import LAST_RESORT_KEY
from voxmesh.stt.v1 import stt_pb2, stt_pb2_grpc

pytestmark = pytest.mark.model


@pytest.fixture
def consul() -> Iterator[ConsulDouble]:
    double = ConsulDouble(min_check_interval=0.1)
    double.start()
    yield double
    double.stop()


def _passing(consul: ConsulDouble) -> list[dict[str, object]]:
    url = f"{consul.url}/v1/health/service/voxmesh-asr-small?passing"
    with urllib.request.urlopen(url) as response:
        entries: list[dict[str, object]] = json.load(response)
    return entries


def test_consul_registration_health_drain_and_deregistration(consul: ConsulDouble) -> None:
    server = AsrServerThread(
        discovery="consul", consul_addr=consul.url, consul_check_interval="200ms", max_streams=3
    )
    with server:
        iid = server.ready["instance_id"]
        registered = consul.service(iid)
        assert registered is not None
        assert registered["Service"] == "voxmesh-asr-small"
        assert registered["Port"] == server.ready["port"]
        meta = registered["Meta"]
        assert meta["pool"] == "asr_small" and meta["model"] == "tiny.en"
        assert meta["max_streams"] == "3" and meta["capacity_class"] == "on-demand"
        check = consul.check(f"service:{iid}")
        assert check is not None and check["Type"] == "grpc"
        # The double probes grpc.health.v1 for real: passing once the instance serves.
        wait_until(lambda: len(_passing(consul)) == 1, timeout=10)
        server.stop()
        server.join()
    assert consul.service(iid) is None, "deregistered on exit"
    assert _passing(consul) == []


async def test_sigterm_drains_active_streams_then_deregisters(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    proc = ServiceProcess(
        "services.asr_small",
        [
            "--discovery",
            "file",
            "--registry-dir",
            str(registry),
            "--max-streams",
            "4",
            "--cpu-threads",
            "2",
            "--drain-timeout",
            "30",
            "--last-resort-min-drain",
            "10",
        ],
        log_path=tmp_path / "asr.log",
    )
    await proc.start()
    rec = utterance_recording()
    record = registry / f"{proc.ready['instance_id']}.json"
    try:
        assert record.exists() and (registry / "file_sd" / record.name).exists()
        async with grpc.aio.insecure_channel(proc.target) as channel:
            streams = [
                asyncio.create_task(
                    run_stream(channel, rec.pcm + silence_pcm(0.5, rec.rate), rec.rate, speed=1.0)
                )
                for _ in range(3)
            ]
            await wait_until_async(lambda: _active(proc.ready) == 3, timeout=15)
            proc.signal_drain()
            await wait_until_async(lambda: json.loads(record.read_text())["draining"], timeout=10)
            late = await run_stream(channel, silence_pcm(0.5))
            # The router's last resort: taken while 10 s of the 30 s drain are left.
            last_resort = await run_stream(
                channel, silence_pcm(0.5), metadata=[(LAST_RESORT_KEY, "1")]
            )
            telemetry = stt_pb2_grpc.TelemetryServiceStub(channel).WatchTelemetry(
                stt_pb2.WatchTelemetryRequest()
            )
            first = await telemetry.read()
            assert isinstance(first, stt_pb2.WatchTelemetryResponse)
            snapshot = first.snapshot
            telemetry.cancel()
            results = await asyncio.gather(*streams)
        assert late.error is not None and late.error.code() == grpc.StatusCode.UNAVAILABLE
        assert last_resort.error is None and last_resort.summary is not None
        assert snapshot.state == stt_pb2.SERVING_STATE_DRAINING
        assert 10 < snapshot.drain_remaining.ToMilliseconds() / 1000 <= 30
        for run in results:
            assert run.error is None, run.error
            assert run.summary is not None
            assert wer(rec.text, run.text) <= 0.25, run.text
        assert await proc.wait(30) == 0
        assert not record.exists(), "deregistered after the drain"
    finally:
        await proc.kill()


def _active(ready: Mapping[str, Any]) -> float:
    """``voxmesh_asr_streams_active`` of the instance whose ready line is ``ready``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{ready['metrics_port']}/metrics") as r:
        for line in r.read().decode().splitlines():
            if line.startswith("voxmesh_asr_streams_active "):
                return float(line.split()[1])
    return -1.0


class _UnwritableRegistry:
    """A discovery backend whose drain mark fails (a registry on a full disk, a Consul
    token without the right to set maintenance); records what it was asked."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def register(self, info: InstanceInfo) -> None:
        self.calls.append("register")

    async def set_draining(self) -> None:
        self.calls.append("set_draining")
        raise OSError(28, "No space left on device")

    async def deregister(self) -> None:
        self.calls.append("deregister")


async def test_a_discovery_error_during_the_drain_does_not_cut_it_short(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The error ended the drain where it happened: active streams were cut, the
    instance never deregistered, and it exited with the error."""
    registry = _UnwritableRegistry()
    monkeypatch.setattr(app, "make_registrar", lambda settings: registry)
    rec = utterance_recording()
    server = AsrServerThread(max_streams=2)
    with server:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stream = asyncio.create_task(
                run_stream(channel, rec.pcm + silence_pcm(0.5, rec.rate), rec.rate, speed=1.0)
            )
            await wait_until_async(lambda: _active(server.ready) == 1, timeout=15)
            server.stop()
            run = await stream
    assert run.error is None, run.error
    assert wer(rec.text, run.text) <= 0.25, run.text
    assert server.exit_code == 0
    assert registry.calls == ["register", "set_draining", "deregister"]
