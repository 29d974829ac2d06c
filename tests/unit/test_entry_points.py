"""Every service's entry point refuses bad settings with one line and exit code 2,
before it binds a port or loads a model."""

from __future__ import annotations

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
