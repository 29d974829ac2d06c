"""Router overhead: added latency per message, sustained streams and CPU, against baselines.

Runs, at each load level, the same load (``bench/loadgen.py``, its own
process: N concurrent real-time streams of 100 ms LINEAR16 chunks, each chunk
timed until the interim result the backend sends for it) against:

* ``direct``: the backend itself;
* ``router``: ``python -m services.router`` in front of it (file discovery);
* ``floor``: ``bench/grpc_relay_floor.py`` in front of it, the least any
  grpc.aio proxy does per message (raw bytes handed through, nothing else), so
  the router's cost reads against what its Python gRPC stack alone costs;
* ``native_floor`` (native harness only): the same relay in Go
  (``bench/native/cmd/relayfloor``), what a proxy costs per message outside Python;
* ``nginx``: Debian nginx with ``grpc_pass`` in front of it (one worker, like
  the single-process router), as a proxy baseline.

The backend is a fake ASR instance (no model; one interim result per chunk) in
its own process. ``--harness`` picks where it and the load generator come from
(:mod:`bench.harness`): ``python`` (``tests.doubles.fake_asr``,
``bench/loadgen.py``) or ``native`` (their Go ports, built by ``make
bench-native``; the default once built), which take a fraction of the CPU, so
that the top levels measure the proxy rather than the harness. Added latency is
the proxy's percentile minus the direct percentile at the same level. The time
from opening a stream to its first result (``first_response_ms``, over every
stream of the run, opened during the ramp while the others stream) shows what
setting a stream up costs: for the router, its admission and placement. CPU is
measured with psutil on the proxy's processes over the measured window.
Everything shares this machine's cores, so contention shows up in every
figure; the JSON says how many cores and which harness ran.

    python -m bench.router_overhead --duration 10 --repeats 2 [--harness python]

A second series runs the highest levels again with the proxy alone on CPU 1
(backend and load generator on CPU 0), which shows the proxy's own capacity
on one core apart from contention with the rest of the benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import psutil

from bench.common import write_result
from bench.harness import (
    HARNESSES,
    Harness,
    cpu_seconds,
    default_harness,
    harness,
    harness_env,
    spawn,
    wait_served,
)
from services.router.settings import DEFAULT_DATAPLANE_BIN

ROOT = Path(__file__).resolve().parents[1]
NGINX = "/usr/sbin/nginx"
PROXY_PROCESS = {
    "direct": "backend",
    "router": "router",
    "floor": "floor",
    "native_floor": "native_floor",
    "nginx": "nginx",
}
"""The process whose CPU each mode reports: the proxy's (the backend's for direct)."""
SUSTAINED_P99_MS = 100.0
"""A level is sustained only while p99 stays within one 100 ms chunk period."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _nginx_conf(prefix: Path, port: int, backend: int) -> Path:
    tmp = prefix / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    tmp.chmod(0o777)
    conf = prefix / "nginx.conf"
    conf.write_text(
        f"""
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  http2_max_concurrent_streams 4096;
  keepalive_timeout 3600s;
  server {{
    listen 127.0.0.1:{port} http2;
    location / {{
      grpc_pass grpc://127.0.0.1:{backend};
      grpc_read_timeout 3600s;
      grpc_send_timeout 3600s;
      client_body_timeout 3600s;
      client_max_body_size 0;
    }}
  }}
}}
"""
    )
    return conf


def _modes(h: Harness) -> tuple[str, ...]:
    """The modes a harness measures, in the order they run and print."""
    return ("direct", "router", *h.floors, "nginx")


