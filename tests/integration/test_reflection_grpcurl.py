"""A real third-party client, grpcurl, talks to an instance through server
reflection: the services are discoverable and callable without our stubs."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.asr_server import AsrServerThread

pytestmark = pytest.mark.model

GRPCURL = Path(__file__).resolve().parents[2] / ".tools" / "bin" / "grpcurl"


@pytest.fixture(scope="module")
def grpcurl() -> str:
    path = str(GRPCURL) if GRPCURL.exists() else shutil.which("grpcurl")
    if path is None:
        pytest.fail("grpcurl is not installed: run `make install` (it installs it with go install)")
    return path


@pytest.fixture(scope="module")
def server() -> Iterator[AsrServerThread]:
    with AsrServerThread() as srv:
        yield srv


def _run(grpcurl: str, *args: str, deadline_ok: bool = False) -> str:
    out = subprocess.run(
        [grpcurl, "-plaintext", *args], capture_output=True, text=True, timeout=30, check=False
    )
    if deadline_ok and "DeadlineExceeded" in out.stderr:
        return out.stdout  # a server stream cut by grpcurl's -max-time, as asked
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_services_are_listed_and_described(grpcurl: str, server: AsrServerThread) -> None:
    listed = _run(grpcurl, server.target, "list").split()
    for name in (
        "voxmesh.stt.v1.RecognizerService",
        "voxmesh.stt.v1.TelemetryService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ):
        assert name in listed
    described = _run(grpcurl, server.target, "describe", "voxmesh.stt.v1.RecognizerService")
    request = ".voxmesh.stt.v1.StreamingRecognizeRequest"
    assert f"rpc StreamingRecognize ( stream {request} )" in described


def test_health_and_telemetry_answer_grpcurl(grpcurl: str, server: AsrServerThread) -> None:
    health = json.loads(_run(grpcurl, server.target, "grpc.health.v1.Health/Check"))
    assert health["status"] == "SERVING"
    out = _run(
        grpcurl,
        "-max-time",
        "3",
        "-d",
        '{"interval": "0.2s"}',
        server.target,
        "voxmesh.stt.v1.TelemetryService/WatchTelemetry",
        deadline_ok=True,
    ).strip()
    first = json.loads(out.split("\n}\n")[0] + "\n}")
    assert first["snapshot"]["pool"] == "asr_small"
    assert first["snapshot"]["role"] == "ROLE_ASR"
