"""A spike through the local mesh: the queue forms, the autoscaler scales up, the queue
drains, and after the stabilisation window it scales down by draining, dropping nothing.

Everything runs as processes, as ``make run`` starts them: the router, the autoscaler with
the local target (asr_small, 1 to 2 instances, an 8 s stabilisation window) and the
asr_small instances it starts (real tiny.en on CPU, one stream and one thread each). The
audio is synthetic speech, sent in real time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from tests.speech import espeak_pcm, silence_pcm
from tests.streaming import StreamRun, config_request, run_stream
from voxmesh.autoscaler.v1 import autoscaler_pb2 as pb
from voxmesh.autoscaler.v1 import autoscaler_pb2_grpc
from voxmesh.mesh.process import ServiceProcess

pytestmark = [pytest.mark.model, pytest.mark.slow]

WINDOW_S = 8
PHRASES = (
    "the quick brown fox jumps over the lazy dog",
    "she sells sea shells by the sea shore",
    "a stitch in time saves nine",
)


@dataclass
class LocalMesh:
    """The processes and a client view of the autoscaler."""

    router: ServiceProcess
    autoscaler: ServiceProcess
    stub: autoscaler_pb2_grpc.AutoscalerServiceAsyncStub
    decisions: list[pb.Decision] = field(default_factory=list)

    @property
    def target(self) -> str:
        return self.router.target

    async def group(self) -> pb.GroupStatus:
        status = await self.stub.GetStatus(pb.GetStatusRequest(pool="asr_small"), timeout=5)
        return status.pools[0].groups[0]

    async def until(
        self, what: str, check: Callable[[pb.GroupStatus], bool], timeout: float
    ) -> None:
        """Polls the status (deadline ``timeout``) until the on-demand group passes ``check``."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    if check(await self.group()):
                        return
                    await asyncio.sleep(0.2)
        except TimeoutError:
            raise AssertionError(f"not within {timeout} s: {what}: {await self.group()}") from None

    def applied(self, desired: int) -> list[pb.Decision]:
        return [
            d
            for d in self.decisions
            if d.actions
            and d.actions[0].outcome == pb.ACTION_OUTCOME_APPLIED
            and d.actions[0].desired == desired
        ]


@contextlib.asynccontextmanager
async def local_mesh(tmp: Path) -> AsyncIterator[LocalMesh]:
    registry, logs = tmp / "registry", tmp / "logs"
    router = ServiceProcess(
        "services.router",
        [
            "--port=0",
            "--metrics-port=-1",
            f"--registry-dir={registry}",
            "--registry-poll-s=0.1",
            "--telemetry-interval-s=0.2",
            "--queue-max-wait-s=60",
            "--pools=asr_small",
            "--models=tiny.en=asr_small",
            "--auto-batch-pool=asr_small",
            "--auto-language-pools=*=asr_small",
        ],
        log_path=tmp / "router.log",
    )
    autoscaler: ServiceProcess | None = None
    channel: grpc.aio.Channel | None = None
    watching: asyncio.Task[None] | None = None
    try:
        await router.start(ready_timeout=60)
        autoscaler = ServiceProcess(
            "services.autoscaler",
            [
                "--port=0",
                "--metrics-port=-1",
                "--pools=asr_small",
                f"--routers={router.target}",
                f"--registry-dir={registry}",
                f"--local-log-dir={logs}",
                f"--leader-file={tmp / 'leader'}",
                "--interval=0.5",
                "--telemetry-interval=0.2",
                "--on-demand-min=asr_small=1",
                "--on-demand-max=asr_small=2",
                "--max-streams=asr_small=1",
                "--target-utilisation=1",
                "--burst-sigmas=0",
                "--tolerance=0",
                f"--scale-down-window={WINDOW_S}",
                "--cooldown=1",
                "--drain-timeout=30",
                "--local-asr-args=--max-streams=1,--cpu-threads=1,--metrics-port=-1",
            ],
            log_path=tmp / "autoscaler.log",
        )
        await autoscaler.start(ready_timeout=60)
        channel = grpc.aio.insecure_channel(autoscaler.target)
        the_mesh = LocalMesh(router, autoscaler, autoscaler_pb2_grpc.AutoscalerServiceStub(channel))

        async def watch() -> None:
            request = pb.WatchDecisionsRequest(pool="asr_small", replay=100)
            async for message in the_mesh.stub.WatchDecisions(request):
                the_mesh.decisions.append(message.decision)

        watching = asyncio.create_task(watch())
        yield the_mesh
    finally:
        if watching is not None:
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await watching
        if channel is not None:
            await channel.close()
        if autoscaler is not None:
            await autoscaler.terminate(timeout=45)  # drains the instances it started
        await router.terminate(timeout=30)


async def _stream(target: str, pcm: bytes, name: str) -> StreamRun:
    async with grpc.aio.insecure_channel(target) as channel:
        return await run_stream(
            channel,
            pcm,
            speed=1.0,
            first=config_request(model="asr_small", stream_id=name),
            timeout=120,
        )


def _check(run: StreamRun, name: str) -> None:
    assert run.error is None, f"{name}: {run.error}"
    assert run.finals, f"{name}: no final result"
    assert run.summary is not None and run.summary.final_results == len(run.finals)


@pytest.mark.timeout(150)
async def test_a_spike_scales_up_then_down_by_draining_without_dropping_a_stream(
    tmp_path: Path,
) -> None:
    phrases = [espeak_pcm(p, pause_s=0.6) for p in PHRASES]
    long_one = b"".join(p + silence_pcm(1.5) for p in phrases)  # about 15 s
    async with local_mesh(tmp_path) as mesh:
        await mesh.until("the baseline instance serves", lambda g: g.serving == 1, 60)

        # The spike: 3 streams, 1 slot. The router queues two; the autoscaler adds one.
        spike = await asyncio.gather(
            *(_stream(mesh.target, pcm, f"spike-{i}") for i, pcm in enumerate(phrases))
        )
        for i, run in enumerate(spike):
            _check(run, f"spike-{i}")
        (up,) = mesh.applied(2)
        assert "queue of" in up.reason, up.reason
        # Serving by now, unless its start failed and is being retried (backoff 1-2 s).
        await mesh.until("the added instance serves", lambda g: g.serving == 2, 30)

        # One long stream keeps going while the window passes and one instance is drained.
        steady = asyncio.create_task(_stream(mesh.target, long_one, "steady"))
        await mesh.until(
            "scaled down to one instance, the other drained and gone",
            lambda g: g.target_count == 1 and g.serving == 1 and g.draining == 0,
            WINDOW_S + 20,
        )
        assert not steady.done(), "the scale-down should happen while the stream runs"
        _check(await steady, "steady")

        down = mesh.applied(1)[-1]
        assert (down.actions[0].current, down.actions[0].drain) == (2, 1)
        assert "stabilised" not in down.reason
        log = (tmp_path / "autoscaler.log").read_text()
        assert "drained and exited" in log
        assert "serving after" in log  # the measured start-up of each instance
