"""``python -m voxmesh.mesh`` as a process, with fake services: whatever signal reaches
the launcher, and whenever, no router, autoscaler or instance outlives it.

The fakes are a ``services`` package written to a temporary directory that comes
first on ``PYTHONPATH``: ``services.router`` and ``services.autoscaler`` print their
ready line and write their pid; the autoscaler can also register one instance per
pool (so that the launcher reports the mesh up), start an instance of its own through
``ServiceProcess`` (like the local scale target), and ignore SIGTERM (a drain that
never ends). No model is loaded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conditions import alive, wait_until

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]

_FAKE = '''
"""A fake voxmesh service for the launcher tests (see tests/e2e/test_mesh_launcher.py)."""
import asyncio, json, os, signal, sys
from pathlib import Path


def flag(name):
    for arg in sys.argv[1:]:
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    return ""


async def serve(role):
    if role == "autoscaler" and os.environ.get("FAKE_INSTANCE"):
        from voxmesh.mesh.process import ServiceProcess
        instance = ServiceProcess("mesh_fake_instance", name="instance")
        await instance.start(ready_timeout=60)
    if role == os.environ.get("FAKE_FAIL_START"):
        print(f"{role}: cannot listen on 127.0.0.1:50051: in use", flush=True)
        sys.exit(2)
    print("VOXMESH_READY " + json.dumps({"port": 1, "metrics_port": 2}), flush=True)
    if role == os.environ.get("FAKE_EXIT_AFTER_READY"):
        sys.exit(3)
    register = os.environ.get("FAKE_REGISTER", "")
    if role == "autoscaler" and register:
        from voxmesh.discovery import InstanceInfo
        from voxmesh.discovery.file import FileRegistrar
        pools = ("asr_small", "asr_large") if register == "1" else register.split(",")
        for pool in pools:
            registrar = FileRegistrar(flag("registry-dir"), heartbeat_interval=1.0)
            await registrar.register(InstanceInfo(f"{pool}-1", pool, "fake", "127.0.0.1", 3))
    await asyncio.Event().wait()


def stopped(role):
    with open(os.environ["FAKE_STOP_LOG"], "a") as log:
        log.write(role + "\\n")
    os._exit(0)


def main(role):
    Path(os.environ["FAKE_PID_DIR"], role).write_text(str(os.getpid()))
    if role in os.environ.get("FAKE_IGNORE_TERM", "").split(","):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    elif os.environ.get("FAKE_STOP_LOG"):
        signal.signal(signal.SIGTERM, lambda *_: stopped(role))
    asyncio.run(serve(role))
'''

_INSTANCE = """
import json, os, time
from pathlib import Path
Path(os.environ["FAKE_PID_DIR"], "instance").write_text(str(os.getpid()))
print("VOXMESH_READY " + json.dumps({"port": 4, "metrics_port": 5}), flush=True)
time.sleep(600)
"""


def write_fakes(directory: Path) -> None:
    """The fake ``services`` package and its helpers, under ``directory``."""
    (directory / "mesh_fake.py").write_text(_FAKE)
    (directory / "mesh_fake_instance.py").write_text(_INSTANCE)
    for role in ("router", "autoscaler"):
        package = directory / "services" / role
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "__main__.py").write_text(f"import mesh_fake\nmesh_fake.main({role!r})\n")
    (directory / "services" / "__init__.py").write_text("")


@dataclass
class Launcher:
    """A running ``python -m voxmesh.mesh`` and what it printed."""

    process: subprocess.Popen[str]
    pid_dir: Path
    lines: list[str] = field(default_factory=list)

    def printed(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def wait_printed(self, text: str) -> None:
        wait_until(lambda: self.printed(text), timeout=60)

    def pids(self) -> dict[str, int]:
        return {p.name: int(p.read_text()) for p in self.pid_dir.iterdir() if p.read_text()}

    def send(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    def wait_exit(self) -> int:
        wait_until(lambda: self.process.poll() is not None, timeout=60)
        return self.process.wait()


Launch = Callable[..., Launcher]
"""Starts a launcher; positional arguments are its flags, keyword arguments environment
variables of the fakes."""


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    """Starts launchers with fakes configured by environment; kills what is left after."""
    fakes = tmp_path / "fakes"
    fakes.mkdir()
    write_fakes(fakes)
    started: list[Launcher] = []

    def start(*flags: str, **fake_env: str) -> Launcher:
        pid_dir = tmp_path / "pids"
        pid_dir.mkdir()
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(fakes), str(ROOT / "src")]),
            "FAKE_PID_DIR": str(pid_dir),
            **fake_env,
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "voxmesh.mesh", f"--run-dir={tmp_path / 'run'}", *flags],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env=env,
            text=True,
        )
        launcher = Launcher(process, pid_dir)
        assert process.stdout is not None
        stdout = process.stdout
        threading.Thread(target=lambda: launcher.lines.extend(stdout), daemon=True).start()
        started.append(launcher)
        return launcher

    yield start
    for launcher in started:
        if launcher.process.poll() is None:
            launcher.process.kill()
            launcher.process.wait()
        for pid in launcher.pids().values():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def assert_all_stopped(launcher: Launcher, roles: set[str]) -> None:
    pids = launcher.pids()
    assert set(pids) == roles
    wait_until(lambda: not any(alive(pid) for pid in pids.values()), timeout=30)


@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda sig: sig.name
)
def test_a_signal_during_start_up_stops_what_started(launch: Launch, sig: signal.Signals) -> None:
    """Before the mesh is up (no instance registered yet) the signal used to kill the
    launcher alone (SIGTERM, SIGHUP): the router and the autoscaler kept running."""
    launcher = launch()
    launcher.wait_printed("the autoscaler starts the ASR instances")
    launcher.send(sig)
    assert launcher.wait_exit() == 1
    assert_all_stopped(launcher, {"router", "autoscaler"})
    assert launcher.printed(f"{sig.name} during start-up: stopping what started")


def test_sighup_drains_a_running_mesh(launch: Launch) -> None:
    launcher = launch(FAKE_REGISTER="1")
    launcher.wait_printed("voxmesh is up")
    launcher.send(signal.SIGHUP)
    assert launcher.wait_exit() == 0
    assert_all_stopped(launcher, {"router", "autoscaler"})


def test_a_third_signal_kills_services_that_do_not_stop(launch: Launch) -> None:
    """Neither SIGTERM (drain) nor the second one (stop at once) ends them: the third
    Ctrl-C used to kill the launcher alone and leave both running."""
    launcher = launch(FAKE_REGISTER="1", FAKE_IGNORE_TERM="router,autoscaler")
    launcher.wait_printed("voxmesh is up")
    launcher.send(signal.SIGINT)
    launcher.wait_printed("draining")
    launcher.send(signal.SIGINT)
    launcher.wait_printed("stopping at once")
    launcher.send(signal.SIGINT)
    assert launcher.wait_exit() == 0
    assert launcher.printed("killing")
    assert_all_stopped(launcher, {"router", "autoscaler"})


def test_services_and_their_instances_die_with_a_killed_launcher(launch: Launch) -> None:
    """SIGKILL runs no handler: the kernel SIGTERMs the launcher's children, and the
    autoscaler's death in turn its own instance (as the local scale target starts them)."""
    launcher = launch(FAKE_REGISTER="1", FAKE_INSTANCE="1")
    launcher.wait_printed("voxmesh is up")
    launcher.send(signal.SIGKILL)
    assert launcher.wait_exit() == -signal.SIGKILL
    assert_all_stopped(launcher, {"router", "autoscaler", "instance"})


