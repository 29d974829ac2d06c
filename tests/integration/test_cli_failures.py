"""The ``voxmesh`` CLI when things go wrong: a server that never answers, Ctrl-C while a
long file is being decoded."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conditions import wait_until
from voxmesh.client import RecognizerClient
from voxmesh.client.cli import main
from voxmesh.errors import DeadlineExceeded

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def silent_server() -> Iterator[str]:
    """``host:port`` of a TCP server that accepts connections and never says a word."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        accepted: list[socket.socket] = []

        def accept() -> None:
            while True:
                try:
                    accepted.append(listener.accept()[0])
                except OSError:  # the listener closed: the test is over
                    return

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        host, port = listener.getsockname()
        yield f"{host}:{port}"
        listener.shutdown(socket.SHUT_RDWR)
    thread.join(timeout=5)
    for conn in accepted:
        conn.close()


async def test_telemetry_times_out_with_a_domain_error(silent_server: str) -> None:
    async with RecognizerClient(silent_server) as client:
        with pytest.raises(DeadlineExceeded, match=rf"^no telemetry from {silent_server} within"):
            await client.telemetry(timeout_s=0.3)


def test_status_names_the_target_and_the_wait_when_no_snapshot_comes(
    silent_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A timeout is an OSError too; it used to be printed as ``error: None: None``."""
    assert main(["status", "--target", silent_server, "--timeout", "0.3"]) == 1
    assert capsys.readouterr().err == f"error: no telemetry from {silent_server} within 0.3 s\n"


_SLOW_DECODE = textwrap.dedent(
    """
    import signal, sys, time
    import voxmesh.client.cli as cli

    # Ctrl-C as in a terminal, even when the tests run from a background job
    # (whose shell ignores SIGINT, and a child inherits that).
    signal.signal(signal.SIGINT, signal.default_int_handler)

    def slow_decode(path, rate, *rest):
        print("decoding", flush=True)
        for _frame in range(6000):  # a minute of frames, like a long recording
            time.sleep(0.01)
        return b""

    cli.decode_file = slow_decode
    sys.exit(cli.main(["transcribe", "long.wav", "--target", "127.0.0.1:1"]))
    """
)


def test_ctrl_c_while_decoding_stops_at_once() -> None:
    """Decoding in a worker thread could not be cancelled: Ctrl-C waited for the file."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")])}
    child = subprocess.Popen(
        [sys.executable, "-c", _SLOW_DECODE],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "decoding\n"
        interrupted = time.monotonic()
        child.send_signal(signal.SIGINT)
        wait_until(lambda: child.poll() is not None, timeout=5.0)
        assert time.monotonic() - interrupted < 5.0
        _out, err = child.communicate(timeout=5)
        assert child.returncode == 130  # 128 + SIGINT, as for any program Ctrl-C ends
        assert err.strip().splitlines()[-1] == "interrupted"
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
