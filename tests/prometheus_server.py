"""A real Prometheus server (Debian package, or a build in .tools/bin) for tests, and
metrics endpoints for it to scrape. Every wait has a deadline."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

from tests.conditions import wait_until

__all__ = ["Endpoint", "binary", "free_port", "running", "serving"]

REPO = Path(__file__).resolve().parents[1]


def binary(name: str) -> str | None:
    """``.tools/bin/<name>`` (a build from source) if present, else the Debian package's."""
    built = REPO / ".tools" / "bin" / name
    if built.exists():
        return str(built)
    return shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Endpoint:
    """A metrics HTTP endpoint of one registry."""

    server: Any
    port: int
    stopped: bool = False

    def stop(self) -> None:
        """Stops serving (a test may stop it early: later calls do nothing)."""
        if not self.stopped:
            self.stopped = True
            self.server.shutdown()
            self.server.server_close()


@contextlib.contextmanager
def serving(registry: CollectorRegistry) -> Iterator[Endpoint]:
    """``registry`` served over HTTP on a free port while the block runs."""
    server, _thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    endpoint = Endpoint(server, int(server.server_port))
    try:
        yield endpoint
    finally:
        endpoint.stop()


@contextlib.contextmanager
def running(prometheus: str, config: Path, folder: Path) -> Iterator[str]:
    """Prometheus on the ``config`` file, storing in ``folder``, until ready; yields its URL."""
    port = free_port()
    with (folder / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(
            [
                prometheus,
                f"--config.file={config}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _ready(url) or process.poll() is not None, timeout=15, interval=0.05)
        assert process.poll() is None, (folder / "prometheus.log").read_text()
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False
