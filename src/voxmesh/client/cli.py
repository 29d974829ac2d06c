"""The ``voxmesh`` command: ``transcribe`` a file, show a server's ``status``.

::

    voxmesh transcribe talk.mp3                 # real time, interim + final text
    voxmesh transcribe talk.mp3 --fast --priority batch
    voxmesh status --target 127.0.0.1:50051     # instances, load, queues
    voxmesh status --target mesh.example:443 --tls --ca ca.pem  # a TLS router

The target defaults to ``$VOXMESH_TARGET`` or the router's default port. ``--ca``,
``--cert`` and ``--key`` imply ``--tls``; ``--cert``/``--key`` present a client
certificate (a router that requires one: ``tls_client_ca_file``).
Exit status: 0 on success, 1 on an RPC or input error, 2 on bad usage, 130 after
Ctrl-C, 141 when the output's reader went away (``| head``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

import grpc

from voxmesh.client.audio import SAMPLE_RATE, decode_file
from voxmesh.client.client import RecognizerClient, StreamOptions
from voxmesh.client.terminal import fit_head, fit_tail, same_terminal, terminal_columns, text_width
from voxmesh.errors import VoxmeshError
from voxmesh.rpc import aio_compat
from voxmesh.rpc.tls import ClientTls
from voxmesh.stt.v1 import stt_pb2
from voxmesh.telemetry.stats import known_figure

__all__ = ["main"]

DEFAULT_TARGET = "127.0.0.1:50051"
EXIT_INTERRUPTED = 130
"""Exit status after Ctrl-C (128 + SIGINT, as a shell reports a program it ended)."""
EXIT_BROKEN_PIPE = 141
"""Exit status when the output's reader went away (128 + SIGPIPE)."""
_PROGRESS_MIN_S = 20.0
_BAR_WIDTH = 30
_PRIORITIES = {"realtime": stt_pb2.PRIORITY_REALTIME, "batch": stt_pb2.PRIORITY_BATCH}
_STATES = {
    stt_pb2.SERVING_STATE_STARTING: "starting",
    stt_pb2.SERVING_STATE_SERVING: "serving",
    stt_pb2.SERVING_STATE_DRAINING: "draining",
}


def _clock(seconds: float) -> str:
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes):02d}:{rest:04.1f}"


class TranscriptView:
    """Renders a stream: finals as lines; on a terminal also the interim text and a bar.

    The interim text (stdout) and the bar (stderr, for files of 20 s or more) are live
    lines, redrawn in place and always narrower than the terminal (a line that wraps
    cannot be redrawn). When stdout and stderr are the same terminal they share one
    status line on stdout, the interim text's tail then the bar, as two live lines
    would erase each other. Finals are whole lines on stdout; a stdout that is no
    terminal gets nothing else.
    """

    def __init__(
        self,
        out: TextIO,
        err: TextIO,
        total_s: float,
        *,
        columns: Callable[[TextIO], int] | None = None,
    ) -> None:
        self._out, self._err = out, err
        self._live = out.isatty()
        self._bar = err.isatty() and total_s >= _PROGRESS_MIN_S
        self._shared = self._live and self._bar and same_terminal(out, err)
        self._columns = columns or terminal_columns
        self._total = total_s
        self._sent = 0.0
        self._interim = ""

    def on_response(self, response: stt_pb2.StreamingRecognizeResponse) -> None:
        """Shows one response."""
        if response.WhichOneof("streaming_response") != "result":
            return
        result = response.result
        text = result.alternatives[0].transcript.strip() if result.alternatives else ""
        if result.is_final:
            self._interim = ""
            self._clear()
            start = result.start_offset.ToTimedelta().total_seconds()
            end = result.end_offset.ToTimedelta().total_seconds()
            self._out.write(f"[{_clock(start)} - {_clock(end)}] {text}\n")
        else:
            self._interim = text
        self._redraw()

    def on_progress(self, sent_s: float) -> None:
        """Audio seconds sent so far."""
        self._sent = sent_s
        self._redraw()

    def close(self) -> None:
        """Removes the live lines."""
        self._interim = ""
        self._clear()
        self._out.flush()

    def _clear(self) -> None:
        if self._live:
            self._out.write("\r\x1b[K")
        if self._bar and not self._shared:
            self._err.write("\r\x1b[K")

    def _redraw(self) -> None:
        if self._shared:
            width = self._columns(self._out) - 1
            bar = fit_head(self._bar_text(), width)
            room = width - text_width(bar) - 1
            interim = fit_tail("... " + self._interim, room) if self._interim else ""
            line = f"{interim}{' ' * (room - text_width(interim))} {bar}" if room > 4 else bar
            self._out.write("\r\x1b[K" + line)
            self._out.flush()
            return
        if self._bar:
            width = self._columns(self._err) - 1
            self._err.write("\r\x1b[K" + fit_head(self._bar_text(), width))
            self._err.flush()
        if self._live and self._interim:
            width = self._columns(self._out) - 1
            self._out.write("\r\x1b[K" + fit_tail("... " + self._interim, width))
            self._out.flush()

    def _bar_text(self) -> str:
        done = min(1.0, self._sent / self._total) if self._total else 1.0
        filled = int(done * _BAR_WIDTH)
        return (
            f"[{'#' * filled}{'.' * (_BAR_WIDTH - filled)}] "
            f"{_clock(self._sent)} / {_clock(self._total)}"
        )


