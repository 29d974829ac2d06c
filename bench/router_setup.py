"""Stream set-up in bursts: what a stream costs the router's control plane, against
a control plane that decides nothing, side by side in one run.

``bench/router_overhead.py`` measures streams that are open; this measures opening
them, where the router's cost is its Python control plane: each stream is an Attach
call carried by the data path's one ``DataPlaneService.Connect`` call there
(docs/router.md). Two sides, each a Go data path (``voxmesh-dataplane``) in front of
the native harness's fake backend:

* ``router``: the router with its native data path, finding the backend in its file
  registry: every stream is validated, routed, admitted and counted;
* ``floor``: the same data path with ``bench/control_floor.py`` as its control plane,
  a grpc.aio service that decides nothing and places every stream on the backend at
  once, answering each batch of events in line: the least a grpc.aio control plane
  reached over Connect spends.

Each burst opens ``--streams`` streams over ``--ramp`` seconds from the Go load
generator; each sends 100 ms chunks for ``--stream-seconds`` after the ramp, then
ends. Per side it reports the control process's CPU per stream (its own, idle work
such as discovery included), the data path's, and the time from a stream's open to
its first result (p50/p99), each the median over the bursts; and the router's
control CPU per stream as a multiple of the floor's. The sides take turns burst by
burst, so both see the same host.

    python -m bench.router_setup [--streams 500] [--ramp 1] [--bursts 6]
                                 [--control-batch-wait 0.002]

Needs ``make dataplane bench-native``. Writes ``bench/results/router_setup.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import psutil

from bench.common import write_result
from bench.harness import ROOT, Harness, cpu_seconds, harness, harness_env, spawn, wait_served
from services.router.settings import DEFAULT_DATAPLANE_BIN, RouterSettings

SIDES = ("router", "floor")
DEFAULT_BATCH_WAIT_S = RouterSettings().control_batch_wait_s
SETTLE_S = 0.3
"""A side is done with a burst once its processes' CPU time stays put this long."""
SETTLE_LIMIT_S = 15.0


