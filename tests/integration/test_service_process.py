"""``ServiceProcess`` with real child processes (small Python scripts, no model): output
of any shape, and children that die with the process that started them."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conditions import alive, wait_until, wait_until_async
from voxmesh.mesh.process import ServiceProcess

ROOT = Path(__file__).resolve().parents[2]


def write_module(directory: Path, name: str, source: str) -> None:
    (directory / f"{name}.py").write_text(textwrap.dedent(source))


async def test_overlong_lines_go_to_the_log_and_never_block_the_child(tmp_path: Path) -> None:
    """A line longer than the stream limit (64 KiB) made the output copy raise: the child
    then blocked on its next write, and terminate() raised the copy's ValueError."""
    write_module(
        tmp_path,
        "chatty",
        """
        import json, time
        print("x" * 65_530)  # the ready line straddles the first 64 KiB read
        print("VOXMESH_READY " + json.dumps({"port": 7, "metrics_port": 8}), flush=True)
        print("y" * 300_000, flush=True)
        for n in range(2_000):  # 200 KB more: far beyond a pipe's buffer
            print("z" * 100)
        print("all written", flush=True)
        time.sleep(600)
        """,
    )
    log = tmp_path / "chatty.log"
    proc = ServiceProcess("chatty", env={"PYTHONPATH": str(tmp_path)}, log_path=log)
    await proc.start(ready_timeout=30)
    try:
        assert proc.port == 7
        await wait_until_async(lambda: b"all written\n" in log.read_bytes(), timeout=30)
    finally:
        code = await proc.terminate(timeout=10)
    assert code == -signal.SIGTERM
    header, *lines = log.read_bytes().splitlines()
    assert header.startswith(b"--- chatty (pid ")  # where this run starts in the log
    assert lines[0] == b"x" * 65_530 and lines[2] == b"y" * 300_000
    assert lines[3:-1] == [b"z" * 100] * 2_000


async def test_a_child_that_exits_before_it_is_ready_is_reported_with_its_code(
    tmp_path: Path,
) -> None:
    """It used to read "did not become ready within 120 s" the moment the child died."""
    write_module(tmp_path, "quitter", "raise SystemExit(3)\n")
    proc = ServiceProcess("quitter", env={"PYTHONPATH": str(tmp_path)})
    with pytest.raises(RuntimeError, match=r"^quitter exited with code 3 before it was ready$"):
        await proc.start(ready_timeout=30)


async def test_whatever_ended_the_output_copy_terminate_stops_the_child(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """terminate() used to re-raise the output copy's error, and the launcher's stop
    sequence ended there: the processes after this one were never stopped."""
    write_module(
        tmp_path,
        "quiet",
        """
        import json, time
        print("VOXMESH_READY " + json.dumps({"port": 7}), flush=True)
        time.sleep(600)
        """,
    )
    proc = ServiceProcess("quiet", env={"PYTHONPATH": str(tmp_path)})
    await proc.start(ready_timeout=30)
    assert proc._pump is not None
    proc._pump.cancel()

    async def failed_copy() -> None:
        raise ValueError("Separator is found, but chunk is longer than limit")

    proc._pump = asyncio.create_task(failed_copy())
    with caplog.at_level(logging.WARNING, logger="voxmesh.mesh.process"):
        assert await proc.terminate(timeout=10) == -signal.SIGTERM
    assert not proc.running
    assert "quiet: copying its output failed: ValueError" in caplog.text


_PARENT = """
import asyncio, sys
from voxmesh.mesh.process import ServiceProcess

async def main():
    child = ServiceProcess("sleeper")
    await child.start(ready_timeout=30)
    print(child.pid, flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""


def test_a_child_gets_sigterm_when_its_parent_is_killed(tmp_path: Path) -> None:
    """SIGKILL runs no handler of the parent; the kernel signals the child instead
    (Linux ``PR_SET_PDEATHSIG``). Its own session no longer lets it outlive the parent."""
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux only")
    write_module(
        tmp_path,
        "sleeper",
        """
        import json, time
        print("VOXMESH_READY " + json.dumps({"port": 7}), flush=True)
        time.sleep(600)
        """,
    )
    path = os.pathsep.join([str(tmp_path), str(ROOT / "src")])
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": path},
        cwd=tmp_path,
        text=True,
    )
    child = 0
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert alive(child)
        parent.kill()
        parent.wait(timeout=10)
        wait_until(lambda: not alive(child), timeout=10)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if child and alive(child):
            os.kill(child, signal.SIGKILL)
