"""Instances appear and disappear through the real file registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.router.app import discovery_watchers
from services.router.settings import RouterSettings
from tests.conditions import wait_until_async
from tests.integration.router_harness import HeldStream, mesh, pcm
from tests.streaming import config_request, run_stream
from voxmesh.discovery.file import FileRegistrar

pytestmark = pytest.mark.usefixtures("router_data_path")


async def test_instances_follow_the_file_registry(tmp_path: Path) -> None:
    registry = str(tmp_path / "registry")
    settings = RouterSettings(registry_dir=registry, registry_poll_s=0.05, registry_ttl_s=30.0)
    async with mesh(watcher_for=discovery_watchers(settings)) as m:
        waiting = await HeldStream(m.channel).open(pcm(0.3))
        await wait_until_async(lambda: m.queue().queued_realtime == 1)

        a = await m.add("a", announce=False)
        reg_a = FileRegistrar(registry, heartbeat_interval=0.5)
        await reg_a.register(a.info)
        await wait_until_async(waiting.got_results)  # the queue drained onto the new instance
        assert (await waiting.finish()).instance_id == "a"

        b = await m.add("b", announce=False)
        reg_b = FileRegistrar(registry, heartbeat_interval=0.5)
        await reg_b.register(b.info)
        await m.known("b")

        await reg_a.set_draining()  # a draining record leaves the healthy set
        await wait_until_async(lambda: m.member("a") is None)
        for seed in range(3):
            run = await run_stream(m.channel, pcm(0.2, seed), first=config_request(model="tiny.en"))
            assert run.summary is not None and run.summary.instance_id == "b"

        await reg_b.deregister()
        await wait_until_async(lambda: m.member("b") is None)
        assert m.queue().instances == 0
        assert m.metric("voxmesh_router_instances", pool="asr_small", state="accepting") == 0
        await reg_a.deregister()
