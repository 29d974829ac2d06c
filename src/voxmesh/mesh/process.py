"""One service process on this machine: start, wait until ready, drain, kill.

A voxmesh service prints ``VOXMESH_READY {json}`` on stdout once it serves;
:class:`ServiceProcess` waits for that line (with a deadline) and keeps the
rest of the output in a log file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["READY_PREFIX", "ServiceProcess"]

logger = logging.getLogger(__name__)

READY_PREFIX = "VOXMESH_READY "


class ServiceProcess:
    """A ``python -m <module>`` child process."""

    def __init__(
        self,
        module: str,
        args: Sequence[str] = (),
        *,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        name: str | None = None,
    ) -> None:
        self.module = module
        self.args = list(args)
        self.name = name or module.rsplit(".", 1)[-1]
        self._env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        self._log_path = log_path
        self._proc: asyncio.subprocess.Process | None = None
        self._pump: asyncio.Task[None] | None = None
        self.ready: dict[str, Any] = {}
        self._ready = asyncio.Event()
        self.started_at = 0.0
        self.ready_after = 0.0
        """Seconds from process start to its ready line (start-up time)."""

    @property
    def pid(self) -> int:
        """The child's pid (0 before start)."""
        return self._proc.pid if self._proc is not None else 0

    @property
    def port(self) -> int:
        """The gRPC port from the ready line."""
        return int(self.ready.get("port", 0))

    @property
    def target(self) -> str:
        """``127.0.0.1:<port>``."""
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        """True until the process exited."""
        return self._proc is not None and self._proc.returncode is None

    async def start(self, ready_timeout: float = 120.0) -> None:
        """Starts the process and waits for its ready line."""
        self.started_at = time.monotonic()
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            self.module,
            *self.args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=self._env,
            start_new_session=True,
        )
        self._pump = asyncio.create_task(self._read_output(), name=f"voxmesh-pump-{self.name}")
        ready = asyncio.create_task(self._ready.wait())
        try:
            _done, _ = await asyncio.wait(
                {ready, self._pump}, timeout=ready_timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            ready.cancel()
        if not self._ready.is_set():
            await self.kill()
            where = f" (log: {self._log_path})" if self._log_path else ""
            raise RuntimeError(
                f"{self.name} did not become ready within {ready_timeout:g} s{where}"
            )
        self.ready_after = time.monotonic() - self.started_at

    async def _read_output(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        log = self._log_path.open("ab") if self._log_path else None
        try:
            async for line in self._proc.stdout:
                if log is not None:
                    log.write(line)
                    log.flush()
                text = line.decode(errors="replace")
                if text.startswith(READY_PREFIX) and not self._ready.is_set():
                    self.ready = json.loads(text[len(READY_PREFIX) :])
                    self._ready.set()
        finally:
            if log is not None:
                log.close()

    async def wait(self, timeout: float | None = None) -> int | None:
        """Waits for exit; returns the exit code (None on timeout)."""
        if self._proc is None:
            return None
        try:
            return await asyncio.wait_for(self._proc.wait(), timeout)
        except TimeoutError:
            return None

    def signal_drain(self) -> None:
        """Sends SIGTERM (the service drains) without waiting for the exit."""
        if self.running:
            assert self._proc is not None
            self._proc.send_signal(signal.SIGTERM)

    async def terminate(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (drain), then SIGKILL after ``timeout``; returns the exit code."""
        if not self.running:
            return await self._finish()
        assert self._proc is not None
        self._proc.send_signal(signal.SIGTERM)
        code = await self.wait(timeout)
        if code is None:
            logger.warning("%s did not exit %g s after SIGTERM: killing", self.name, timeout)
            await self.kill()
        return await self._finish()

    async def kill(self) -> None:
        """SIGKILL now (a crash, for fault injection)."""
        if self.running:
            assert self._proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
        await self._finish()

    async def _finish(self) -> int | None:
        if self._proc is None:
            return None
        code = await self._proc.wait()
        if self._pump is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        return code
