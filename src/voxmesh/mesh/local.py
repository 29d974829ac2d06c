"""``python -m voxmesh.mesh``: the whole mesh on this machine.

Starts one asr_small and one asr_large instance (real models, file-based
discovery under ``.run/registry``), prints their endpoints and runs until
Ctrl-C or SIGTERM, then drains every process.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from voxmesh.mesh.process import ServiceProcess
from voxmesh.rpc.server import wait_for_signal

__all__ = ["main", "run_mesh"]

logger = logging.getLogger(__name__)


async def run_mesh(run_dir: Path, asr_args: list[str]) -> int:
    """Starts the mesh, waits for a signal, drains it."""
    registry = run_dir / "registry"
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    common = ["--discovery", "file", "--registry-dir", str(registry), *asr_args]
    procs = [
        ServiceProcess("services.asr_small", common, log_path=logs / "asr_small.log"),
        ServiceProcess("services.asr_large", common, log_path=logs / "asr_large.log"),
    ]
    try:
        for proc in procs:
            print(f"starting {proc.name} ...", flush=True)
            await proc.start()
            print(
                f"  {proc.name}: {proc.ready['model']} on {proc.target} "
                f"(metrics :{proc.ready['metrics_port']}, ready in {proc.ready_after:.1f} s)",
                flush=True,
            )
        print(f"voxmesh is up. Logs: {logs}. Ctrl-C drains and stops.", flush=True)
        await wait_for_signal()
        print("draining ...", flush=True)
    finally:
        await asyncio.gather(*(p.terminate() for p in procs), return_exceptions=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-dir", default=".run", help="state, registry and logs directory")
    parser.add_argument(
        "--asr-arg",
        action="append",
        default=[],
        help="extra flag passed to every ASR instance (repeatable)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return asyncio.run(run_mesh(Path(args.run_dir), args.asr_arg))


if __name__ == "__main__":
    sys.exit(main())
