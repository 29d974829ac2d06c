"""Cold start, measured on this machine rather than simulated.

1. **Start-up**: ``python -m services.<pool>`` from process start to its
   ``VOXMESH_READY`` line, which an instance prints once it is SERVING (model
   loaded and warmed up, health SERVING, registered), ``--startup-runs`` times
   per pool. This is the figure the simulator's calibration calls start-up time.
2. **Scale from zero**: the router and the autoscaler (local target, asr_small
   with on-demand minimum 0 and maximum 1) run with no instance. A realtime
   stream arrives; the router queues it, which makes the demand visible although
   no instance exists; the autoscaler starts one; the router admits the stream
   when the instance registers. Measured per run, from the stream's arrival:
   the autoscaler's decision (its decision stream), the instance's start-up (the
   autoscaler's ``voxmesh_autoscaler_instance_startup_seconds``), the admission
   (the router's telemetry: ``admitted_total`` rising, followed at 100 ms) and
   the first result the client receives. The pool then scales back to zero
   (5 s stabilisation window) before the next run.

Everything shares this machine's cores (CPU inference, one thread per instance);
the JSON says which machine.

    python -m bench.autoscaler_cold_start --startup-runs 5 --zero-runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bench.common import metric_value, percentile, write_result
from tests.speech import espeak_pcm
from tests.streaming import config_request, run_stream
from voxmesh.autoscaler.v1 import autoscaler_pb2 as pb
from voxmesh.autoscaler.v1 import autoscaler_pb2_grpc
from voxmesh.mesh.process import ServiceProcess
from voxmesh.rpc import aio_compat
from voxmesh.stt.v1 import stt_pb2, stt_pb2_grpc

PHRASE = "the quick brown fox jumps over the lazy dog"
ASR_ARGS = ("--max-streams=1", "--cpu-threads=1", "--metrics-port=-1")


def _summary(values: list[float]) -> dict[str, Any]:
    return {
        "runs": len(values),
        "seconds": [round(v, 3) for v in values],
        "mean_s": round(statistics.fmean(values), 3),
        "p50_s": round(percentile(values, 50), 3),
        "max_s": round(max(values), 3),
    }


async def measure_startup(pool: str, runs: int) -> dict[str, Any]:
    """Process start to SERVING of ``pool`` instances started one after the other."""
    ready_after, warmup = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(runs):
            proc = ServiceProcess(
                f"services.{pool}",
                ["--discovery=none", "--port=0", *ASR_ARGS],
                log_path=Path(tmp) / f"{pool}-{i}.log",
            )
            await proc.start(ready_timeout=180)
            ready_after.append(proc.ready_after)
            warmup.append(float(proc.ready["warmup_seconds"]))
            await proc.terminate(timeout=30)
            print(f"{pool} start-up {i + 1}/{runs}: {proc.ready_after:.2f} s", flush=True)
    return {**_summary(ready_after), "model_warmup_s": [round(w, 3) for w in warmup]}


@dataclass
class Follower:
    """What the router's telemetry and the autoscaler's decisions said, with arrival times."""

    admitted: list[tuple[float, int]] = field(default_factory=list)
    decisions: list[tuple[float, pb.Decision]] = field(default_factory=list)

    def admitted_after(self, since: float, base: int) -> float | None:
        return next((t for t, n in self.admitted if t >= since and n > base), None)

    def scaled_up_after(self, since: float) -> float | None:
        return next(
            (
                t
                for t, d in self.decisions
                if t >= since
                and d.actions
                and d.actions[0].outcome == pb.ACTION_OUTCOME_APPLIED
                and d.actions[0].desired > d.actions[0].current
            ),
            None,
        )


async def _follow_router(target: str, follower: Follower) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        request = stt_pb2.WatchTelemetryRequest()
        request.interval.FromMilliseconds(100)
        async for response in stt_pb2_grpc.TelemetryServiceStub(channel).WatchTelemetry(request):
            for queue in response.snapshot.queues:
                if queue.pool == "asr_small":
                    follower.admitted.append((time.monotonic(), queue.admitted_total))


async def _follow_decisions(stub: Any, follower: Follower) -> None:
    async for message in stub.WatchDecisions(pb.WatchDecisionsRequest(pool="asr_small")):
        follower.decisions.append((time.monotonic(), message.decision))


def _startup_sum(metrics_port: int) -> float:
    return metric_value(
        metrics_port, 'voxmesh_autoscaler_instance_startup_seconds_sum{pool="asr_small"}'
    )


async def _until_group(
    stub: Any, check: Callable[[pb.PoolStatus], bool], timeout: float, what: str
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = await stub.GetStatus(pb.GetStatusRequest(pool="asr_small"), timeout=5)
        if check(status.pools[0]):
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"not within {timeout} s: {what}")


def _at_zero(pool: pb.PoolStatus) -> bool:
    group = pool.groups[0] if pool.groups else None
    return (
        group is not None
        and pool.HasField("signals")
        and not pool.signals.missing_reason
        and group.target_count == 0
        and group.serving == 0
        and group.draining == 0
    )


async def measure_scale_from_zero(runs: int) -> dict[str, Any]:
    """Arrival-to-admission waits of streams that find asr_small at zero instances."""
    pcm = espeak_pcm(PHRASE, pause_s=0.6)
    rows: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        router = ServiceProcess(
            "services.router",
            [
                "--port=0",
                "--metrics-port=-1",
                f"--registry-dir={tmp / 'registry'}",
                "--registry-poll-s=0.1",
                "--telemetry-interval-s=0.2",
                "--queue-max-wait-s=120",
                "--pools=asr_small",
                "--models=tiny.en=asr_small",
                "--auto-batch-pool=asr_small",
                "--auto-language-pools=*=asr_small",
                "--log-level=WARNING",
            ],
            log_path=tmp / "router.log",
        )
        await router.start(ready_timeout=60)
        autoscaler = ServiceProcess(
            "services.autoscaler",
            [
                "--port=0",
                "--metrics-port=0",
                "--pools=asr_small",
                f"--routers={router.target}",
                f"--registry-dir={tmp / 'registry'}",
                f"--local-log-dir={tmp / 'logs'}",
                f"--leader-file={tmp / 'leader'}",
                "--interval=0.5",
                "--telemetry-interval=0.2",
                "--on-demand-min=asr_small=0",
                "--on-demand-max=asr_small=1",
                "--scale-down-window=5",
                "--cooldown=1",
                f"--local-asr-args={','.join(ASR_ARGS)}",
            ],
            log_path=tmp / "autoscaler.log",
        )
        follower = Follower()
        tasks: list[asyncio.Task[None]] = []
        try:
            await autoscaler.start(ready_timeout=60)
            channel = grpc.aio.insecure_channel(autoscaler.target)
            stub = autoscaler_pb2_grpc.AutoscalerServiceStub(channel)
            tasks = [
                asyncio.create_task(_follow_router(router.target, follower)),
                asyncio.create_task(_follow_decisions(stub, follower)),
            ]
            metrics_port = int(autoscaler.ready["metrics_port"])
            async with grpc.aio.insecure_channel(router.target) as client:
                for i in range(runs):
                    await _until_group(stub, _at_zero, 90, "asr_small at zero instances")
                    base = follower.admitted[-1][1] if follower.admitted else 0
                    startup_before = await asyncio.to_thread(_startup_sum, metrics_port)
                    arrival = time.monotonic()
                    run = await run_stream(
                        client,
                        pcm,
                        speed=1.0,
                        first=config_request(model="asr_small", stream_id=f"cold-{i}"),
                        timeout=180,
                    )
                    if run.error is not None:
                        raise RuntimeError(f"cold stream {i} failed: {run.error}")
                    admitted = follower.admitted_after(arrival, base)
                    decided = follower.scaled_up_after(arrival)
                    if admitted is None or decided is None:
                        raise RuntimeError(f"run {i}: no admission or no scale-up was seen")
                    startup = await asyncio.to_thread(_startup_sum, metrics_port)
                    row = {
                        "wait_s": round(admitted - arrival, 3),
                        "decision_after_s": round(decided - arrival, 3),
                        "instance_startup_s": round(startup - startup_before, 3),
                        "first_result_after_s": round(run.responses[0][0], 3),
                        "finals": len(run.finals),
                    }
                    rows.append(row)
                    print(f"scale from zero {i + 1}/{runs}: {row}", flush=True)
            await channel.close()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await autoscaler.terminate(timeout=60)
            await router.terminate(timeout=30)
    waits = [r["wait_s"] for r in rows]
    return {
        "runs": rows,
        "wait": _summary(waits),
        "decision_after_mean_s": round(statistics.fmean(r["decision_after_s"] for r in rows), 3),
        "instance_startup_mean_s": round(
            statistics.fmean(r["instance_startup_s"] for r in rows), 3
        ),
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    """Both measurements."""
    startup = {pool: await measure_startup(pool, args.startup_runs) for pool in args.pools}
    zero = await measure_scale_from_zero(args.zero_runs)
    return {
        "setup": {
            "device": "cpu",
            "instance_flags": list(ASR_ARGS),
            "autoscaler": "local target, interval 0.5 s, telemetry every 0.2 s",
            "router": "file registry polled every 0.1 s",
            "admission_resolution_s": 0.1,
        },
        "startup": startup,
        "scale_from_zero": zero,
        "notes": (
            "wait_s = stream arrival to admission by the router; it spans the autoscaler "
            "noticing the queued stream (decision_after_s), the instance's process start to "
            "SERVING (instance_startup_s) and its registration reaching the router. On a "
            "cluster, provisioning a GPU node comes on top (the simulator's provisioning "
            "delay)."
        ),
    }


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--startup-runs", type=int, default=5)
    parser.add_argument("--zero-runs", type=int, default=3)
    parser.add_argument("--pools", type=lambda s: s.split(","), default=["asr_small", "asr_large"])
    args = parser.parse_args()
    aio_compat.install()
    write_result("autoscaler_cold_start", asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
