"""The native data path's process, as the router starts, watches and stops it.

With ``data_path = native`` the router is two processes: this one (the control
plane: admission, discovery, metrics, Recognize, telemetry, health) and the Go data
path (``dataplane/``), which serves the public endpoint. The router starts it as::

    voxmesh-dataplane --listen HOST:PORT --control unix:SOCK --forward unix:SOCK
                      --idle-timeout Ts --drain-timeout 0s --control-batch-wait Tms
                      --exit-on-stdin-eof
                      [--tls-cert F --tls-key F [--tls-client-ca F]]

``--control`` is where it calls ``DataPlaneService.Connect`` and ``--forward``
where it sends every other method unchanged: both are the router's own gRPC
server on a Unix socket in a private directory. The TLS flags carry the router's
settings of the same names. Once it listens it prints ``PORT <n>`` (the port it
bound, for port 0) on stdout; the rest of its stdout goes to the router's log, its
stderr to the router's.

The drain is the router's (``drain_timeout_s``): meanwhile the data path relays the
streams under way and the control plane refuses new ones. The router then sends it
SIGTERM, and with ``--drain-timeout 0s`` it stops at once, cancelling what is left:
a drain of its own would come on top of the router's, and SIGKILL would cut it.

It runs in its own session, so a Ctrl-C in a terminal reaches the router only and
the router stops it in its shutdown order. Its stdin is a pipe the router holds open
while it runs and closes when it has stopped it: EOF on stdin while it still runs
means the router died without stopping it (SIGKILL, a crash), and the data path
should then exit rather than keep the public port with no control plane. (Never a
``preexec_fn``: it makes Python fork instead of spawn, and gRPC's fork handlers in a
process with live gRPC threads crash the child often, SIGSEGV or SIGABRT before
its ``exec``.)
"""

from __future__ import annotations

import asyncio
import logging
import signal

from voxmesh import tasks
from voxmesh.errors import SettingsError
from voxmesh.rpc.server import bind_error
from voxmesh.rpc.tls import ServerTls

__all__ = ["PORT_PREFIX", "DataPlaneProcess", "dataplane_argv"]

logger = logging.getLogger(__name__)

PORT_PREFIX = "PORT "
"""The line the data path prints once it listens: ``PORT <n>``."""
LISTEN_FAILED_PREFIX = "LISTEN_FAILED "
"""The line it prints, before exiting 3, when the public address cannot be bound."""
_FAILED_START_STOP_S = 1.0
"""How long a data path that failed to start gets to exit after SIGTERM."""


def dataplane_argv(
    binary: str,
    *,
    listen: str,
    socket: str,
    tls: ServerTls | None,
    idle_timeout_s: float,
    control_batch_wait_s: float,
) -> list[str]:
    """The data path's command line: ``listen`` (``host:port``) is the public endpoint,
    ``socket`` the path of the router's Unix socket, ``tls`` the public endpoint's TLS;
    the client's first request is awaited ``idle_timeout_s`` (the router's idle timeout),
    calls still under way on SIGTERM are cancelled (the router drained them already),
    and events for the control plane are gathered ``control_batch_wait_s`` after each
    batch."""
    argv = [binary, "--listen", listen, "--control", f"unix:{socket}"]
    argv += ["--forward", f"unix:{socket}"]
    argv += ["--idle-timeout", f"{idle_timeout_s:g}s", "--drain-timeout", "0s"]
    argv += ["--control-batch-wait", f"{control_batch_wait_s * 1000:g}ms"]
    argv += ["--exit-on-stdin-eof"]  # the router holds the pipe open while it runs
    if tls is not None:
        argv += ["--tls-cert", str(tls.cert_file), "--tls-key", str(tls.key_file)]
        if tls.client_ca_file is not None:
            argv += ["--tls-client-ca", str(tls.client_ca_file)]
    return argv


class DataPlaneProcess:
    """One run of the data path: :meth:`start`, :meth:`wait`, :meth:`stop`."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.port = 0
        """The public port it reported (0 before :meth:`start` returns)."""
        self._proc: asyncio.subprocess.Process | None = None
        self._pump: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        """Its pid (0 before start)."""
        return self._proc.pid if self._proc is not None else 0

    async def start(self, timeout_s: float) -> int:
        """Starts it and waits up to ``timeout_s`` for its ``PORT`` line; returns the port.

        Raises :class:`SettingsError` naming ``dataplane_bin`` when it cannot be run,
        exits first or stays silent (it is then killed)."""
        binary = self.argv[0]
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.PIPE,  # open while the router runs: see above
                stdout=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as err:
            raise SettingsError(
                f"setting dataplane_bin={binary!r}: cannot run it: {err.strerror or err}"
            ) from None
        logger.info("native data path started (pid %d): %s", self._proc.pid, " ".join(self.argv))
        try:
            async with asyncio.timeout(timeout_s):
                self.port = await self._read_port()
        except TimeoutError:
            await self.stop(_FAILED_START_STOP_S)
            raise SettingsError(
                f"setting dataplane_bin={binary!r}: the native data path reported no port "
                f"within {timeout_s:g} s"
            ) from None
        except BaseException:
            await self.stop(_FAILED_START_STOP_S)
            raise
        self._pump = asyncio.create_task(self._log_output(), name="dataplane-output")
        return self.port

    async def _read_port(self) -> int:
        assert self._proc is not None and self._proc.stdout is not None
        while True:
            try:
                raw = await self._proc.stdout.readline()
            except ValueError:  # a line over the reader's limit: not the one
                continue
            if not raw:
                code = await self._proc.wait()
                raise SettingsError(
                    f"setting dataplane_bin={self.argv[0]!r}: the native data path exited "
                    f"with code {code} before it served (its output is above)"
                )
            line = raw.decode(errors="replace").strip()
            if line.startswith(PORT_PREFIX) and line[len(PORT_PREFIX) :].isdigit():
                return int(line[len(PORT_PREFIX) :])
            if line.startswith(LISTEN_FAILED_PREFIX):  # the router's own port setting
                listen = self.argv[self.argv.index("--listen") + 1]
                port = int(listen.rpartition(":")[2])
                reason = line[len(LISTEN_FAILED_PREFIX) :]
                raise bind_error("port", port, listen, reason)
            logger.info("dataplane: %s", line)

    async def _log_output(self) -> None:
        """Copies its stdout to the log, so that it never blocks on a full pipe."""
        assert self._proc is not None and self._proc.stdout is not None
        stdout = self._proc.stdout
        while True:
            try:
                raw = await stdout.readline()
            except ValueError:
                continue
            if not raw:
                return
            logger.info("dataplane: %s", raw.decode(errors="replace").rstrip())

    async def wait(self) -> int:
        """Waits for it to exit; returns its exit code."""
        assert self._proc is not None, "wait() before start()"
        return await self._proc.wait()

    async def stop(self, timeout_s: float) -> None:
        """SIGTERM, up to ``timeout_s`` to exit, then SIGKILL (idempotent)."""
        proc = self._proc
        if proc is None:
            return
        try:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    async with asyncio.timeout(timeout_s):
                        await proc.wait()
                except TimeoutError:
                    logger.warning(
                        "native data path (pid %d) still runs %g s after SIGTERM: killing it",
                        proc.pid,
                        timeout_s,
                    )
                    proc.kill()
                    await proc.wait()
        finally:
            if proc.stdin is not None:
                proc.stdin.close()
            if self._pump is not None:
                await tasks.stop(self._pump)
