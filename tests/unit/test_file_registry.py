"""The file registry (single-machine discovery): records, heartbeats, TTL, file_sd."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conditions import wait_until_async
from voxmesh.discovery import file as file_registry
from voxmesh.discovery.base import CAPACITY_PREEMPTIBLE, InstanceInfo
from voxmesh.discovery.consul import service_definition
from voxmesh.discovery.file import EXPIRE_AFTER_TTLS, FileRegistrar, FileWatcher, record_of


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
    good = json.loads((tmp_path / "good.json").read_text())
    for name, value in [("max_streams", "4"), ("port", True), ("draining", 0), ("meta", [1])]:
        (tmp_path / f"bad-{name}.json").write_text(json.dumps({**good, name: value}))
    watcher = FileWatcher(tmp_path, "asr_small", clock=clock)

    with caplog.at_level(logging.WARNING, logger="voxmesh.discovery.file"):
        assert [i.instance_id for i in watcher.scan()] == ["good"]
        first = len(caplog.records)
        watcher.scan()
    assert first == 9
    assert "max_streams is not int: '4'" in caplog.text
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


@pytest.mark.parametrize(
    ("address", "target"),
    [
        ("::1", "[::1]:9100"),
        ("fd00::5", "[fd00::5]:9100"),
        ("[::1]", "[::1]:9100"),
        ("10.0.0.5", "10.0.0.5:9100"),
        ("asr-1.local", "asr-1.local:9100"),
    ],
)
async def test_file_sd_target_brackets_ipv6_literals(
    tmp_path: Path, clock: Clock, registrars: list[FileRegistrar], address: str, target: str
) -> None:
    """Prometheus reads ``host:port``: ``::1:9100`` would be a host ``::1:9100`` and no port."""
    await new_registrar(registrars, tmp_path, clock).register(
        dataclasses.replace(info(), address=address)
    )
    (entry,) = json.loads((tmp_path / "file_sd" / "asr-1.json").read_text())
    assert entry["targets"] == [target]


async def test_registry_files_are_readable_by_other_users(
    tmp_path: Path, clock: Clock, registrars: list[FileRegistrar]
) -> None:
    """Prometheus often runs as its own user: a file_sd file it cannot read is no target."""
    await new_registrar(registrars, tmp_path, clock).register(info())
    modes = [p.stat().st_mode for p in registry_paths(tmp_path)]
    assert modes and all(mode & 0o044 == 0o044 for mode in modes)


def registry_paths(directory: Path) -> list[Path]:
    """The JSON files under ``directory`` (records and file_sd)."""
    return list(directory.rglob("*.json"))


def registry_files(directory: Path) -> list[str]:
    """Every file under ``directory``, relative, hidden ones included."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


async def test_records_of_dead_instances_are_deleted_well_past_their_ttl(
    tmp_path: Path, clock: Clock, registrars: list[FileRegistrar], caplog: pytest.LogCaptureFixture
) -> None:
    """A SIGKILLed instance never deregisters: its record and file_sd target go once the
    heartbeat is ``EXPIRE_AFTER_TTLS`` TTLs old, whichever pool's watcher sees it first."""
    await new_registrar(registrars, tmp_path, clock).register(info("dead", pool="asr_large"))
    await new_registrar(registrars, tmp_path, clock).register(info("dead-too"))
    watcher = FileWatcher(tmp_path, "asr_small", ttl=10.0, clock=clock)
    everything = ["dead-too.json", "dead.json", "file_sd/dead-too.json", "file_sd/dead.json"]

    clock.now += EXPIRE_AFTER_TTLS * 10.0
    assert watcher.scan() == []
    assert registry_files(tmp_path) == everything, "stale, but not yet expired"

    clock.now += 0.5
    with caplog.at_level(logging.WARNING, logger="voxmesh.discovery.file"):
        assert watcher.scan() == []
    assert registry_files(tmp_path) == []
    messages = sorted(r.getMessage() for r in caplog.records)
    assert messages == [
        "deleted the registry record of dead (asr_large at 127.0.0.1:50051): no heartbeat for 30 s",
        "deleted the registry record of dead-too (asr_small at 127.0.0.1:50051): "
        "no heartbeat for 30 s",
    ]


