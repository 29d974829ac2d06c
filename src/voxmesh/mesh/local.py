"""``python -m voxmesh.mesh``: the whole mesh on this machine.

Starts the router (``127.0.0.1:50051``) and the autoscaler with its local target
(control API ``127.0.0.1:50061``); the autoscaler starts the asr_small and asr_large
instances itself (real models, file-based discovery under ``.run/registry``), one each
to begin with, and scales them with the load. It prints the endpoints and runs until
Ctrl-C or SIGTERM, then stops the autoscaler (which drains the instances it started)
and drains the router.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from pathlib import Path

from voxmesh.discovery import InstanceInfo
from voxmesh.discovery.file import FileWatcher
from voxmesh.mesh.process import ServiceProcess
from voxmesh.rpc.server import wait_for_signal

__all__ = ["main", "run_mesh"]

logger = logging.getLogger(__name__)

POOLS = ("asr_small", "asr_large")


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
    print(f"starting {proc.name} ...", flush=True)
    started.append(proc)
    await proc.start()
    print(f"  {proc.name} on {proc.target} (metrics :{proc.ready['metrics_port']})", flush=True)


async def run_mesh(run_dir: Path, asr_args: list[str], autoscaler_args: list[str]) -> int:
    """Starts the mesh, waits for a signal, drains it."""
    registry = run_dir / "registry"
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    started: list[ServiceProcess] = []
    try:
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
        print("the autoscaler starts the ASR instances ...", flush=True)
        for info in await _first_instances(registry, timeout_s=300):
            print(f"  {info.pool}: {info.model} on {info.target} ({info.instance_id})", flush=True)
        print(f"voxmesh is up. Logs: {logs}. Ctrl-C drains and stops.", flush=True)
        await wait_for_signal()
        print("draining ... (a second Ctrl-C stops at once)", flush=True)
    finally:
        await _stop(started)
    return 0


async def _stop(started: list[ServiceProcess]) -> None:
    """Drains the autoscaler (and with it its instances), then the router.

    A second signal meanwhile signals every process again: the autoscaler then kills its
    instances and exits, the router stops at once.
    """

    async def drain() -> None:
        for proc in reversed(started):
            await proc.terminate(timeout=90)

    stopping = asyncio.ensure_future(drain())
    again = asyncio.ensure_future(wait_for_signal())
    await asyncio.wait({stopping, again}, return_when=asyncio.FIRST_COMPLETED)
    if not stopping.done():
        print("stopping at once ...", flush=True)
        for proc in started:
            proc.signal_drain()
    again.cancel()
    await stopping


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