async def _transcribe(args: argparse.Namespace, pcm: bytes) -> int:
    total = len(pcm) / 2 / SAMPLE_RATE
    options = StreamOptions(
        model=args.model,
        language_code=args.language,
        priority=_PRIORITIES[args.priority],
        interim_results=not args.no_interim,
        speed=0.0 if args.fast else args.speed,
        stream_id=args.stream_id,
    )
    view = TranscriptView(sys.stdout, sys.stderr, total)
    async with RecognizerClient(args.target, tls=_tls(args)) as client:
        try:
            transcript = await client.transcribe_pcm(
                pcm, SAMPLE_RATE, options, view.on_response, view.on_progress
            )
        finally:
            view.close()
    summary = transcript.summary
    if summary is not None:
        moved = f", {summary.failovers} failover(s)" if summary.failovers else ""
        print(
            f"{summary.final_results} final result(s), "
            f"{summary.audio_processed.ToTimedelta().total_seconds():.1f} s of audio, "
            f"served by {summary.instance_id} ({summary.pool}/{summary.model}){moved}",
            file=sys.stderr,
        )
    return 0


_INSTANCE_COLUMNS = (
    "instance", "pool", "class", "region", "gpu", "state", "accepts",
    "streams", "router", "pending", "gpu util", "telemetry",
)  # fmt: skip
_RIGHT_ALIGNED = frozenset(range(_INSTANCE_COLUMNS.index("streams"), len(_INSTANCE_COLUMNS)))
"""The figures, from ``streams`` on."""


def _instance_cells(row: stt_pb2.InstanceLoad) -> tuple[str, ...]:
    """One instance row of a router's status, in the order of ``_INSTANCE_COLUMNS``."""
    accepts = "gone" if not row.listed else "yes" if row.accepting else "no"
    state = _STATES.get(row.state, "unknown")
    if row.HasField("drain_remaining"):
        state += f" {row.drain_remaining.ToTimedelta().total_seconds():.0f}s"
    if row.HasField("telemetry_age"):
        telemetry = f"{row.telemetry_age.ToTimedelta().total_seconds():.1f} s ago"
    else:
        telemetry = "none yet"
    return (
        row.instance_id,
        row.pool,
        row.capacity_class,
        row.region,
        row.gpu_type,
        state,
        accepts,
        f"{row.active_streams}/{row.max_streams}",
        str(row.router_streams),
        str(row.pending_work),
        f"{row.gpu_utilization_ratio:.0%}" if row.gpu_available else "-",
        telemetry,
    )