@contextmanager
def _running(proc: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    """Stops ``proc`` on the way out (SIGTERM, then SIGKILL after 20 s)."""
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _router(stack: ExitStack, work: Path, registry: Path, batch_wait_s: float) -> dict[str, int]:
    """Starts the router with its native data path: its port and both pids."""
    router, port = spawn(
        [sys.executable, "-m", "services.router", "--port", "0", "--metrics-port", "-1",
         "--registry-dir", str(registry), "--registry-poll-s", "0.2",
         "--queue-max-streams", "0", "--log-level", "WARNING", "--data-path", "native",
         "--control-batch-wait-s", f"{batch_wait_s:g}"],
        r"^VOXMESH_READY .*\"port\": (\d+)", work / "router.log",
    )  # fmt: skip
    stack.enter_context(_running(router))
    (data_path,) = psutil.Process(router.pid).children()
    return {"port": port, "control": router.pid, "data_path": data_path.pid}


def _floor(stack: ExitStack, work: Path, backend_port: int, batch_wait_s: float) -> dict[str, int]:
    """Starts the floor control plane and a data path in front of it: port and pids."""
    sock = work / "floor.sock"
    control, _ = spawn(
        [sys.executable, "-m", "bench.control_floor", "--socket", str(sock),
         "--backend", f"127.0.0.1:{backend_port}"],
        r"^READY$", work / "control_floor.log",
    )  # fmt: skip
    stack.enter_context(_running(control))
    data_path, port = spawn(
        [DEFAULT_DATAPLANE_BIN, "--listen", "127.0.0.1:0", "--control", f"unix:{sock}",
         "--forward", f"unix:{sock}", "--control-batch-wait", f"{batch_wait_s * 1000:g}ms"],
        r"^PORT (\d+)", work / "floor_data_path.log",
    )  # fmt: skip
    stack.enter_context(_running(data_path))
    return {"port": port, "control": control.pid, "data_path": data_path.pid}


def _own_cpu(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds of each process, its children left out (the router's data path is
    measured on its own)."""
    return {name: cpu_seconds(pid, children=False) for name, pid in pids.items()}


def _settled(pids: dict[str, int]) -> dict[str, float]:
    """The processes' CPU times once they stop moving (the burst's last calls ended)."""
    deadline = time.monotonic() + SETTLE_LIMIT_S
    last = _own_cpu(pids)
    while time.monotonic() < deadline:
        time.sleep(SETTLE_S)
        now = _own_cpu(pids)
        if all(now[k] - last[k] < 0.002 for k in now):
            return now
        last = now
    raise RuntimeError(f"still busy {SETTLE_LIMIT_S} s after the burst: {pids}")


def _burst(side: dict[str, int], args: argparse.Namespace, h: Harness) -> dict[str, Any]:
    """One burst against ``side``: CPU per stream and the load generator's figures."""
    pids = {"control": side["control"], "data_path": side["data_path"]}
    before = _settled(pids)
    out = subprocess.run(
        [*h.loadgen, "--target", f"127.0.0.1:{side['port']}", "--streams", str(args.streams),
         "--channels", str(args.channels), "--ramp", str(args.ramp), "--warmup", "0",
         "--duration", str(args.stream_seconds)],
        check=True, cwd=ROOT, env=harness_env(), capture_output=True, text=True,
    )  # fmt: skip
    result = json.loads(out.stdout.strip().splitlines()[-1])
    after = _settled(pids)
    per_stream = {k: round(1000 * (after[k] - before[k]) / args.streams, 3) for k in pids}
    return {
        "streams_ok": result["streams_ok"],
        "stream_errors": result["stream_errors"],
        "control_cpu_ms_per_stream": per_stream["control"],
        "data_path_cpu_ms_per_stream": per_stream["data_path"],
        "first_response_ms": result["first_response_ms"],
    }


def _summary(bursts: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over a side's bursts."""

    def median(values: list[float]) -> float:
        return round(statistics.median(values), 3)

    return {
        "bursts": len(bursts),
        "all_streams_ok": all(b["streams_ok"] == b["streams"] for b in bursts),
        "control_cpu_ms_per_stream": median([b["control_cpu_ms_per_stream"] for b in bursts]),
        "data_path_cpu_ms_per_stream": median([b["data_path_cpu_ms_per_stream"] for b in bursts]),
        "first_response_p50_ms": median([b["first_response_ms"]["p50"] for b in bursts]),
        "first_response_p99_ms": median([b["first_response_ms"]["p99"] for b in bursts]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", type=int, default=500, help="streams per burst")
    parser.add_argument("--ramp", type=float, default=1.0, help="seconds to open them all")
    parser.add_argument(
        "--stream-seconds", type=float, default=1.5, help="audio each sends after the ramp"
    )
    parser.add_argument("--bursts", type=int, default=6, help="bursts per side")
    parser.add_argument("--channels", type=int, default=8, help="HTTP/2 connections")
    parser.add_argument(
        "--control-batch-wait",
        type=float,
        default=DEFAULT_BATCH_WAIT_S,
        help="seconds both data paths gather control events after each batch (the "
        "router's control_batch_wait_s; another value than the default writes "
        "router_setup_wait_<s>s.json)",
    )
    args = parser.parse_args(argv)
    h = harness("native")
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory(prefix="voxmesh-setup-") as tmp, ExitStack() as stack:
        work, registry = Path(tmp), Path(tmp) / "registry"
        backend, backend_port = spawn(
            [*h.backend, "--port", "0", "--instance-id", "bench-backend",
             "--max-streams", "100000", "--utterance-ms", "100000000", "--interim-every", "1",
             "--registry-dir", str(registry)],
            r"^PORT (\d+)", work / "backend.log",
        )  # fmt: skip
        stack.enter_context(_running(backend))
        sides = {
            "router": _router(stack, work, registry, args.control_batch_wait),
            "floor": _floor(stack, work, backend_port, args.control_batch_wait),
        }
        for side in sides.values():
            wait_served(side["port"], h)
        print(
            f"{args.bursts} bursts per side of {args.streams} streams opened over {args.ramp} s,"
            f" each sending {args.stream_seconds} s of 100 ms chunks after"
        )
        for n in range(args.bursts):
            for name in SIDES if n % 2 == 0 else reversed(SIDES):
                burst = {"streams": args.streams, **_burst(sides[name], args, h)}
                runs[name].append(burst)
                first = burst["first_response_ms"]
                print(
                    f"  burst {n + 1} {name:<6} control {burst['control_cpu_ms_per_stream']:5.2f}"
                    f" ms/stream, data path {burst['data_path_cpu_ms_per_stream']:5.2f} ms/stream,"
                    f" first result p50/p99 {first['p50']:7.1f}/{first['p99']:7.1f} ms,"
                    f" {burst['streams_ok']}/{args.streams} ok"
                )
    summary = {side: _summary(bursts) for side, bursts in runs.items()}
    router, floor = summary["router"], summary["floor"]
    ratio = round(router["control_cpu_ms_per_stream"] / floor["control_cpu_ms_per_stream"], 2)
    print(
        f"control plane CPU per stream: router {router['control_cpu_ms_per_stream']:.2f} ms, "
        f"floor {floor['control_cpu_ms_per_stream']:.2f} ms (router/floor x{ratio}); "
        f"first result p50: router {router['first_response_p50_ms']:.1f} ms, "
        f"floor {floor['first_response_p50_ms']:.1f} ms"
    )
    default_wait = args.control_batch_wait == DEFAULT_BATCH_WAIT_S
    write_result(
        "router_setup" if default_wait else f"router_setup_wait_{args.control_batch_wait:g}s",
        {
            "streams_per_burst": args.streams,
            "control_batch_wait_s": args.control_batch_wait,
            "ramp_s": args.ramp,
            "stream_seconds": args.stream_seconds,
            "sides": {
                "router": "the router, native data path (Python control plane + Go data path)",
                "floor": "the same Go data path, bench/control_floor.py as its control plane",
            },
            "summary": summary,
            "router_vs_floor_control_cpu": ratio,
            "bursts": runs,
        },
    )
    return 0 if router["all_streams_ok"] and floor["all_streams_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
