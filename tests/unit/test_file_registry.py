"""The file registry (single-machine discovery): records, heartbeats, TTL, file_sd."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conditions import wait_until_async
from voxmesh.discovery.base import CAPACITY_PREEMPTIBLE, InstanceInfo
from voxmesh.discovery.consul import service_definition
from voxmesh.discovery.file import FileRegistrar, FileWatcher


class Clock:
    """A settable wall clock."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def info(
    instance_id: str = "asr-1", pool: str = "asr_small", metrics_port: int = 9100
) -> InstanceInfo:
    return InstanceInfo(
        instance_id=instance_id,
        pool=pool,
        model="tiny.en",
        address="127.0.0.1",
        port=50051,
        metrics_port=metrics_port,
        max_streams=4,
        gpu_type="H100",
        meta={"zone": "a"},
    )


def hidden_files(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.name.startswith(".")]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def registrars(tmp_path: Path, clock: Clock) -> AsyncIterator[list[FileRegistrar]]:
    """Registrars created by a test; all deregistered at teardown."""
    created: list[FileRegistrar] = []
    yield created
    for registrar in created:
        await registrar.deregister()


def new_registrar(
    registrars: list[FileRegistrar], directory: Path, clock: Clock, interval: float = 3600.0
) -> FileRegistrar:
    registrar = FileRegistrar(directory, heartbeat_interval=interval, clock=clock)
    registrars.append(registrar)
    return registrar


async def test_register_writes_record_and_file_sd(
    tmp_path: Path, clock: Clock, registrars: list[FileRegistrar]
) -> None:
    me = info()
    await new_registrar(registrars, tmp_path, clock).register(me)

    record = json.loads((tmp_path / "asr-1.json").read_text())
    assert record["heartbeat_unix"] == clock.now
    assert record["instance_id"] == "asr-1" and record["port"] == 50051
    assert record["draining"] is False and record["meta"] == {"zone": "a"}
    file_sd = json.loads((tmp_path / "file_sd" / "asr-1.json").read_text())
    assert file_sd == [
        {
            "targets": ["127.0.0.1:9100"],
            "labels": {
                "service": "voxmesh-asr-small",
                "pool": "asr_small",
                "model": "tiny.en",
                "instance_id": "asr-1",
                "capacity_class": "on-demand",
                "gpu_type": "H100",
                "region": "local",
            },
        }
    ]
    assert FileWatcher(tmp_path, "asr_small", clock=clock).scan() == [me]
    assert not hidden_files(tmp_path), "temp file left behind"


async def test_file_sd_labels_are_the_consul_meta_prometheus_relabels(
    tmp_path: Path, clock: Clock, registrars: list[FileRegistrar]
) -> None:
    """Both deployments label a target alike: file_sd here, Consul meta relabelled there."""
    me = dataclasses.replace(
        info(pool="asr_large"), capacity_class=CAPACITY_PREEMPTIBLE, region="eu-west-1"
    )
    await new_registrar(registrars, tmp_path, clock).register(me)

    (target,) = json.loads((tmp_path / "file_sd" / "asr-1.json").read_text())
    labels = target["labels"]
    definition = service_definition(
        me, check_interval="5s", check_timeout="2s", deregister_after="1m"
    )
    assert labels.pop("service") == definition.name == "voxmesh-asr-large"
    assert labels == {key: definition.meta[key] for key in labels}
    assert labels == {
        "pool": "asr_large",
        "model": "tiny.en",
        "instance_id": "asr-1",
        "capacity_class": "preemptible",
        "gpu_type": "H100",
        "region": "eu-west-1",
    }


async def test_no_file_sd_target_without_metrics_port(
    tmp_path: Path, clock: Clock, registrars: list[FileRegistrar]
) -> None:
    await new_registrar(registrars, tmp_path, clock).register(info(metrics_port=0))
    assert (tmp_path / "asr-1.json").exists()
    assert not (tmp_path / "file_sd" / "asr-1.json").exists()


