"""The shared gRPC server bootstrap on real sockets: a port that cannot be bound is a
settings error naming the setting and the address, and every entry point says so in
one line (exit code 2) instead of a traceback."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from services.autoscaler.__main__ import main as autoscaler_main
from services.router.__main__ import main as router_main
from voxmesh.asr import app as asr_app
from voxmesh.asr.settings import AsrSettings
from voxmesh.errors import SettingsError
from voxmesh.rpc.server import ServerOptions, ServiceServer


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A TCP port on 127.0.0.1 another socket listens on for the whole test."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


async def test_a_busy_grpc_port_is_a_settings_error(busy_port: int) -> None:
    server = ServiceServer(ServerOptions(port=busy_port, metrics_port=None), CollectorRegistry())
    with pytest.raises(SettingsError) as raised:
        await server.start()
    assert str(raised.value).startswith(
        f"setting port={busy_port}: cannot listen on 127.0.0.1:{busy_port}: "
    )


async def test_a_busy_metrics_port_is_a_settings_error_and_leaves_nothing_serving(
    busy_port: int,
) -> None:
    server = ServiceServer(ServerOptions(port=0, metrics_port=busy_port), CollectorRegistry())
    with pytest.raises(SettingsError, match=rf"^setting metrics_port={busy_port}: .*in use"):
        await server.start()
    assert server.metrics_port == 0
    await server.stop(0)  # an unstarted server stops without error


async def test_an_ipv6_host_is_bracketed_for_grpc() -> None:
    """``::1`` is a host, not ``host:port``: grpcio needs ``[::1]:0``."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    server = ServiceServer(ServerOptions(host="::1", port=0), CollectorRegistry())
    await server.start()
    try:
        assert server.port > 0 and server.metrics_port > 0
    finally:
        await server.stop(0)


def test_the_router_reports_a_busy_port_in_one_line(
    busy_port: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [f"--port={busy_port}", "--metrics-port=-1", f"--registry-dir={tmp_path}"]
    assert router_main(argv) == 2
    err = capsys.readouterr().err
    assert f"error: setting port={busy_port}: cannot listen on 127.0.0.1:{busy_port}" in err
    assert "Traceback" not in err


def test_the_autoscaler_reports_a_busy_port_in_one_line(
    busy_port: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        f"--port={busy_port}",
        "--metrics-port=-1",
        f"--registry-dir={tmp_path / 'registry'}",
        f"--leader-file={tmp_path / 'leader'}",
        f"--local-log-dir={tmp_path / 'logs'}",
    ]
    assert autoscaler_main(argv) == 2
    err = capsys.readouterr().err
    assert f"error: setting port={busy_port}: cannot listen on 127.0.0.1:{busy_port}" in err
    assert "Traceback" not in err


def test_an_asr_instance_reports_a_busy_port_in_one_line(
    busy_port: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The ASR entry point around a server that binds what the settings say (no model)."""

    async def bind_only(settings: AsrSettings) -> int:
        options = ServerOptions(host=settings.host, port=settings.port, metrics_port=None)
        await ServiceServer(options, CollectorRegistry()).start()
        return 0

    monkeypatch.setattr(asr_app, "serve", bind_only)
    defaults = {"pool": "asr_small", "model": "tiny.en"}
    assert asr_app.main(defaults, [f"--port={busy_port}"], env={}) == 2
    err = capsys.readouterr().err
    assert f"error: setting port={busy_port}: cannot listen on 127.0.0.1:{busy_port}" in err
    assert "Traceback" not in err
