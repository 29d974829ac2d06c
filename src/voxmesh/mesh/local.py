"""``python -m voxmesh.mesh``: the whole mesh on this machine.

Starts the router (``127.0.0.1:50051``) and the autoscaler with its local target
(control API ``127.0.0.1:50061``); the autoscaler starts the asr_small and asr_large
instances itself (real models, file-based discovery under ``.run/registry``), one each
to begin with, and scales them with the load. It prints the endpoints and runs until
Ctrl-C, SIGTERM or SIGHUP, then stops the autoscaler (which drains the instances it
started) and drains the router.

Signals are caught from before the first process starts until the last has stopped,
and escalate: the first drains (during start-up: stops what has started), a second
signals every process again (they stop at once), a third kills them. The launcher
never dies of a signal it can catch and leaves its children running; should it die
of one it cannot (SIGKILL), its children get SIGTERM from the kernel on Linux
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


async def _first_instances(registry: Path, timeout_s: float) -> list[InstanceInfo]:
    """The first instance of every pool, once each is registered (or what is by then)."""
    watchers = [FileWatcher(registry, pool) for pool in POOLS]
    deadline = time.monotonic() + timeout_s
    while True:
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
    run_dir: Path, asr_args: list[str], autoscaler_args: list[str], started: list[ServiceProcess]
) -> None:
    """Starts the router and the autoscaler (appended to ``started`` before each starts),
    then waits for the first instance of every pool."""
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
    for info in await _first_instances(registry, timeout_s=300):
        _say(f"  {info.pool}: {info.model} on {info.target} ({info.instance_id})")
    _say(f"voxmesh is up. Logs: {logs}. Ctrl-C drains and stops.")


async def run_mesh(run_dir: Path, asr_args: list[str], autoscaler_args: list[str]) -> int:
    """Starts the mesh, waits for a signal, drains it; returns the exit code (1 when
    start-up failed or a signal interrupted it)."""
    started: list[ServiceProcess] = []
    with caught(StopSignals()) as signals:
        starting = asyncio.create_task(_start_all(run_dir, asr_args, autoscaler_args, started))
        first = asyncio.create_task(signals.next())
        try:
            await asyncio.wait({starting, first}, return_when=asyncio.FIRST_COMPLETED)
            if first.done():
                _say(f"{first.result().name} during start-up: stopping what started ...")
                return 1
            starting.result()  # a failed start-up raises here (after the stop below)
            _say(f"{(await first).name}: draining ... (a second Ctrl-C stops at once)")
        finally:
            first.cancel()
            if not starting.done():
                starting.cancel()
                await asyncio.wait([starting])
            await _stop(started, signals)
    return 0


async def _stop(started: Sequence[ServiceProcess], signals: StopSignals) -> None:
    """Drains the autoscaler (and with it its instances), then the router.

    A signal meanwhile signals every process again: the autoscaler then kills its
    instances and exits, the router stops at once. A signal after that kills them all.
    One process that fails to stop does not keep the others running.
    """

    async def drain() -> None:
        for proc in reversed(started):
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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return asyncio.run(run_mesh(Path(args.run_dir), args.asr_arg, args.autoscaler_arg))


if __name__ == "__main__":
    sys.exit(main())
