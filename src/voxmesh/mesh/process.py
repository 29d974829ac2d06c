"""One service process on this machine: start, wait until ready, drain, kill.

A voxmesh service prints ``VOXMESH_READY {json}`` on stdout once it serves;
:class:`ServiceProcess` waits for that line (with a deadline) and keeps the
rest of the output in a log file. The output is read in chunks, not lines, so a
line of any length goes to the log and the child never blocks on a full pipe.

A child runs in its own session (a Ctrl-C in the terminal reaches only the launcher,
which stops its children in order). On Linux it also gets SIGTERM when the process
that started it dies (``PR_SET_PDEATHSIG``, set by util-linux's ``setpriv``), however
that died: SIGKILL included,
where no handler of the launcher runs. It then drains and exits as on a Ctrl-C; a
process it started itself (an autoscaler's instances) is covered the same way.
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
from typing import Any, BinaryIO

__all__ = ["READY_PREFIX", "ServiceProcess", "announce_ready"]

logger = logging.getLogger(__name__)

READY_PREFIX = "VOXMESH_READY "


def announce_ready(record: Mapping[str, Any]) -> None:
    """Prints ``VOXMESH_READY {record}`` on stdout in one write.

    A launcher (:class:`ServiceProcess`) runs its children unbuffered, where ``print``
    writes the text and its newline apart; a grandchild sharing the output (the router's
    native data path logs there) could then land its own line between the two, and the
    launcher would never see the ready line whole. One write of a line under the pipe's
    atomic size cannot be split."""
    sys.stdout.write(f"{READY_PREFIX}{json.dumps(record)}\n")
    sys.stdout.flush()


_READ_CHUNK = 64 * 1024
"""Bytes read from the child's output at a time."""
_MAX_READY_LINE = 64 * 1024
"""Longest line examined for the ready prefix; a longer one only goes to the log."""
_TAIL_BYTES = 16 * 1024
"""Most bytes :meth:`ServiceProcess.log_tail` reads from the end of a log."""
_SETPRIV = "/usr/bin/setpriv"
"""util-linux's ``setpriv``: sets the parent-death signal, then execs the command."""


