"""Every service's entry point refuses bad settings with one line and exit code 2,
before it binds a port or loads a model."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.autoscaler.__main__ import main as autoscaler_main
from services.router.__main__ import main as router_main
from voxmesh.asr.app import main as asr_main


def test_the_router_refuses_bad_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert router_main(["--queue-max-wait-s", "-1"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: setting queue_max_wait_s=-1.0: must be positive"
    )
    assert router_main(["--last-resort", "maybe"]) == 2
    assert "--last-resort='maybe'" in capsys.readouterr().err


def test_the_autoscaler_refuses_bad_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert autoscaler_main(["--target", "nomadx"]) == 2
    assert capsys.readouterr().err.startswith("error: setting target='nomadx'")


def test_an_asr_instance_refuses_bad_settings(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--host", "0.0.0.0", "--discovery", "consul"]
    assert asr_main({"pool": "asr_small", "model": "tiny.en"}, argv, env={}) == 2
    assert "advertise_host is required" in capsys.readouterr().err


def test_the_router_refuses_a_native_data_path_it_cannot_find(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "voxmesh-dataplane"
    assert router_main(["--data-path", "native", "--dataplane-bin", str(missing)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: setting dataplane_bin='{missing}': no executable there, and "
        "data_path=native runs the native data path from it: build it with `make dataplane`"
    )
    assert router_main(["--data-path", "go"]) == 2
    assert "setting data_path='go': expected python or native" in capsys.readouterr().err


def test_every_service_refuses_a_consul_address_it_cannot_use(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Read loosely, such an address was the local agent, or "unavailable" for ever."""
    bad = "consul://10.0.0.5:8500"
    why = "scheme 'consul' is not http or https"
    argv = ["--discovery", "consul", "--advertise-host", "10.0.0.9", "--consul-addr", bad]
    assert asr_main({"pool": "asr_small", "model": "tiny.en"}, argv, env={}) == 2
    assert capsys.readouterr().err.strip() == f"error: setting consul_addr={bad!r}: {why}"
    router_argv = ["--data-path", "python", "--discovery", "consul", "--consul-address"]
    assert router_main([*router_argv, "http://:8500"]) == 2
    assert "error: setting consul_address='http://:8500': names no host" in (
        capsys.readouterr().err
    )
    assert autoscaler_main(["--discovery", "consul", "--consul-addr", bad, "--port", "0"]) == 2
    assert capsys.readouterr().err.strip() == f"error: setting consul_addr={bad!r}: {why}"
