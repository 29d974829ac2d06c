"""A stand-in for the router's native data path's process (a test double, NOT
``dataplane/``), standard library only so that it starts at once.

:func:`write_executable` writes a ``dataplane_bin`` that runs it. It takes the
router's flags, binds ``--listen`` (serving nothing on it), prints ``PORT <n>`` and
waits for SIGTERM (exit 0), or for EOF on stdin, the router gone without stopping it
(exit 4); it records its command line, its port and how it ended in a JSON file.
Options before the router's flags make it misbehave (exit early, never report a port).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["process_main", "write_executable"]


def write_executable(path: Path, *options: str) -> Path:
    """Writes an executable at ``path`` that runs this stand-in process, with
    ``options`` (:func:`process_main`'s own) before the router's flags."""
    quoted = " ".join(f"'{part}'" for part in (sys.executable, __file__, *options))
    path.write_text(f'#!/bin/sh\nexec {quoted} "$@"\n')
    path.chmod(0o755)
    return path


def process_main(argv: list[str]) -> int:
    """The data path's process stand-in (see the module docstring)."""
    parser = argparse.ArgumentParser(description="native data path stand-in (a test double)")
    parser.add_argument("--record", help="write the command line and events here (JSON)")
    parser.add_argument("--exit-after", type=float, help="exit with code 3 this long after PORT")
    parser.add_argument("--exit-before-port", type=int, help="exit with this code at once")
    parser.add_argument("--silent", action="store_true", help="never print PORT")
    parser.add_argument("--listen", required=True)
    parser.add_argument("--control", required=True)
    parser.add_argument("--forward", required=True)
    parser.add_argument("--idle-timeout")
    parser.add_argument("--drain-timeout")
    parser.add_argument("--control-batch-wait")
    parser.add_argument("--exit-on-stdin-eof", action="store_true")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--tls-client-ca")
    args = parser.parse_args(argv)
    record: dict[str, Any] = {
        "argv": argv,
        "pid": os.getpid(),
        "terminated": False,
        "stdin_closed": False,
    }

    def save() -> None:  # whole or not at all: a test may read it as this is killed
        if args.record:
            partial = Path(f"{args.record}.partial")
            partial.write_text(json.dumps(record))
            partial.replace(args.record)

    save()
    if args.exit_before_port is not None:
        return int(args.exit_before_port)
    host, _, port = args.listen.rpartition(":")
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    listener.bind((host.strip("[]"), int(port)))
    listener.listen()
    record["port"] = listener.getsockname()[1]
    save()
    stop = threading.Event()

    def terminate(signum: int, frame: object) -> None:
        record["terminated"] = True
        save()
        stop.set()

    def router_gone() -> None:
        sys.stdin.buffer.read()  # until EOF: the router closed it, or died
        if not stop.is_set():
            record["stdin_closed"] = True
            save()
            stop.set()

    signal.signal(signal.SIGTERM, terminate)
    threading.Thread(target=router_gone, daemon=True).start()
    if not args.silent:
        print(f"PORT {listener.getsockname()[1]}", flush=True)
        print("stand-in data path serving nothing", flush=True)
    deadline = None if args.exit_after is None else time.monotonic() + args.exit_after
    while not stop.wait(0.05):
        if deadline is not None and time.monotonic() >= deadline:
            return 3
    return 4 if record.get("stdin_closed") else 0


if __name__ == "__main__":
    sys.exit(process_main(sys.argv[1:]))