async def test_heartbeat_refreshes_record(
    tmp_path: Path, clock: Clock, registrars: list[FileRegistrar]
) -> None:
    await new_registrar(registrars, tmp_path, clock, interval=0.01).register(info())
    clock.now += 7.0

    def heartbeat() -> float:
        return float(json.loads((tmp_path / "asr-1.json").read_text())["heartbeat_unix"])

    await wait_until_async(lambda: heartbeat() == clock.now)


async def test_stale_heartbeat_drops_out_after_ttl(
    tmp_path: Path, clock: Clock, registrars: list[FileRegistrar]
) -> None:
    """A crashed instance leaves its file behind but stops refreshing it."""
    await new_registrar(registrars, tmp_path, clock).register(info())
    watcher = FileWatcher(tmp_path, "asr_small", ttl=10.0, clock=clock)
    clock.now += 10.0
    assert [i.instance_id for i in watcher.scan()] == ["asr-1"]
    clock.now += 0.5
    assert watcher.scan() == []


async def test_draining_instance_is_not_yielded(
    tmp_path: Path, clock: Clock, registrars: list[FileRegistrar]
) -> None:
    registrar = new_registrar(registrars, tmp_path, clock)
    await registrar.register(info())
    await registrar.set_draining()
    assert json.loads((tmp_path / "asr-1.json").read_text())["draining"] is True
    assert FileWatcher(tmp_path, "asr_small", clock=clock).scan() == []


async def test_deregister_removes_files_and_is_idempotent(
    tmp_path: Path, clock: Clock, registrars: list[FileRegistrar]
) -> None:
    registrar = new_registrar(registrars, tmp_path, clock, interval=0.01)
    await registrar.deregister()  # before register: nothing to do
    await registrar.register(info())
    await registrar.deregister()
    await registrar.deregister()
    assert not (tmp_path / "asr-1.json").exists()
    assert not (tmp_path / "file_sd" / "asr-1.json").exists()


async def test_other_pools_and_corrupt_files_are_skipped(
    tmp_path: Path, clock: Clock, registrars: list[FileRegistrar], caplog: pytest.LogCaptureFixture
) -> None:
    await new_registrar(registrars, tmp_path, clock).register(info("good"))
    await new_registrar(registrars, tmp_path, clock).register(info("big", pool="asr_large"))
    (tmp_path / "garbage.json").write_text("{not json")
    (tmp_path / "partial.json").write_text('{"instance_id": "p", "pool": "asr_sm')
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "nofields.json").write_text('{"instance_id": "x", "heartbeat_unix": 1}')
    (tmp_path / "noheartbeat.json").write_text(json.dumps({"instance_id": "y"}))
    (tmp_path / ".in-progress.json.tmp").write_text("{")
    watcher = FileWatcher(tmp_path, "asr_small", clock=clock)

    with caplog.at_level(logging.WARNING, logger="voxmesh.discovery.file"):
        assert [i.instance_id for i in watcher.scan()] == ["good"]
        first = len(caplog.records)
        watcher.scan()
    assert first == 5
    assert len(caplog.records) == first, "a bad file is reported once, not on every poll"


async def test_watch_yields_only_changes(
    tmp_path: Path, clock: Clock, registrars: list[FileRegistrar]
) -> None:
    watcher = FileWatcher(tmp_path, "asr_small", poll_interval=0.01, clock=clock)
    seen: list[list[str]] = []

    async def consume() -> None:
        async for instances in watcher.watch():
            seen.append([i.instance_id for i in instances])

    task = asyncio.create_task(consume())
    try:
        await wait_until_async(lambda: seen == [[]])
        first = new_registrar(registrars, tmp_path, clock)
        await first.register(info("a"))
        await wait_until_async(lambda: seen[-1] == ["a"])
        await new_registrar(registrars, tmp_path, clock).register(info("b"))
        await wait_until_async(lambda: seen[-1] == ["a", "b"])
        await first.deregister()
        await wait_until_async(lambda: seen[-1] == ["b"])
        assert seen == [[], ["a"], ["a", "b"], ["b"]]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
