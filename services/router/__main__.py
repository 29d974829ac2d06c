"""Entry point: ``python -m services.router [--flags]`` (see ``--help``).

Once serving it prints ``VOXMESH_READY {json}`` (port, metrics port, id) on
stdout, like every voxmesh service, for :class:`voxmesh.mesh.process.ServiceProcess`.
It drains and exits 0 on SIGTERM/SIGINT; should its native data path exit while it
runs, it stops and exits 1, for its supervisor to start it again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from services.router.app import RouterApp
from services.router.settings import RouterSettings, load_settings
from voxmesh import tasks
from voxmesh.mesh.process import announce_ready
from voxmesh.rpc import aio_compat
from voxmesh.rpc.server import run_service, wait_for_signal

logger = logging.getLogger("services.router")


async def serve(settings: RouterSettings) -> int:
    """Runs the router until SIGTERM/SIGINT, then drains; returns the exit code."""
    app = RouterApp(settings)
    await app.start()
    ready = {
        "instance_id": settings.router_id,
        "role": "router",
        "port": app.port,
        "metrics_port": app.server.metrics_port,
        "pools": list(settings.pools),
    }
    announce_ready(ready)
    signal = asyncio.create_task(wait_for_signal(), name="router-signal")
    failed = asyncio.create_task(app.wait_failed(), name="router-failed")
    try:
        await asyncio.wait({signal, failed}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        try:
            await tasks.stop(signal)
        finally:
            await tasks.stop(failed)
    if not signal.cancelled() and signal.exception() is None:
        logger.info("%s: draining", signal.result().name)
        await app.shutdown()
        return 0
    logger.error("stopping: the router cannot serve without its native data path")
    await app.shutdown()
    return 1


def main(argv: list[str] | None = None) -> int:
    """Parses settings from flags and environment and runs the router."""
    aio_compat.install()  # instance statuses must reach the relay intact
    return run_service(
        lambda: load_settings(sys.argv[1:] if argv is None else argv, os.environ), serve
    )


if __name__ == "__main__":
    sys.exit(main())
