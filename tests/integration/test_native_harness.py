"""The Go harness of bench/router_overhead.py (bench/native) against its Python originals:
the load generator's JSON line, the fake backend's stream, registry record and drain, and
the router in front of it; and bench/router_setup.py's floor (the Go data path in front of
bench/control_floor.py). Skipped until ``make bench-native`` has built it."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench.harness import NATIVE_BINARIES, ROOT, harness_env
from services.router.settings import DEFAULT_DATAPLANE_BIN
from voxmesh.discovery.file import read_record

pytestmark = pytest.mark.skipif(
    not all(p.exists() for p in NATIVE_BINARIES.values()),
    reason="the native benchmark harness is not built: make bench-native (needs Go)",
)

LOADGEN = str(NATIVE_BINARIES["loadgen"])
BACKEND = str(NATIVE_BINARIES["backend"])
SHORT_RUN = ["--ramp", "0", "--warmup", "0", "--duration", "0.5"]


@dataclass
class Child:
    """A child process and the port it printed (0 when its ready line names none)."""

    process: asyncio.subprocess.Process
    port: int


@asynccontextmanager
async def child(args: list[str], pattern: str, log: Path) -> AsyncIterator[Child]:
    """Runs ``args`` until the block ends; yields once it printed its ready line
    (``pattern``, whose first group, when it has one, is the port)."""
    with log.open("wb") as err:
        process = await asyncio.create_subprocess_exec(
            *args, cwd=ROOT, env=harness_env(), stdout=asyncio.subprocess.PIPE, stderr=err
        )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(30):
            while not (match := re.search(pattern, (await process.stdout.readline()).decode())):
                if process.stdout.at_eof():
                    tail = (await asyncio.to_thread(log.read_text))[-2000:]
                    raise AssertionError(f"{args[0]} exited: {tail}")
        yield Child(process, int(match.group(1)) if match.groups() else 0)
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


def backend(registry: Path, log: Path) -> AbstractAsyncContextManager[Child]:
    """The Go fake backend as bench/router_overhead.py starts it."""
    args = [BACKEND, "--port", "0", "--instance-id", "native-1", "--max-streams", "100",
            "--utterance-ms", "100000000", "--interim-every", "1",
            "--registry-dir", str(registry)]  # fmt: skip
    return child(args, r"^PORT (\d+)", log)


async def load(command: list[str], target: str, *flags: str) -> tuple[list[str], dict[str, Any]]:
    """Runs a load generator to its end; returns its phase lines and its JSON figures."""
    process = await asyncio.create_subprocess_exec(
        *command,
        "--target",
        target,
        *flags,
        cwd=ROOT,
        env=harness_env(),
        stdout=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, _ = await process.communicate()
    assert process.returncode == 0
    *phases, line = out.decode().splitlines()
    return phases, json.loads(line)


def shape(value: object) -> object:
    """The keys of a JSON value, nested; ``stream_errors`` keys are data, not shape."""
    if isinstance(value, dict):
        return {k: None if k == "stream_errors" else shape(v) for k, v in value.items()}
    return None


async def test_go_loadgen_runs_one_stream_against_the_go_backend(tmp_path: Path) -> None:
    async with backend(tmp_path / "registry", tmp_path / "backend.log") as fake:
        phases, figures = await load(
            [LOADGEN], f"127.0.0.1:{fake.port}", "--streams", "1", "--channels", "1", *SHORT_RUN
        )
    assert phases == ["phase measure", "phase done"]
    assert figures["streams_ok"] == 1
    assert figures["stream_errors"] == {}
    assert figures["responses_timed"] > 0
    assert figures["loadgen_cpu_s"] > 0


async def test_go_loadgen_writes_the_keys_of_the_python_one(tmp_path: Path) -> None:
    async with backend(tmp_path / "registry", tmp_path / "backend.log") as fake:
        target = f"127.0.0.1:{fake.port}"
        flags = ["--streams", "1", "--channels", "1", *SHORT_RUN]
        _, go = await load([LOADGEN], target, *flags)
        _, python = await load([sys.executable, "-m", "bench.loadgen"], target, *flags)
    assert list(go) == list(python)
    assert shape(go) == shape(python)
    assert go["streams_ok"] == python["streams_ok"] == 1


async def test_go_backend_registers_then_drains_and_deregisters_on_sigterm(
    tmp_path: Path,
) -> None:
    registry = tmp_path / "registry"
    async with backend(registry, tmp_path / "backend.log") as fake:
        info, heartbeat = read_record(registry / "native-1.json")
        assert (info.pool, info.port, info.max_streams, info.draining) == (
            "asr_small",
            fake.port,
            100,
            False,
        )
        assert heartbeat > 0
        fake.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            assert await fake.process.wait() == 0
    assert not list(registry.glob("*.json"))


async def test_the_router_relays_go_streams_to_the_go_backend(tmp_path: Path) -> None:
    """The router discovers the Go backend, follows its telemetry and health, and relays
    whole streams to it (the closing final and summary included)."""
    registry = tmp_path / "registry"
    router_args = [sys.executable, "-m", "services.router", "--port", "0",
                   "--metrics-port", "-1", "--registry-dir", str(registry),
                   "--registry-poll-s", "0.05", "--log-level", "WARNING"]  # fmt: skip
    async with (
        backend(registry, tmp_path / "backend.log"),
        child(router_args, r"^VOXMESH_READY .*\"port\": (\d+)", tmp_path / "router.log") as router,
    ):
        target = f"127.0.0.1:{router.port}"
        probe = ["--streams", "1", "--channels", "1", "--duration", "0.1", "--ramp", "0",
                 "--warmup", "0"]  # fmt: skip
        async with asyncio.timeout(20):  # until the router has discovered the backend
            while (await load([LOADGEN], target, *probe))[1]["streams_ok"] != 1:
                pass
        _, figures = await load([LOADGEN], target, "--streams", "3", "--channels", "2", *SHORT_RUN)
    assert figures["streams_ok"] == 3, figures["stream_errors"]
    assert figures["responses_timed"] > 0


async def test_the_control_floor_places_every_stream_on_the_go_backend(tmp_path: Path) -> None:
    """bench/router_setup.py's floor: the Go data path in front of a control plane that
    decides nothing relays whole streams to the backend, none refused."""
    sock = tmp_path / "floor.sock"
    async with backend(tmp_path / "registry", tmp_path / "backend.log") as fake:
        floor_args = [sys.executable, "-m", "bench.control_floor", "--socket", str(sock),
                      "--backend", f"127.0.0.1:{fake.port}"]  # fmt: skip
        data_path_args = [DEFAULT_DATAPLANE_BIN, "--listen", "127.0.0.1:0",
                          "--control", f"unix:{sock}", "--forward", f"unix:{sock}"]  # fmt: skip
        async with (
            child(floor_args, r"^READY$", tmp_path / "control_floor.log"),
            child(data_path_args, r"^PORT (\d+)", tmp_path / "data_path.log") as data_path,
        ):
            target = f"127.0.0.1:{data_path.port}"
            _, figures = await load(
                [LOADGEN], target, "--streams", "3", "--channels", "2", *SHORT_RUN
            )
    assert figures["streams_ok"] == 3, figures["stream_errors"]
    assert figures["responses_timed"] > 0
    assert figures["first_response_ms"]["p50"] > 0
