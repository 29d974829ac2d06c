"""The router with ``data_path=native``, as a process: its gRPC server on a Unix socket, the
data path's process started with the router's flags, its port reported, stopped in the
shutdown order, and a data path that dies stopping the router. The data path's process
is a stand-in (:mod:`tests.doubles.dataplane_process`, a test double, not
``dataplane/``): it binds the public port, serves nothing there, and records itself."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import services.router.app
from services.router.__main__ import main as router_main
from services.router.__main__ import serve
from services.router.settings import load_settings
from tests.doubles.dataplane_process import write_executable
from tests.doubles.fake_asr import expected_finals
from tests.integration.router_harness import assert_no_tasks_left, mesh, native_mesh, pcm
from tests.streaming import recognize_request
from tests.tls_certs import Authority
from voxmesh.router.v1 import dataplane_pb2, dataplane_pb2_grpc
from voxmesh.stt.v1 import stt_pb2, stt_pb2_grpc


def record(directory: Path) -> dict[str, Any]:
    """What the stand-in recorded of itself."""
    recorded: dict[str, Any] = json.loads((directory / "standin.json").read_text())
    return recorded


def exists(path: Path) -> bool:
    """Whether ``path`` exists (a test's quick look, not the router's I/O)."""
    return path.exists()


async def test_the_router_serves_its_socket_and_the_data_path_its_public_port(
    tmp_path: Path,
) -> None:
    async with native_mesh(tmp_path) as (m, channel):
        fake = await m.add("a")
        sock = m.router.control_socket
        run_dir = Path(sock).parent
        assert run_dir.stat().st_mode & 0o077 == 0  # only the router's user gets in
        started = record(tmp_path)
        assert started["argv"][2:] == [
            "--listen",
            "127.0.0.1:0",
            "--control",
            f"unix:{sock}",
            "--forward",
            f"unix:{sock}",
            "--idle-timeout",
            "30s",
            "--drain-timeout",
            "0s",  # the router's drain is the one: SIGTERM comes after it
            "--control-batch-wait",
            "2ms",
            "--exit-on-stdin-eof",
        ]
        assert m.router.port == started["port"] > 0
        with socket.create_connection(("127.0.0.1", m.router.port), timeout=5):
            pass  # the stand-in listens there

        # What the data path forwards: health, Recognize and telemetry, on the socket.
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        audio = pcm(1.2, 4)
        response = await stt_pb2_grpc.RecognizerServiceStub(channel).Recognize(
            recognize_request(audio), timeout=10
        )
        assert [r.alternatives[0].transcript for r in response.results] == expected_finals(
            audio, 16000, 1000
        )
        telemetry = stt_pb2_grpc.TelemetryServiceStub(channel).WatchTelemetry(
            stt_pb2.WatchTelemetryRequest()
        )
        update = await telemetry.read()
        telemetry.cancel()
        assert isinstance(update, stt_pb2.WatchTelemetryResponse)
        snapshot = update.snapshot
        assert [row.address for row in snapshot.instances] == [fake.target]
        running = record(tmp_path)
        assert not running["terminated"] and not running["stdin_closed"]
    stopped = record(tmp_path)
    assert stopped["terminated"], "the data path was not sent SIGTERM"
    assert not stopped["stdin_closed"], "its stdin closed before SIGTERM: router gone?"
    assert not exists(run_dir)


async def test_the_tls_settings_go_to_the_data_path(tmp_path: Path) -> None:
    ca = Authority(tmp_path / "pki", "ca")
    server = ca.issue("server")
    tls = {
        "tls_cert_file": str(server.cert),
        "tls_key_file": str(server.key),
        "tls_client_ca_file": str(ca.cert),
    }
    async with native_mesh(tmp_path, **tls) as (_m, channel):
        argv = record(tmp_path)["argv"]
        flags = dict(zip(argv[-6::2], argv[-5::2], strict=True))
        assert flags == {
            "--tls-cert": str(server.cert),
            "--tls-key": str(server.key),
            "--tls-client-ca": str(ca.cert),
        }
        # The router's own socket stays plaintext: only its data path calls it.
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_data_path_that_exits_stops_the_router_with_a_non_zero_exit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    binary = write_executable(tmp_path / "voxmesh-dataplane", "--exit-after", "0.2")
    settings = load_settings(
        [
            "--data-path=native",
            f"--dataplane-bin={binary}",
            "--port=0",
            "--metrics-port=-1",
            f"--registry-dir={tmp_path / 'registry'}",
        ],
        env={},
    )
    assert await serve(settings) == 1
    assert capsys.readouterr().out.startswith("VOXMESH_READY ")
    await assert_no_tasks_left()


def test_a_data_path_that_exits_before_its_port_fails_the_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    binary = write_executable(tmp_path / "voxmesh-dataplane", "--exit-before-port", "5")
    argv = [
        "--data-path=native",
        f"--dataplane-bin={binary}",
        "--port=0",
        "--metrics-port=-1",
        f"--registry-dir={tmp_path / 'registry'}",
    ]
    assert router_main(argv) == 2
    err = capsys.readouterr().err
    assert (
        f"error: setting dataplane_bin='{binary}': the native data path exited with code 5" in err
    )
    assert "Traceback" not in err


def test_a_data_path_that_reports_no_port_fails_the_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(services.router.app, "DATAPLANE_START_TIMEOUT_S", 2.0)
    record_path = tmp_path / "standin.json"
    binary = write_executable(
        tmp_path / "voxmesh-dataplane", "--silent", "--record", str(record_path)
    )
    argv = [
        "--data-path=native",
        f"--dataplane-bin={binary}",
        "--port=0",
        "--metrics-port=-1",
        f"--registry-dir={tmp_path / 'registry'}",
    ]
    assert router_main(argv) == 2
    assert "reported no port within 2 s" in capsys.readouterr().err
    pid = json.loads(record_path.read_text())["pid"]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # stopped, and reaped


async def test_the_python_data_path_serves_no_control_plane() -> None:
    async with mesh() as m:
        assert m.router.control_socket == "" and m.router.dataplane is None
        call: Any = dataplane_pb2_grpc.DataPlaneServiceStub(m.channel).Attach()
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await call.write(dataplane_pb2.AttachRequest(place=dataplane_pb2.PlaceEvent()))
        assert await call.code() == grpc.StatusCode.UNIMPLEMENTED
