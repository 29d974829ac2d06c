"""The file backend of discovery, for single-machine mode.

Layout of the registry directory::

    <dir>/<instance_id>.json          InstanceInfo fields + "heartbeat_unix"
    <dir>/file_sd/<instance_id>.json  Prometheus file_sd target for the metrics port

The file_sd target carries the labels ``service`` (the Consul service name of the
pool), ``pool``, ``model``, ``instance_id``, ``capacity_class``, ``gpu_type`` and
``region``: the ones ``prometheus/prometheus.yml`` derives from the Consul service
meta, so both deployments label the series alike (``prometheus/README.md``).

:class:`FileRegistrar` writes its record atomically (a temporary file renamed
over the old one) and rewrites it every ``heartbeat_interval`` with a fresh
``heartbeat_unix``; an instance that crashed stops refreshing and drops out
once its heartbeat is older than the watcher's ``ttl``. :class:`FileWatcher`
polls the directory (inotify is not portable), skips partial or corrupt files
with a log line, and yields the fresh, non-draining instances of its pool when
that set changes. Heartbeats are wall-clock (``time.time``) seconds because
several processes compare them.

A record whose heartbeat is older than ``expire_after`` (by default
``EXPIRE_AFTER_TTLS`` times the ttl) belongs to an instance that died without
deregistering (SIGKILL, a crash): the watcher that sees it first deletes it and its
file_sd target, so neither the registry nor Prometheus keeps it forever. The record
is first renamed aside, which only one of several concurrent watchers can do, and
read again there: a heartbeat written in between (an instance slow, not dead) is put
back. A live instance whose record was deleted anyway writes both files again with
its next heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, get_origin, get_type_hints

from voxmesh.discovery.base import InstanceInfo, scrape_labels
from voxmesh.rpc.address import host_port

__all__ = ["EXPIRE_AFTER_TTLS", "FileRegistrar", "FileWatcher", "read_record", "record_of"]

log = logging.getLogger(__name__)
FILE_SD_DIR = "file_sd"
EXPIRE_AFTER_TTLS = 3.0
"""Default age of a deleted record, in watcher TTLs: well past the point where it stops
being routed to, so that only an instance that is gone loses its files."""


def record_of(info: InstanceInfo, heartbeat_unix: float) -> dict[str, Any]:
    """The JSON record of ``info`` with its heartbeat."""
    return {**dataclasses.asdict(info), "meta": dict(info.meta), "heartbeat_unix": heartbeat_unix}


def read_record(path: Path) -> tuple[InstanceInfo, float]:
    """Parses one record file; raises ``ValueError`` (or ``OSError``) if it is unusable."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    heartbeat = data.pop("heartbeat_unix")
    if not isinstance(heartbeat, (int, float)):
        raise ValueError("heartbeat_unix is not a number")
    names = {f.name for f in dataclasses.fields(InstanceInfo)}
    fields = {k: v for k, v in data.items() if k in names}
    for name, value in fields.items():
        if not _has_type(value, _FIELD_TYPES[name]):
            raise ValueError(f"{name} is not {_FIELD_TYPES[name].__name__}: {value!r}")
    try:
        info = InstanceInfo(**fields)
    except TypeError as exc:  # a required field is missing
        raise ValueError(str(exc)) from exc
    return info, float(heartbeat)


_FIELD_TYPES: dict[str, type] = {
    name: get_origin(hint) or hint for name, hint in get_type_hints(InstanceInfo).items()
}
"""What each record field must be (``meta``: a mapping of strings)."""


def _has_type(value: object, expected: type) -> bool:
    if expected is int:  # JSON true is no port number
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is Mapping:
        return isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        )
    return isinstance(value, expected)