def _die_with_parent() -> list[str]:
    """The command prefix that makes Linux SIGTERM the child when this process dies:
    ``setpriv --pdeathsig TERM --`` where util-linux's ``setpriv`` is (every Linux
    distribution's base system); nothing elsewhere.

    Not a ``preexec_fn`` calling ``prctl``: a ``preexec_fn`` makes Python fork and run
    Python code before the ``exec``, and in a parent with live gRPC threads (the
    autoscaler starting instances) gRPC's fork handlers crash the child often (SIGSEGV
    or SIGABRT before the ``exec``). ``setpriv`` does the ``prctl`` after a clean
    spawn, and the setting survives its ``exec`` of the service. Linux sends the
    signal when the *thread* that started the child ends: children are started from
    the event loop's thread, which lives as long as the process. A parent that dies in
    the instant before ``setpriv`` runs goes unnoticed (the old ``getppid`` check could
    not run in a clean spawn either).
    """
    if not sys.platform.startswith("linux") or not os.access(_SETPRIV, os.X_OK):
        return []
    return [_SETPRIV, "--pdeathsig", "TERM", "--"]


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
        self._log_from = 0
        """Where this run's output starts in the log (it is appended to)."""
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
    def log_path(self) -> Path | None:
        """The file the child's output goes to (appended to), if any."""
        return self._log_path

    @property
    def running(self) -> bool:
        """True until the process exited."""
        return self._proc is not None and self._proc.returncode is None

    async def start(self, ready_timeout: float = 120.0) -> None:
        """Starts the process and waits for its ready line."""
        self.started_at = time.monotonic()
        self._proc = await asyncio.create_subprocess_exec(
            *_die_with_parent(),
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
            exited = self._proc.returncode
            if exited is None and self._pump.done():  # EOF: it is exiting
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        exited = await self._proc.wait()
            await self.kill()
            where = f" (log: {self._log_path})" if self._log_path else ""
            if exited is not None:
                raise RuntimeError(
                    f"{self.name} exited with code {exited} before it was ready{where}"
                )
            raise RuntimeError(
                f"{self.name} did not become ready within {ready_timeout:g} s{where}"
            )
        self.ready_after = time.monotonic() - self.started_at

    async def _read_output(self) -> None:
        """Copies the child's output to the log until EOF and watches for the ready line.

        Fixed-size chunks, not ``readline``: a line longer than the stream's limit made
        line iteration raise, and a pipe nobody drains blocks the child's next write.
        """
        assert self._proc is not None and self._proc.stdout is not None
        stdout = self._proc.stdout
        log = self._open_log()
        line = bytearray()
        overlong = False  # the current line is too long to be the ready line
        try:
            while chunk := await stdout.read(_READ_CHUNK):
                if log is not None:
                    log = self._write_log(log, chunk)
                start = 0
                while (end := chunk.find(b"\n", start)) >= 0:
                    if not overlong:
                        line += chunk[start:end]
                        self._check_ready(line)
                    line.clear()
                    overlong = False
                    start = end + 1
                if not overlong:
                    line += chunk[start:]
                    if len(line) > _MAX_READY_LINE:
                        line.clear()
                        overlong = True
            if line and not overlong:
                self._check_ready(line)
        finally:
            if log is not None:
                log.close()

    def _open_log(self) -> BinaryIO | None:
        """Opens the log for appending and marks where this run starts in it."""
        if self._log_path is None:
            return None
        try:
            log = self._log_path.open("ab")
            self._log_from = log.tell()
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            log.write(f"--- {self.name} (pid {self.pid}) started {stamp} ---\n".encode())
            log.flush()
        except OSError as exc:
            logger.warning("%s: cannot open its log %s: %s", self.name, self._log_path, exc)
            return None
        return log

    def log_tail(self, lines: int = 10) -> list[str]:
        """The last ``lines`` lines this run wrote to the log (none without a log)."""
        if self._log_path is None:
            return []
        try:
            with self._log_path.open("rb") as log:
                size = log.seek(0, os.SEEK_END)
                log.seek(max(self._log_from, size - _TAIL_BYTES))
                text = log.read().decode(errors="replace")
        except OSError:
            return []
        return text.splitlines()[-lines:]

    def _write_log(self, log: BinaryIO, chunk: bytes) -> BinaryIO | None:
        """Appends ``chunk``; on an error logs once and stops logging (the pipe is still
        drained, so that the child never blocks on it)."""
        try:
            log.write(chunk)
            log.flush()
        except OSError as exc:
            logger.warning("%s: writing its log %s failed: %s", self.name, self._log_path, exc)
            with contextlib.suppress(OSError):
                log.close()
            return None
        return log

    def _check_ready(self, line: bytes | bytearray) -> None:
        if self._ready.is_set() or len(line) > _MAX_READY_LINE:
            return
        text = line.decode(errors="replace")
        if not text.startswith(READY_PREFIX):
            return
        try:
            ready = json.loads(text[len(READY_PREFIX) :])
        except ValueError:
            logger.warning("%s: malformed ready line %r", self.name, text[:200])
            return
        if not isinstance(ready, dict):
            logger.warning("%s: ready line is not a JSON object: %r", self.name, text[:200])
            return
        self.ready = ready
        self._ready.set()

    async def wait(self, timeout: float | None = None) -> int | None:
        """Waits for exit; returns the exit code (None on timeout)."""
        if self._proc is None:
            return None
        try:
            async with asyncio.timeout(timeout):
                return await self._proc.wait()
        except TimeoutError:
            return None

    def signal_drain(self) -> None:
        """Sends SIGTERM (the service drains) without waiting for the exit."""
        if self.running:
            assert self._proc is not None
            with contextlib.suppress(ProcessLookupError):  # exited, not yet reaped
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
        """Waits for the exit and the end of the output copy; returns the exit code.

        Whatever ended the output copy is logged, never raised: stopping a process must
        not fail because its log could not be written.
        """
        if self._proc is None:
            return None
        code = await self._proc.wait()
        pump = self._pump
        if pump is not None:
            await asyncio.wait([pump])  # unlike awaiting it, raises nothing of the pump's
            if not pump.cancelled() and (exc := pump.exception()) is not None:
                logger.warning("%s: copying its output failed: %r", self.name, exc)
        return code