async def test_a_slow_live_instance_keeps_its_record_and_writes_it_back_if_deleted(
    tmp_path: Path, clock: Clock, registrars: list[FileRegistrar]
) -> None:
    """Stale (not routed to) is not expired; and a record deleted from under a live
    instance comes back with its next heartbeat."""
    registrar = new_registrar(registrars, tmp_path, clock, interval=0.01)
    await registrar.register(info())
    watcher = FileWatcher(tmp_path, "asr_small", ttl=10.0, clock=clock)
    stalled = FileWatcher(tmp_path, "asr_small", ttl=10.0, clock=lambda: clock.now + 29.0)
    assert stalled.scan() == []  # 29 s without a heartbeat: stale ...
    assert registry_files(tmp_path) == ["asr-1.json", "file_sd/asr-1.json"]  # ... kept

    late = FileWatcher(tmp_path, "asr_small", ttl=10.0, clock=lambda: clock.now + 3600.0)
    late.scan()  # as if the instance had stalled for an hour
    await wait_until_async(lambda: [i.instance_id for i in watcher.scan()] == ["asr-1"])
    assert registry_files(tmp_path) == ["asr-1.json", "file_sd/asr-1.json"]


async def test_a_heartbeat_landing_while_a_record_expires_is_kept(
    tmp_path: Path, registrars: list[FileRegistrar], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watcher read an expired heartbeat; the instance writes a fresh one before the
    watcher deletes: the fresh record stays (it is re-checked after being renamed aside)."""
    instance_clock, watcher_clock = Clock(1_000.0), Clock(2_000.0)
    registrar = new_registrar(registrars, tmp_path, instance_clock)
    await registrar.register(info())
    real_read = file_registry.read_record

    def read_then_heartbeat(path: Path) -> tuple[InstanceInfo, float]:
        result = real_read(path)
        if not path.name.startswith("."):
            instance_clock.now = watcher_clock.now
            registrar._write()  # the heartbeat lands between the read and the delete
        return result

    monkeypatch.setattr(file_registry, "read_record", read_then_heartbeat)
    watcher = FileWatcher(tmp_path, "asr_small", ttl=10.0, clock=watcher_clock)
    assert watcher.scan() == []  # this scan read the old heartbeat
    assert registry_files(tmp_path) == ["asr-1.json", "file_sd/asr-1.json"]
    monkeypatch.setattr(file_registry, "read_record", real_read)
    assert [i.instance_id for i in watcher.scan()] == ["asr-1"]


async def test_a_record_removed_by_someone_else_meanwhile_is_no_error(
    tmp_path: Path, clock: Clock, registrars: list[FileRegistrar], monkeypatch: pytest.MonkeyPatch
) -> None:
    await new_registrar(registrars, tmp_path, clock).register(info())
    real_read = file_registry.read_record

    def read_then_vanish(path: Path) -> tuple[InstanceInfo, float]:
        result = real_read(path)
        path.unlink()  # another watcher deleted it between our read and our delete
        return result

    monkeypatch.setattr(file_registry, "read_record", read_then_vanish)
    clock.now += 3600.0
    assert FileWatcher(tmp_path, "asr_small", ttl=10.0, clock=clock).scan() == []
    assert registry_files(tmp_path) == ["file_sd/asr-1.json"]  # the other watcher's to delete


def test_concurrent_watchers_delete_each_expired_record_once(
    tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """Watchers in several threads (router, autoscaler, launcher) race over the same files."""
    for n in range(40):
        dead = info(f"dead-{n:02d}")
        file_registry._write_atomic(tmp_path / f"{dead.instance_id}.json", record_of(dead, 0.0))
        file_registry._write_atomic(tmp_path / "file_sd" / f"{dead.instance_id}.json", [])
    watchers = [FileWatcher(tmp_path, "asr_small", ttl=10.0, clock=clock) for _ in range(6)]
    start = threading.Barrier(len(watchers))
    failures: list[BaseException] = []

    def scan(watcher: FileWatcher) -> None:
        start.wait()
        try:
            for _ in range(5):
                watcher.scan()
        except BaseException as exc:  # reported below, in the test's thread
            failures.append(exc)

    with caplog.at_level(logging.WARNING, logger="voxmesh.discovery.file"):
        threads = [threading.Thread(target=scan, args=(w,)) for w in watchers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    assert failures == []
    assert registry_files(tmp_path) == []
    deleted = [r.getMessage() for r in caplog.records if "deleted" in r.getMessage()]
    assert len(deleted) == 40, "each record is deleted (and logged) by one watcher only"
    assert not [r for r in caplog.records if "deleted" not in r.getMessage()]


def test_expiry_cannot_be_set_below_the_ttl(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="expire_after=5 is below ttl=10"):
        FileWatcher(tmp_path, "asr_small", ttl=10.0, expire_after=5.0)