@contextmanager
def _processes(
    work: Path, interim_every: int, h: Harness, data_path: str
) -> Iterator[dict[str, Any]]:
    """Starts the backend, the router, the floors and nginx; yields their ports and pids."""
    registry = work / "registry"
    procs: list[subprocess.Popen[str]] = []
    ports: dict[str, int] = {}
    pids: dict[str, int] = {}
    try:
        backend, ports["direct"] = spawn(
            [*h.backend, "--port", "0",
             "--instance-id", "bench-backend", "--max-streams", "100000",
             "--utterance-ms", "100000000", "--interim-every", str(interim_every),
             "--registry-dir", str(registry)],
            r"^PORT (\d+)", work / "backend.log",
        )  # fmt: skip
        procs.append(backend)
        pids["backend"] = backend.pid
        router, ports["router"] = spawn(
            [sys.executable, "-m", "services.router", "--port", "0", "--metrics-port", "-1",
             "--registry-dir", str(registry), "--registry-poll-s", "0.2",
             "--queue-max-streams", "0", "--log-level", "WARNING", "--data-path", data_path],
            r"^VOXMESH_READY .*\"port\": (\d+)", work / "router.log",
        )  # fmt: skip
        procs.append(router)
        pids["router"] = router.pid
        for mode, command in h.floors.items():
            floor, ports[mode] = spawn(
                [*command, "--port", "0", "--backend", f"127.0.0.1:{ports['direct']}"],
                r"^PORT (\d+)",
                work / f"{mode}.log",
            )
            procs.append(floor)
            pids[mode] = floor.pid
        nginx_port = _free_port()
        conf = _nginx_conf(work / "nginx", nginx_port, ports["direct"])
        nginx = subprocess.Popen(
            [NGINX, "-p", str(work / "nginx"), "-c", str(conf), "-e", str(work / "nginx.err")],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        procs.append(nginx)  # type: ignore[arg-type]
        ports["nginx"], pids["nginx"] = nginx_port, nginx.pid
        _wait_listening(nginx_port)
        wait_served(ports["router"], h)
        yield {"ports": ports, "pids": pids}
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in reversed(procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def _run_level(
    target: str,
    streams: int,
    args: argparse.Namespace,
    h: Harness,
    pids: dict[str, int],
    pinned: bool,
) -> dict[str, Any]:
    cmd = [*h.loadgen, "--target", target, "--streams", str(streams),
           "--channels", str(args.channels), "--ramp", str(args.ramp), "--warmup",
           str(args.warmup), "--duration", str(args.duration),
           "--interim-every", str(args.interim_every)]  # fmt: skip
    if pinned:
        cmd = ["taskset", "-c", "0", *cmd]
    gen = subprocess.Popen(cmd, cwd=ROOT, env=harness_env(), stdout=subprocess.PIPE, text=True)
    assert gen.stdout is not None
    watched = {**pids, "loadgen": gen.pid}
    before: dict[str, float] = {}
    after: dict[str, float] = {}
    t0 = t1 = 0.0
    result: dict[str, Any] = {}
    for raw in gen.stdout:
        line = raw.strip()
        if line == "phase measure":
            t0 = time.monotonic()
            before = {k: cpu_seconds(v) for k, v in watched.items()}
        elif line == "phase done":
            t1 = time.monotonic()
            after = {k: cpu_seconds(v) for k, v in watched.items()}
        elif line.startswith("{"):
            result = json.loads(line)
    gen.wait()
    wall = max(1e-9, t1 - t0)
    result["cpu_cores"] = {k: round((after[k] - before[k]) / wall, 3) for k in before}
    expected = result["chunks_expected"]
    # Sustained: every stream ran, the generator kept its schedule, every chunk was
    # answered, and no backlog built up (p99 within one chunk period).
    result["sustained"] = bool(
        not result["stream_errors"]
        and result["streams_ok"] == streams
        and result["chunks_sent"] >= 0.98 * expected
        and result["responses_timed"] >= 0.98 * result["chunks_sent"] / args.interim_every
        and result["send_lag_ms"]["p99"] < SUSTAINED_P99_MS
        and result["latency_ms"]["p99"] < SUSTAINED_P99_MS
    )
    return result


def _added(
    proxy: dict[str, Any], direct: dict[str, Any], key: str = "latency_ms"
) -> dict[str, float]:
    return {q: round(proxy[key][q] - direct[key][q], 3) for q in ("p50", "p99")}


def _ratios(row: dict[str, Any]) -> dict[str, float | None]:
    """Router over nginx: end-to-end p50/p99, added p50, proxy CPU; and router CPU over
    the grpc.aio floor's (and the grpc-go floor's, when it ran)."""

    def ratio(a: float, b: float, floor: float) -> float | None:
        return round(a / b, 2) if b > floor else None  # None: too small to divide by

    router, nginx = row["router"], row["nginx"]
    ratios = {
        "p50": ratio(router["latency_ms"]["p50"], nginx["latency_ms"]["p50"], 0.05),
        "p99": ratio(router["latency_ms"]["p99"], nginx["latency_ms"]["p99"], 0.05),
        "added_p50": ratio(row["router_added_ms"]["p50"], row["nginx_added_ms"]["p50"], 0.05),
        "cpu": ratio(router["cpu_cores"]["router"], nginx["cpu_cores"]["nginx"], 0.001),
        "cpu_vs_grpc_aio_floor": ratio(
            router["cpu_cores"]["router"], row["floor"]["cpu_cores"]["floor"], 0.001
        ),
    }
    if "native_floor" in row:
        ratios["cpu_vs_grpc_go_floor"] = ratio(
            router["cpu_cores"]["router"], row["native_floor"]["cpu_cores"]["native_floor"], 0.001
        )
    return ratios


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def _combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The repeats of one mode at one level: medians, and every run kept."""
    return {
        "latency_ms": {q: _median([r["latency_ms"][q] for r in runs]) for q in ("p50", "p99")},
        "first_response_ms": {
            q: _median([r["first_response_ms"][q] for r in runs]) for q in ("p50", "p99")
        },
        "cpu_cores": {k: _median([r["cpu_cores"][k] for r in runs]) for k in runs[0]["cpu_cores"]},
        "sustained": all(r["sustained"] for r in runs),
        "runs": runs,
    }


def _pin(pid: int, cpu: int) -> None:
    """Puts every thread of a process and of its children on ``cpu``. The affinity of a
    pid is its main thread's only, so gRPC's and the Go runtime's threads must be pinned
    one by one; threads started later inherit their creator's."""
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        for thread in proc.threads():
            with suppress(ProcessLookupError):  # a thread that ended meanwhile
                os.sched_setaffinity(thread.id, [cpu])


def _series(
    levels: list[int], args: argparse.Namespace, h: Harness, env: dict[str, Any], pinned: bool
) -> list[dict[str, Any]]:
    """Every level, every mode (interleaved repeats); ``pinned`` puts the proxies on CPU 1
    and the backend and the load generator on CPU 0."""
    pids = env["pids"]
    measured = _modes(h)
    if pinned:
        _pin(pids["backend"], 0)
        for proxy in measured[1:]:
            _pin(pids[proxy], 1)
    rows: list[dict[str, Any]] = []
    for streams in levels:
        runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in measured}
        for _ in range(args.repeats):
            for mode in measured:  # interleaved, so drifting background load hits all alike
                target = f"127.0.0.1:{env['ports'][mode]}"
                runs[mode].append(_run_level(target, streams, args, h, pids, pinned))
        row: dict[str, Any] = {"streams": streams}
        row.update({mode: _combine(runs[mode]) for mode in measured})
        for proxy in measured[1:]:
            row[f"{proxy}_added_ms"] = _added(row[proxy], row["direct"])
            row[f"{proxy}_added_first_response_ms"] = _added(
                row[proxy], row["direct"], "first_response_ms"
            )
        row["router_vs_nginx"] = _ratios(row)
        for proxy in ("router", *h.floors):
            row[f"{proxy}_cpu_ms_per_stream_s"] = round(
                1000 * row[proxy]["cpu_cores"][PROXY_PROCESS[proxy]] / streams, 3
            )
        rows.append(row)
        _print_row(row, measured)
    return rows


def _per_stream(rows: list[dict[str, Any]], proxy: str) -> dict[str, float | None]:
    """A proxy's median CPU per stream-second over the levels it sustained, and the cores
    that makes at 500 streams."""
    values = [r[f"{proxy}_cpu_ms_per_stream_s"] for r in rows if r[proxy]["sustained"]]
    median = _median(values) if values else None
    return {
        "cpu_ms_per_stream_s_median": median,
        "cores_at_500_extrapolated": None if median is None else round(0.5 * median, 2),
    }


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    sustained = [r for r in rows if r["router"]["sustained"]]
    best = max(sustained, key=lambda r: r["streams"]) if sustained else None
    top = rows[-1]
    router = _per_stream(rows, "router")
    floor = _per_stream(rows, "floor")
    summary: dict[str, Any] = {
        "largest_level_sustained_by_router": best["streams"] if best else 0,
        "at_largest_sustained_level": None
        if best is None
        else {
            "streams": best["streams"],
            "router_added_p50_ms": best["router_added_ms"]["p50"],
            "router_added_p99_ms": best["router_added_ms"]["p99"],
            "nginx_added_p99_ms": best["nginx_added_ms"]["p99"],
            "router_cpu_cores": best["router"]["cpu_cores"]["router"],
            "grpc_aio_floor_cpu_cores": best["floor"]["cpu_cores"]["floor"],
            **(
                {"grpc_go_floor_cpu_cores": best["native_floor"]["cpu_cores"]["native_floor"]}
                if "native_floor" in best
                else {}
            ),
            "nginx_cpu_cores": best["nginx"]["cpu_cores"]["nginx"],
            "router_vs_nginx": best["router_vs_nginx"],
        },
        "at_top_level": {
            "streams": top["streams"],
            "direct_sustained": top["direct"]["sustained"],
            "harness_cpu_cores_direct": {
                k: top["direct"]["cpu_cores"][k] for k in ("backend", "loadgen")
            },
            "router_sustained": top["router"]["sustained"],
            "router_added_p99_ms": top["router_added_ms"]["p99"],
            "router_added_first_response_ms": top["router_added_first_response_ms"],
            "nginx_added_first_response_ms": top["nginx_added_first_response_ms"],
            "router_cpu_cores": top["router"]["cpu_cores"]["router"],
            "target_added_p99_le_5ms": top["router"]["sustained"]
            and top["router_added_ms"]["p99"] <= 5.0,
            "target_router_cpu_le_1_core": top["router"]["sustained"]
            and top["router"]["cpu_cores"]["router"] <= 1.0,
        },
        "router_cpu_ms_per_stream_s_median": router["cpu_ms_per_stream_s_median"],
        "router_cores_at_500_extrapolated": router["cores_at_500_extrapolated"],
        "grpc_aio_floor_cpu_ms_per_stream_s_median": floor["cpu_ms_per_stream_s_median"],
        "grpc_aio_floor_cores_at_500_extrapolated": floor["cores_at_500_extrapolated"],
    }
    if "native_floor" in top:
        go_floor = _per_stream(rows, "native_floor")
        summary["grpc_go_floor_cpu_ms_per_stream_s_median"] = go_floor["cpu_ms_per_stream_s_median"]
        summary["grpc_go_floor_cores_at_500_extrapolated"] = go_floor["cores_at_500_extrapolated"]
    return summary


def main(argv: list[str] | None = None) -> int:
    """Runs every level and mode, prints a table, writes bench/results/router_overhead.json."""
    parser = argparse.ArgumentParser(description="router overhead vs direct and nginx")
    parser.add_argument("--levels", default="50,100,150,200,250,300,500", help="streams")
    parser.add_argument(
        "--pinned-levels",
        default="300,350,400,500",
        help="levels run again with the proxy alone on CPU 1 (empty: skip; needs 2 CPUs)",
    )
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--ramp", type=float, default=3.0)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="runs per mode and level")
    parser.add_argument(
        "--interim-every",
        type=int,
        default=1,
        help="the backend answers one chunk in this many (1: every chunk, the worst case; "
        "10: one interim per second of audio, as an ASR instance sends them)",
    )
    parser.add_argument(
        "--harness",
        choices=HARNESSES,
        default=default_harness(),
        help="load generator and backend: Python, or their Go ports (make bench-native; "
        "the default once built)",
    )
    parser.add_argument(
        "--data-path",
        choices=("python", "native"),
        default="native" if os.access(DEFAULT_DATAPLANE_BIN, os.X_OK) else "python",
        help="the router's data path (its CPU counts the native one's process too): the "
        "native one (make dataplane; the default once built) or the Python relay",
    )
    args = parser.parse_args(argv)
    if shutil.which(NGINX) is None and not Path(NGINX).exists():
        raise SystemExit(f"{NGINX} not found (Debian package nginx)")
    try:
        h = harness(args.harness)
    except FileNotFoundError as exc:
        raise SystemExit(str(exc)) from None
    levels = [int(x) for x in args.levels.split(",") if x]
    pinned_levels = [int(x) for x in args.pinned_levels.split(",") if x]
    if (os.cpu_count() or 1) < 2:
        pinned_levels = []
    load_before = os.getloadavg()
    with (
        tempfile.TemporaryDirectory(prefix="voxmesh-bench-") as tmp,
        _processes(Path(tmp), args.interim_every, h, args.data_path) as env,
    ):
        print(f"=== {h.name} harness", flush=True)
        print("=== shared cores: load generator, backend and proxy on every CPU", flush=True)
        rows = _series(levels, args, h, env, pinned=False)
        pinned_rows: list[dict[str, Any]] = []
        if pinned_levels:
            print("=== pinned: proxy alone on CPU 1, backend and load generator on CPU 0")
            pinned_rows = _series(pinned_levels, args, h, env, pinned=True)
    load_after = os.getloadavg()
    summary = {"shared_cores": _summary(rows)}
    if pinned_rows:
        summary["proxy_on_its_own_core"] = _summary(pinned_rows)
    answers = (
        "one interim result per chunk"
        if args.interim_every == 1
        else f"one interim result per {args.interim_every} chunks"
    )
    name = "router_overhead" + ("" if args.interim_every == 1 else f"_interim{args.interim_every}")
    if args.data_path == "python":
        name += "_python_data_path"
    write_result(
        name,
        {
            "setup": {
                "harness": h.name,
                "router_data_path": args.data_path,
                "backend": f"{h.description['backend']}, {answers}",
                "loadgen": h.description["loadgen"],
                "interim_every": args.interim_every,
                "chunk_ms": 100,
                "measured_s": args.duration,
                "repeats": args.repeats,
                "figures": "median over repeats of each run's p50/p99 and CPU",
                "nginx": "1 worker, grpc_pass, http2",
                "floor": "bench/grpc_relay_floor.py: grpc.aio relay of raw bytes, nothing else",
                **(
                    {"native_floor": h.description["native_floor"]}
                    if "native_floor" in h.floors
                    else {}
                ),
                "note": "'levels': load generator, backend and proxy share this machine's "
                "cores; 'pinned_levels': the proxy alone on CPU 1; other work on the "
                "machine shows in the load averages",
                "load_average_before": [round(x, 2) for x in load_before],
                "load_average_after": [round(x, 2) for x in load_after],
            },
            "levels": rows,
            "pinned_levels": pinned_rows,
            "summary": summary,
        },
    )
    print(json.dumps(summary, indent=2))
    return 0


def _print_row(row: dict[str, Any], measured: tuple[str, ...]) -> None:
    def cell(mode: str) -> str:
        r = row[mode]
        lat, cpu = r["latency_ms"], r["cpu_cores"]
        proc = PROXY_PROCESS[mode]
        harness_cpu = "" if mode == "direct" else f"backend {cpu['backend']:.2f}, "
        return (
            f"{mode:>12}: p50 {lat['p50']:7.2f} p99 {lat['p99']:7.2f} ms "
            f"{proc} {cpu[proc]:.2f} cores ({harness_cpu}loadgen {cpu['loadgen']:.2f}) "
            f"{'ok' if r['sustained'] else 'NOT sustained'}"
        )

    print(f"--- {row['streams']} streams x 10 chunks/s", flush=True)
    for mode in measured:
        print("  " + cell(mode), flush=True)
    ratios = row["router_vs_nginx"]
    added = ", ".join(
        f"{proxy} {row[f'{proxy}_added_ms']['p50']:.2f}/{row[f'{proxy}_added_ms']['p99']:.2f} ms"
        for proxy in measured[1:]
    )
    go_floor = (
        f", grpc-go floor x{ratios['cpu_vs_grpc_go_floor']}"
        if "cpu_vs_grpc_go_floor" in ratios
        else ""
    )
    first = ", ".join(
        f"{mode} {row[mode]['first_response_ms']['p50']:.1f}/"
        f"{row[mode]['first_response_ms']['p99']:.1f}"
        for mode in measured
    )
    print(f"  stream open -> first result p50/p99 ms: {first}", flush=True)
    print(
        f"  added p50/p99: {added}; router/nginx: p50 x{ratios['p50']}, "
        f"p99 x{ratios['p99']}, added p50 x{ratios['added_p50']}, CPU x{ratios['cpu']}; "
        f"router CPU / grpc.aio floor x{ratios['cpu_vs_grpc_aio_floor']}{go_floor}",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
