"""An ASR instance in a background thread (its own event loop), for integration tests."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace
from typing import Any

from voxmesh.asr.app import serve
from voxmesh.asr.settings import AsrSettings

__all__ = ["AsrServerThread"]


class AsrServerThread:
    """``with AsrServerThread(max_streams=2) as server: server.target``."""

    def __init__(self, **overrides: Any) -> None:
        base = AsrSettings(port=0, metrics_port=0, cpu_threads=2, drain_timeout=10.0)
        self.settings = replace(base, **overrides)
        self.ready: dict[str, Any] = {}
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.exit_code: int | None = None
        self._thread = threading.Thread(target=self._main, name="asr-server", daemon=True)

    @property
    def target(self) -> str:
        """``127.0.0.1:<port>``."""
        return f"127.0.0.1:{self.ready['port']}"

    def _main(self) -> None:
        async def run() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self.exit_code = await serve(self.settings, self._stop, self._on_ready)

        try:
            asyncio.run(run())
        except BaseException as err:  # surfaced by __enter__ / stop
            self._error = err
            self._ready.set()

    def _on_ready(self, ready: dict[str, Any]) -> None:
        self.ready = ready
        self._ready.set()

    def __enter__(self) -> AsrServerThread:
        self._thread.start()
        if not self._ready.wait(120):
            raise TimeoutError("ASR instance did not become ready within 120 s")
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        """Starts the drain (like SIGTERM) without waiting."""
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)

    def join(self, timeout: float = 60.0) -> None:
        """Waits for the instance to exit."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("ASR instance did not exit")
        if self._error is not None:
            raise self._error

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.join()