def test_the_router_drains_before_the_autoscaler(launch: Launch, tmp_path: Path) -> None:
    """The autoscaler used to go first: its instances drained while the router still
    admitted streams, into a queue no instance would take from."""
    stops = tmp_path / "stops"
    launcher = launch(FAKE_REGISTER="1", FAKE_STOP_LOG=str(stops))
    launcher.wait_printed("voxmesh is up")
    launcher.send(signal.SIGINT)
    assert launcher.wait_exit() == 0
    assert stops.read_text().split() == ["router", "autoscaler"]


@pytest.mark.parametrize("role", ["router", "autoscaler"])
def test_a_service_that_dies_stops_the_mesh(launch: Launch, role: str) -> None:
    """The launcher used to watch for signals alone: with its router or autoscaler dead
    it kept running, silent, and exited 0 on the Ctrl-C that followed."""
    launcher = launch(FAKE_REGISTER="1")
    launcher.wait_printed("voxmesh is up")
    os.kill(launcher.pids()[role], signal.SIGKILL)
    assert launcher.wait_exit() == 1
    assert launcher.printed(f"error: {role} exited with code -9: stopping the mesh")
    assert_all_stopped(launcher, {"router", "autoscaler"})


def test_an_autoscaler_that_exits_before_instances_register_fails_start_up(
    launch: Launch,
) -> None:
    launcher = launch(FAKE_EXIT_AFTER_READY="autoscaler")
    assert launcher.wait_exit() == 1
    assert launcher.printed("error: autoscaler exited with code 3: stopping the mesh")
    assert not launcher.printed("voxmesh is up")
    assert_all_stopped(launcher, {"router", "autoscaler"})


def test_a_failed_start_says_why_without_a_traceback(launch: Launch) -> None:
    """It used to end in a traceback; the reason was only in the log, among earlier runs."""
    launcher = launch(FAKE_FAIL_START="router")
    assert launcher.wait_exit() == 1
    assert launcher.printed("error: router exited with code 2 before it was ready")
    assert launcher.printed("| router: cannot listen on 127.0.0.1:50051: in use")
    assert not launcher.printed("Traceback")
    assert_all_stopped(launcher, {"router"})


def test_a_pool_without_an_instance_is_named(launch: Launch) -> None:
    """It used to say the mesh was up, after the whole wait, without a word of it."""
    launcher = launch("--instances-timeout=1", FAKE_REGISTER="asr_small")
    launcher.wait_printed("voxmesh is up")
    assert launcher.printed("warning: no asr_large instance registered within 1 s")
    assert not launcher.printed("no asr_small")
    launcher.send(signal.SIGINT)
    assert launcher.wait_exit() == 0


def test_an_asr_arg_with_a_comma_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """The autoscaler gets the flags as one comma-separated setting: a comma inside one
    split it, and every instance it started exited on the stray argument."""
    from voxmesh.mesh.local import main

    with pytest.raises(SystemExit) as exited:
        main(["--asr-arg=--model=/models/whisper,v2"])
    assert exited.value.code == 2
    assert "--asr-arg cannot contain a comma" in capsys.readouterr().err