def _table(
    header: Sequence[str], rows: Sequence[Sequence[str]], right: frozenset[int]
) -> list[str]:
    """Columns as wide as their widest cell, two spaces apart; those in ``right`` right-aligned."""
    widths = [max(len(cells[i]) for cells in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [line(header)] + [line(cells) for cells in rows]


def format_status(snap: stt_pb2.TelemetrySnapshot) -> str:
    """A human-readable view of one telemetry snapshot."""
    role = "router" if snap.role == stt_pb2.ROLE_ROUTER else "instance"
    lines = [
        f"{role} {snap.instance_id}: {_STATES.get(snap.state, 'unknown')}, "
        f"{snap.active_streams}/{snap.max_streams} streams, {snap.pending_work} pending, "
        f"up {snap.uptime.ToTimedelta().total_seconds():.0f} s"
    ]
    if snap.role == stt_pb2.ROLE_ROUTER:
        lines.append(
            f"{'pool':<12}{'instances':>10}{'streams':>12}{'queued rt/batch':>17}"
            f"{'oldest wait':>13}{'admitted':>10}{'rejected':>10}"
        )
        for q in snap.queues:
            lines.append(
                f"{q.pool:<12}{q.instances:>10}{f'{q.active_streams}/{q.capacity_streams}':>12}"
                f"{f'{q.queued_realtime}/{q.queued_batch}':>17}"
                f"{f'{q.oldest_wait_seconds:.1f} s':>13}{q.admitted_total:>10}"
                f"{q.rejected_total:>10}"
            )
        if snap.instances:
            lines.append("")
            rows = [_instance_cells(row) for row in snap.instances]
            lines.extend(_table(_INSTANCE_COLUMNS, rows, _RIGHT_ALIGNED))
    else:
        lines.append(
            f"pool {snap.pool}, model {snap.model}, {snap.capacity_class}, region {snap.region}, "
            f"real-time factor {snap.real_time_factor:.2f}"
        )
        for gpu in snap.gpus:
            busy = known_figure(gpu, "utilization_ratio")
            used = known_figure(gpu, "memory_used_bytes")
            total = known_figure(gpu, "memory_total_bytes")
            lines.append(
                f"gpu {gpu.index} {gpu.name}: "
                f"{'?' if busy is None else f'{busy:.0%}'} busy, "
                f"{'?' if used is None else f'{used / 2**30:.1f}'}/"
                f"{'?' if total is None else f'{total / 2**30:.1f}'} GiB"
            )
        if not snap.gpu_available:
            lines.append(f"no GPU: {snap.gpu_unavailable_reason}")
    host = snap.host
    lines.append(
        f"host: {host.cpu_utilization_ratio:.0%} of {host.cpu_count} CPUs, process "
        f"{host.process_resident_bytes / 2**20:.0f} MiB resident"
    )
    return "\n".join(lines)


async def _status(args: argparse.Namespace) -> int:
    async with RecognizerClient(args.target, tls=_tls(args)) as client:
        if not args.watch:
            print(format_status(await client.telemetry(args.timeout)))
            return 0
        async for snapshot in client.watch_telemetry(args.interval):
            print(format_status(snapshot) + "\n", flush=True)
    return 0


def _tls(args: argparse.Namespace) -> ClientTls | None:
    """The TLS the connection flags ask for (None: plaintext)."""
    if not (args.tls or args.ca or args.cert or args.key):
        return None
    return ClientTls(
        ca_file=Path(args.ca) if args.ca else None,
        cert_file=Path(args.cert) if args.cert else None,
        key_file=Path(args.key) if args.key else None,
    )


def _connection_flags(default_target: str) -> argparse.ArgumentParser:
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument("--target", default=default_target, help="router or instance host:port")
    flags.add_argument("--tls", action="store_true", help="connect over TLS (system CA roots)")
    flags.add_argument("--ca", default="", help="PEM CA bundle to verify the server (TLS)")
    flags.add_argument("--cert", default="", help="PEM client certificate (mutual TLS)")
    flags.add_argument("--key", default="", help="PEM private key of --cert")
    return flags


def _parser(default_target: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voxmesh", description="voxmesh speech-to-text client")
    commands = parser.add_subparsers(dest="command", required=True)
    connection = _connection_flags(default_target)
    tr = commands.add_parser(
        "transcribe", parents=[connection], help="transcribe an audio file (any FFmpeg format)"
    )
    tr.add_argument("file", help="audio file; decoded to 16 kHz LINEAR16 with PyAV")
    pace = tr.add_mutually_exclusive_group()
    pace.add_argument("--realtime", action="store_true", help="send at real time (default)")
    pace.add_argument("--fast", action="store_true", help="send as fast as the server reads")
    tr.add_argument("--speed", type=float, default=1.0, help="pace as a multiple of real time")
    tr.add_argument("--model", default="auto", help="pool, model or 'auto' (default)")
    tr.add_argument("--priority", choices=sorted(_PRIORITIES), default="realtime")
    tr.add_argument("--language", default="", help="ISO 639-1 code (default: model's)")
    tr.add_argument("--no-interim", action="store_true", help="final results only")
    tr.add_argument("--stream-id", default="", help="id echoed in logs and the summary")
    st = commands.add_parser("status", parents=[connection], help="show instances, load and queues")
    st.add_argument("--watch", action="store_true", help="keep printing snapshots")
    st.add_argument("--interval", type=float, default=1.0, help="seconds between snapshots")
    st.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for a snapshot (default 5)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``voxmesh`` command."""
    parser = _parser(os.environ.get("VOXMESH_TARGET", DEFAULT_TARGET))
    args = parser.parse_args(argv)
    if bool(args.cert) != bool(args.key):
        parser.error("--cert and --key go together (a client certificate and its key)")
    aio_compat.install()
    try:
        if args.command == "transcribe":
            # Decoded before the event loop, in this thread: Ctrl-C interrupts it between
            # two frames. In a worker thread it could not be cancelled, and asyncio.run
            # would wait for the whole file to be decoded before it returned.
            pcm = decode_file(args.file, SAMPLE_RATE)
            return asyncio.run(_transcribe(args, pcm))
        return asyncio.run(_status(args))
    except grpc.aio.AioRpcError as err:
        print(f"error: {err.code().name}: {err.details()}", file=sys.stderr)
    except VoxmeshError as err:
        print(f"error: {err}", file=sys.stderr)
    except BrokenPipeError:
        # The reader of the output went away (`| head`): stop quietly, with the status
        # of a program SIGPIPE ended, and keep the flush at exit from failing again.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except OSError as err:  # a TLS file that cannot be read
        reason = f"{err.strerror}: {err.filename}" if err.filename is not None else str(err)
        print(f"error: {reason}", file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 1
