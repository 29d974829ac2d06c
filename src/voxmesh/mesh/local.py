"""``python -m voxmesh.mesh``: the whole mesh on this machine.

Starts the router (``127.0.0.1:50051``) and the autoscaler with its local target
(control API ``127.0.0.1:50061``); the autoscaler starts the asr_small and asr_large
instances itself (real models, file-based discovery under ``.run/registry``), one each
to begin with, and scales them with the load. It prints the endpoints and runs until
Ctrl-C, SIGTERM or SIGHUP, then drains the router (it takes no new stream, its streams
finish on the instances) and stops the autoscaler (which drains the instances it
started). Should the router or the autoscaler exit on its own, the launcher says so,
with the end of its log, stops the rest and exits 1: a mesh without either is not up.

Signals are caught from before the first process starts until the last has stopped,
and escalate: the first drains (during start-up: stops what has started), a second
signals every process again (they stop at once: the autoscaler kills its instances),
a third kills the router and the autoscaler; instances a killed autoscaler leaves get
SIGTERM from the kernel and drain on their own, within their drain timeout. The
launcher never dies of a signal it can catch and leaves its children running; should
it die of one it cannot (SIGKILL), its children get SIGTERM from the kernel on Linux
(see :mod:`voxmesh.mesh.process`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from voxmesh.discovery import InstanceInfo
from voxmesh.discovery.file import FileWatcher
from voxmesh.mesh.process import ServiceProcess

__all__ = ["main", "run_mesh"]

logger = logging.getLogger(__name__)

POOLS = ("asr_small", "asr_large")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""The signals that stop the mesh: Ctrl-C, ``kill``, a closed terminal."""


class StopSignals:
    """The stop signals the launcher received, in order (see :func:`caught`)."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[signal.Signals] = asyncio.Queue()

    def deliver(self, sig: signal.Signals) -> None:
        """Records one signal (the loop's signal handler; tests call it directly)."""
        self._queue.put_nowait(sig)

    async def next(self) -> signal.Signals:
        """The next signal, once it arrives."""
        return await self._queue.get()


@contextmanager
def caught(signals: StopSignals) -> Iterator[StopSignals]:
    """Delivers :data:`STOP_SIGNALS` to ``signals`` instead of their default action
    (which ends the launcher alone), until the block is left."""
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    try:
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, signals.deliver, sig)
            installed.append(sig)
        yield signals
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def _say(text: str) -> None:
    """Prints a progress line; a terminal gone (SIGHUP) must not stop the stop sequence."""
    with suppress(OSError):
        print(text, flush=True)


class ServiceExited(RuntimeError):
    """The router or the autoscaler exited while the mesh needed it."""

    def __init__(self, proc: ServiceProcess, code: int | None) -> None:
        super().__init__(f"{proc.name} exited with code {code}")
        self.proc = proc


async def _first_exit(services: Sequence[ServiceProcess]) -> ServiceExited:
    """Waits until one of ``services`` exits; returns which, with its code."""
    waits = {asyncio.create_task(proc.wait()): proc for proc in services}
    try:
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()
    task = next(iter(done))
    return ServiceExited(waits[task], task.result())


async def _first_instances(
    registry: Path, timeout_s: float, services: Sequence[ServiceProcess]
) -> list[InstanceInfo]:
    """The first instance of every pool, once each is registered (or what is by then).

    Raises :class:`ServiceExited` if one of ``services`` exits meanwhile: nothing would
    register then (the autoscaler starts the instances), and the wait would only hide it.
    """
    watchers = [FileWatcher(registry, pool) for pool in POOLS]
    deadline = time.monotonic() + timeout_s
    while True:
        for proc in services:
            if not proc.running:
                raise ServiceExited(proc, await proc.wait())
        found = [infos[0] for w in watchers if (infos := await asyncio.to_thread(w.scan))]
        if len(found) == len(POOLS) or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.5)


async def _start(proc: ServiceProcess, started: list[ServiceProcess]) -> None:
    _say(f"starting {proc.name} ...")
    started.append(proc)
    await proc.start()
    _say(f"  {proc.name} on {proc.target} (metrics :{proc.ready['metrics_port']})")


async def _start_all(
    run_dir: Path,
    asr_args: list[str],
    autoscaler_args: list[str],
    started: list[ServiceProcess],
    instances_timeout: float,
) -> None:
    """Starts the router and the autoscaler (appended to ``started`` before each starts),
    then waits for the first instance of every pool; a pool with none by then is named
    (the autoscaler may be in dry-run, or configured without a baseline)."""
    registry = run_dir / "registry"
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    router = ServiceProcess(
        "services.router", [f"--registry-dir={registry}"], log_path=logs / "router.log"
    )
    await _start(router, started)
    autoscaler = ServiceProcess(
        "services.autoscaler",
        [
            "--target=local",
            "--interval=1",
            f"--routers={router.target}",
            f"--registry-dir={registry}",
            f"--local-log-dir={logs}",
            f"--leader-file={run_dir / 'autoscaler.leader'}",
            f"--local-asr-args={','.join(asr_args)}",
            *autoscaler_args,
        ],
        log_path=logs / "autoscaler.log",
    )
    await _start(autoscaler, started)
    _say("the autoscaler starts the ASR instances ...")
    found = await _first_instances(registry, instances_timeout, [router, autoscaler])
    for info in found:
        _say(f"  {info.pool}: {info.model} on {info.target} ({info.instance_id})")
    missing = sorted(set(POOLS) - {info.pool for info in found})
    if missing:
        _say(
            f"warning: no {' or '.join(missing)} instance registered within "
            f"{instances_timeout:g} s; streams for it wait in the router's queue. "
            f"See {logs / 'autoscaler.log'} and the instance logs beside it."
        )
    _say(f"voxmesh is up. Logs: {logs}. Ctrl-C drains and stops.")