def _write_atomic(path: Path, payload: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(payload, out)
        # mkstemp creates 0600: a Prometheus running as another user must read file_sd.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _restore(aside: Path, path: Path) -> None:
    """Moves a record renamed aside back, unless a newer one was written meanwhile."""
    try:
        os.link(aside, path)  # fails rather than replace a newer record
    except FileExistsError:
        pass
    except OSError:  # no hard links here: the rename back may replace a newer record
        with contextlib.suppress(OSError):
            os.replace(aside, path)
        return
    aside.unlink(missing_ok=True)


class FileRegistrar:
    """Announces one instance through files in ``directory`` (see the module docstring)."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        heartbeat_interval: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._dir = Path(directory)
        self._interval, self._clock = heartbeat_interval, clock
        self._info: InstanceInfo | None = None
        self._heartbeat: asyncio.Task[None] | None = None

    def _paths(self, info: InstanceInfo) -> tuple[Path, Path]:
        name = f"{info.instance_id}.json"
        return self._dir / name, self._dir / FILE_SD_DIR / name

    async def register(self, info: InstanceInfo) -> None:
        """Writes the record and the file_sd target, then keeps the heartbeat fresh."""
        self._info = info
        self._write()
        if self._heartbeat is None:
            self._heartbeat = asyncio.create_task(self._beat(), name="file-registrar-heartbeat")

    async def set_draining(self) -> None:
        """Rewrites the record with ``draining=true``."""
        if self._info is not None and not self._info.draining:
            self._info = dataclasses.replace(self._info, draining=True)
            self._write()

    async def deregister(self) -> None:
        """Stops the heartbeat and removes both files. Idempotent."""
        task, self._heartbeat = self._heartbeat, None
        if task is not None:
            task.cancel()
            # Unlike awaiting the task, this never swallows our own cancellation.
            await asyncio.wait([task])
        info, self._info = self._info, None
        if info is not None:
            for path in self._paths(info):
                path.unlink(missing_ok=True)

    def _write(self) -> None:
        """Writes the record (and the file_sd target when there is a metrics port)."""
        assert self._info is not None
        info = self._info
        record, target = self._paths(info)
        # The same target labels as prometheus/prometheus.yml relabels from Consul meta.
        labels = scrape_labels(info)
        file_sd = [{"targets": [host_port(info.address, info.metrics_port)], "labels": labels}]
        # Written on the loop on purpose: a few hundred bytes to a local file, and a
        # write finished in a thread after deregister() would resurrect the record.
        _write_atomic(record, record_of(info, self._clock()))
        if info.metrics_port:
            _write_atomic(target, file_sd)

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                self._write()
            except OSError as exc:
                log.warning("heartbeat write to %s failed: %s", self._dir, exc)


class FileWatcher:
    """Polls ``directory`` for the healthy instances of ``pool``."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        pool: str,
        *,
        ttl: float = 10.0,
        poll_interval: float = 0.5,
        clock: Callable[[], float] = time.time,
        expire_after: float | None = None,
    ) -> None:
        """``expire_after``: heartbeat age (s) at which a record of any pool is deleted;
        None for ``EXPIRE_AFTER_TTLS * ttl``. It must not be below ``ttl``."""
        expire = EXPIRE_AFTER_TTLS * ttl if expire_after is None else expire_after
        if expire < ttl:
            raise ValueError(f"expire_after={expire:g} is below ttl={ttl:g}")
        self._dir, self._pool = Path(directory), pool
        self._ttl, self._poll, self._clock = ttl, poll_interval, clock
        self._expire_after = expire
        self._reported: dict[Path, float] = {}

    def scan(self) -> list[InstanceInfo]:
        """One look at the directory: fresh, non-draining instances of the pool.

        Deletes the records (and file_sd targets) of every pool that expired.
        """
        now, found = self._clock(), []
        try:
            paths = sorted(p for p in self._dir.glob("*.json") if not p.name.startswith("."))
        except OSError as exc:
            log.warning("cannot list %s: %s", self._dir, exc)
            return []
        for path in paths:
            try:
                info, heartbeat = read_record(path)
            except (OSError, ValueError, KeyError) as exc:
                self._report(path, exc)
                continue
            age = now - heartbeat
            if age > self._expire_after:
                self._expire(path)
                continue
            if info.pool == self._pool and age <= self._ttl and not info.draining:
                found.append(info)
        return sorted(found, key=lambda i: i.instance_id)

    def _expire(self, path: Path) -> None:
        """Deletes the expired record at ``path`` and its file_sd target (see the module
        docstring); a file that another watcher removed meanwhile is no error."""
        aside = path.with_name(f".{path.name}.expired-{os.getpid()}-{threading.get_ident()}")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return  # another watcher, or the instance's own deregister, got there first
        except OSError as exc:
            log.warning("cannot delete the expired registry record %s: %s", path, exc)
            return
        try:
            info, heartbeat = read_record(aside)
        except (OSError, ValueError, KeyError):  # whole a moment ago: not ours to judge
            _restore(aside, path)
            return
        age = self._clock() - heartbeat
        if age <= self._expire_after:  # a heartbeat landed in between
            _restore(aside, path)
            return
        aside.unlink(missing_ok=True)
        (self._dir / FILE_SD_DIR / path.name).unlink(missing_ok=True)
        log.warning(
            "deleted the registry record of %s (%s at %s): no heartbeat for %.0f s",
            info.instance_id,
            info.pool,
            info.target,
            age,
        )

    def _report(self, path: Path, exc: Exception) -> None:
        """Logs an unusable file once per version of it (not on every poll)."""
        with contextlib.suppress(OSError):
            mtime = path.stat().st_mtime
            if self._reported.get(path) != mtime:
                self._reported[path] = mtime
                log.warning("skipping unreadable registry file %s: %s", path, exc)

    async def watch(self) -> AsyncIterator[list[InstanceInfo]]:
        """Yields the healthy set at once and again whenever it changes."""
        last: list[InstanceInfo] | None = None
        while True:
            current = await asyncio.to_thread(self.scan)
            if current != last:
                last = current
                yield list(current)
            await asyncio.sleep(self._poll)
