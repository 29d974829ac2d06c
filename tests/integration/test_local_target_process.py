"""The local scale target with real processes of a stub module (no ASR model).

The stub stands in for an instance that loads a model: it marks its start with a file
named after its pid, takes ``READY_AFTER`` seconds to print its ready line, then serves
until SIGTERM.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from services.autoscaler.targets.base import CapacityClass
from services.autoscaler.targets.local import LocalGroup, LocalTarget, ManagedProcess
from tests.conditions import alive, wait_until_async
from voxmesh.mesh.process import ServiceProcess

OD = "asr_small/on-demand"
STUB = """\
import json, os, signal, time
open(os.path.join(os.environ["MARKER_DIR"], f"started-{os.getpid()}"), "w").close()
time.sleep(float(os.environ["READY_AFTER"]))
print("VOXMESH_READY " + json.dumps({"port": 1}), flush=True)
signal.sigwait({signal.SIGTERM})
"""


def stub_target(tmp_path: Path, ready_after_s: float) -> tuple[LocalTarget, Path]:
    """A target whose instances run the stub; the folder where they mark their start."""
    (tmp_path / "voxmesh_stub_instance.py").write_text(STUB)
    markers = tmp_path / "started"
    markers.mkdir()
    env = {
        "PYTHONPATH": str(tmp_path),
        "MARKER_DIR": str(markers),
        "READY_AFTER": f"{ready_after_s:g}",
    }

    def spawn(group: LocalGroup, instance_id: str) -> ManagedProcess:
        del group
        return ServiceProcess("voxmesh_stub_instance", env=env, name=instance_id)

    target = LocalTarget(
        [LocalGroup("asr_small", CapacityClass.ON_DEMAND)],
        spawn,
        drain_timeout_s=1.0,
        kill_grace_s=1.0,
        ready_timeout_s=60.0,
    )
    return target, markers


async def test_a_shutdown_right_after_a_scale_up_starts_no_process(tmp_path: Path) -> None:
    target, markers = stub_target(tmp_path, ready_after_s=30.0)
    try:
        await target.scale(OD, 1, "up")
        # In this task, not one of its own (wait_for): the instance's start must not run
        # first. The bound is well below the stub's 30 s start-up.
        async with asyncio.timeout(10):
            await target.shutdown()
        assert list(markers.iterdir()) == [], "a cancelled instance was started"
    finally:
        await target.kill_all()


async def test_an_instance_cancelled_while_starting_is_killed_at_once(tmp_path: Path) -> None:
    target, markers = stub_target(tmp_path, ready_after_s=30.0)
    try:
        await target.scale(OD, 1, "up")
        await wait_until_async(lambda: any(markers.iterdir()), 10)  # running, not ready
        (marker,) = markers.iterdir()
        pid = int(marker.name.removeprefix("started-"))
        assert alive(pid) and (await target.status())[OD].pending == 1
        await target.scale(OD, 0, "idle")
        await asyncio.wait_for(target.shutdown(), 10)
        assert not alive(pid)
        status = (await target.status())[OD]
        assert (status.placed, status.placement_failing) == (0, False)
    finally:
        await target.kill_all()