async def run_mesh(
    run_dir: Path,
    asr_args: list[str],
    autoscaler_args: list[str],
    instances_timeout: float = 300.0,
) -> int:
    """Starts the mesh, runs it until a signal, drains it; returns the exit code: 0 after
    a signal stopped a running mesh, 1 when start-up failed, a signal interrupted it, or
    the router or the autoscaler exited on its own."""
    started: list[ServiceProcess] = []
    with caught(StopSignals()) as signals:
        starting = asyncio.create_task(
            _start_all(run_dir, asr_args, autoscaler_args, started, instances_timeout)
        )
        first = asyncio.create_task(signals.next())
        exited: asyncio.Task[ServiceExited] | None = None
        try:
            await asyncio.wait({starting, first}, return_when=asyncio.FIRST_COMPLETED)
            if first.done():
                _say(f"{first.result().name} during start-up: stopping what started ...")
                return 1
            if (failure := starting.exception()) is not None:
                if not isinstance(failure, RuntimeError):
                    raise failure
                _failed(failure, started)
                return 1
            exited = asyncio.create_task(_first_exit(started))
            await asyncio.wait({first, exited}, return_when=asyncio.FIRST_COMPLETED)
            if not first.done():
                _failed(exited.result(), started)
                return 1
            _say(f"{first.result().name}: draining ... (a second Ctrl-C stops at once)")
        finally:
            first.cancel()
            if exited is not None:
                exited.cancel()
            if not starting.done():
                starting.cancel()
                await asyncio.wait([starting])
            await _stop(started, signals)
    return 0


def _failed(failure: RuntimeError, started: Sequence[ServiceProcess]) -> None:
    """Says what failed, with the end of the failed process's log from this run."""
    proc: ServiceProcess | None = None
    if isinstance(failure, ServiceExited):
        proc = failure.proc
    elif started:
        proc = started[-1]  # a start failed: the process it was starting
    _say(f"error: {failure}: stopping the mesh ...")
    if proc is not None and (tail := proc.log_tail()):
        _say(f"  the end of {proc.log_path}:")
        for line in tail:
            _say(f"  | {line}")


async def _stop(started: Sequence[ServiceProcess], signals: StopSignals) -> None:
    """Drains the router, then the autoscaler (and with it its instances).

    The router first: it stops taking streams and lets its streams finish on instances
    that still serve. Draining the instances first would leave the router admitting
    streams into a queue no instance would ever take from.

    A signal meanwhile signals every process again: the autoscaler then kills its
    instances and exits, the router stops at once. A signal after that kills them all.
    One process that fails to stop does not keep the others running.
    """

    async def drain() -> None:
        for proc in started:
            try:
                await proc.terminate(timeout=90)
            except Exception:
                logger.exception("stopping %s failed; stopping the others", proc.name)

    stopping = asyncio.create_task(drain())
    escalations = 0
    try:
        while True:
            again = asyncio.create_task(signals.next())
            try:
                await asyncio.wait({stopping, again}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                again.cancel()
            if stopping.done():
                break
            escalations += 1
            if escalations == 1:
                _say("stopping at once ... (a third Ctrl-C kills)")
                for proc in started:
                    proc.signal_drain()
            else:
                _say("killing ...")
                await _kill_all(started)
    finally:
        if not stopping.done():  # we were cancelled: kill rather than orphan
            stopping.cancel()
            await asyncio.wait([stopping])
            await _kill_all(started)
    await stopping


async def _kill_all(started: Sequence[ServiceProcess]) -> None:
    for proc in started:
        try:
            await proc.kill()
        except Exception:
            logger.exception("killing %s failed", proc.name)


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-dir", default=".run", help="state, registry and logs directory")
    parser.add_argument(
        "--asr-arg",
        action="append",
        default=[],
        help="extra flag passed to every ASR instance, as --asr-arg=--max-streams=2 (repeatable)",
    )
    parser.add_argument(
        "--autoscaler-arg",
        action="append",
        default=[],
        help="extra flag of the autoscaler, as --autoscaler-arg=--dry-run=true (repeatable)",
    )
    parser.add_argument(
        "--instances-timeout",
        type=float,
        default=300.0,
        help="seconds start-up waits for the first instance of each pool (default 300)",
    )
    args = parser.parse_args(argv)
    if commas := [arg for arg in args.asr_arg if "," in arg]:
        # The autoscaler gets them as one comma-separated setting (--local-asr-args).
        parser.error(f"--asr-arg cannot contain a comma: {commas[0]!r}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return asyncio.run(
        run_mesh(Path(args.run_dir), args.asr_arg, args.autoscaler_arg, args.instances_timeout)
    )


if __name__ == "__main__":
    sys.exit(main())
