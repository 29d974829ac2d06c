"""Entry point: ``python -m services.autoscaler [--flags]`` (see ``--help``).

Prints one ``VOXMESH_READY {json}`` line once the control API serves, runs until
SIGTERM/SIGINT, then shuts down in order (see :mod:`services.autoscaler.app`). A second
signal during the shutdown kills the local instances still draining and exits at once
(rather than leaving them running without their autoscaler).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from services.autoscaler.app import AutoscalerApp
from services.autoscaler.settings import AutoscalerSettings, load_settings
from voxmesh.mesh.process import announce_ready
from voxmesh.rpc import aio_compat
from voxmesh.rpc.server import run_service, wait_for_signal

logger = logging.getLogger("services.autoscaler")


async def serve(settings: AutoscalerSettings) -> int:
    """Runs the autoscaler until SIGTERM/SIGINT, then shuts it down; returns the exit code."""
    app = AutoscalerApp(settings)
    await app.start()
    announce_ready(app.ready)
    signal = await wait_for_signal()
    logger.info("%s: shutting down", signal.name)
    stopping = asyncio.create_task(app.shutdown())
    again = asyncio.create_task(wait_for_signal())
    await asyncio.wait({stopping, again}, return_when=asyncio.FIRST_COMPLETED)
    again.cancel()
    if not stopping.done():
        logger.warning(
            "%s again: killing the instances that are still draining", again.result().name
        )
        await app.abort()
        return 1
    await stopping
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parses settings from flags and environment and runs the autoscaler."""
    aio_compat.install()
    return run_service(
        lambda: load_settings(sys.argv[1:] if argv is None else argv, os.environ), serve
    )


if __name__ == "__main__":
    sys.exit(main())
