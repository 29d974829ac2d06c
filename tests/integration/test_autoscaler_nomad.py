"""The evaluation loop driving the Nomad target against the Nomad API test double.

Real loop, real policy, real Nomad target and python-nomad client over HTTP; the Nomad
side is :class:`~tests.doubles.nomad_double.NomadDouble` (a double, not Nomad) with a
manual clock, and the demand comes from a fake signal source. The loop's clock and the
double's move together, so placements, deployments and windows are stepped, not slept.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from services.autoscaler.loop import EvaluationLoop, LoopConfig, PoolSpec
from services.autoscaler.policy import GroupLimits, PoolPolicy
from services.autoscaler.records import DecisionRecord, Kind, Outcome
from services.autoscaler.signals.base import InstanceLoad, PoolLoad
from services.autoscaler.targets.nomad import NomadTarget, NomadTargetConfig, default_groups
from services.autoscaler.targets.nomad_api import PythonNomadApi
from tests.autoscaler_fakes import OD, PE, POOL, Clock, FakeLock, FakeSource
from tests.doubles.nomad_double import ManualClock, NomadDouble, gpu_service_job

START_S = 5.0
MIN_HEALTHY_S = 10.0
WINDOW_S = 30.0
COOLDOWN_S = 5.0


@pytest.fixture
def wall() -> ManualClock:
    """The double's (and the Nomad target's) wall clock."""
    return ManualClock()


@pytest.fixture
def nomad(wall: ManualClock) -> Iterator[NomadDouble]:
    """Four on-demand GPUs, two preemptible GPUs; asr-small at 1 on-demand + 0 preemptible."""
    with NomadDouble(clock=wall, start_delay_s=START_S, stop_delay_s=20.0) as double:
        double.add_node("od-1", pool="gpu-ondemand", gpus=4)
        double.add_node("spot-1", pool="gpu-preemptible", gpus=2)
        double.register_job(
            gpu_service_job(
                "asr-small-ondemand",
                node_pool="gpu-ondemand",
                scaling=(1, 4),
                min_healthy_s=MIN_HEALTHY_S,
            )
        )
        double.register_job(
            gpu_service_job(
                "asr-small-preemptible",
                node_pool="gpu-preemptible",
                count=0,
                scaling=(0, 8),
                min_healthy_s=MIN_HEALTHY_S,
                progress_deadline_s=240,
            )
        )
        double.advance(START_S + MIN_HEALTHY_S + 1)
        yield double


@dataclass
class Mesh:
    nomad: NomadDouble
    loop: EvaluationLoop
    source: FakeSource
    clock: Clock

    async def tick(self, seconds: float = 1.0) -> None:
        self.nomad.advance(seconds)
        self.clock.advance(seconds)
        await self.loop.evaluate_once()

    def count(self, job: str) -> int:
        return int(self.http("GET", f"/v1/job/{job}")["TaskGroups"][0]["Count"])

    def http(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.nomad.url + path, data=data, method=method)
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())

    def records(self, kind: Kind | None = None) -> list[DecisionRecord]:
        return [r for r in self.loop.log.recent() if kind is None or r.kind is kind]


@pytest.fixture
def mesh(nomad: NomadDouble, wall: ManualClock) -> Mesh:
    policy = PoolPolicy(
        on_demand=GroupLimits(min_count=1, max_count=4, lead_time_s=0.0),
        preemptible=GroupLimits(min_count=0, max_count=8, lead_time_s=0.0),
        target_utilisation=1.0,
        burst_sigmas=0.0,
        tolerance=0.0,
        scale_down_window_s=WINDOW_S,
        scale_down_step=4,
    )
    target = NomadTarget(
        PythonNomadApi(nomad.url),
        NomadTargetConfig(groups=default_groups((POOL,)), autoscaler_id="test"),
        clock=wall,
    )
    source, clock = FakeSource(), Clock()
    loop = EvaluationLoop(
        LoopConfig(
            pools=(PoolSpec(POOL, policy, fallback_max_streams=1),),
            cooldown_s=COOLDOWN_S,
            scaling_timeout_s=60.0,
        ),
        source,
        target,
        FakeLock(),
        clock=clock,
    )
    return Mesh(nomad, loop, source, clock)


async def test_a_burst_goes_preemptible_falls_back_to_on_demand_and_moves_back(
    mesh: Mesh,
) -> None:
    mesh.source.demand(active=1, queued=4)  # 5 streams, 1 per instance
    await mesh.tick()
    assert (mesh.count("asr-small-ondemand"), mesh.count("asr-small-preemptible")) == (1, 4)

    # spot-1 has room for two: the other two allocations are blocked.
    await mesh.tick()
    fallback = mesh.records(Kind.SCALE)[-1]
    assert "preemptible placements failing" in fallback.reason
    assert "on on-demand instead" in fallback.reason
    outcomes = {a.group: (a.desired, a.outcome) for a in fallback.actions}
    assert outcomes[OD] == (4, Outcome.APPLIED)
    assert mesh.count("asr-small-ondemand") == 4
    assert mesh.count("asr-small-preemptible") == 4  # kept requested for when room returns

    mesh.source.demand(active=5)
    for _ in range(3):
        await mesh.tick(START_S)
    assert mesh.count("asr-small-ondemand") == 4  # still needed: the spot capacity is short

    mesh.nomad.add_node("spot-2", pool="gpu-preemptible", gpus=2)  # capacity returns
    # Telemetry: every instance serves once Nomad runs it (the loop takes the smaller).
    instances = tuple(
        InstanceLoad(f"{cc}-{i}", cc, 1, 1, serving=True)
        for cc in ("on-demand", "preemptible")
        for i in range(4)
    )
    mesh.source.loads[POOL] = PoolLoad(
        POOL, active_streams=5, max_streams=1, age_s=0.5, instances=instances
    )
    for _ in range(30):
        await mesh.tick(START_S)
        if mesh.count("asr-small-ondemand") == 1:
            break
    assert (mesh.count("asr-small-ondemand"), mesh.count("asr-small-preemptible")) == (1, 4)
    back = next(
        r for r in reversed(mesh.records(Kind.SCALE)) if r.actions[0].outcome is Outcome.APPLIED
    )
    shrink = back.actions[0]
    assert shrink.desired == 1 and shrink.drain == shrink.current - 1  # drained, not killed
    assert f"-{shrink.drain} on-demand (drain {shrink.drain})" in back.reason
    assert "placements failing" not in back.reason
    view = mesh.loop.view(POOL)
    by_group = {g.group: g for g in view.groups}
    assert not by_group[PE].placement_failing and by_group[PE].serving == 4


async def test_a_manual_scale_is_adopted_and_not_fought_within_a_window(mesh: Mesh) -> None:
    mesh.source.demand(active=1)
    for _ in range(int(WINDOW_S // 5) + 1):
        await mesh.tick(5.0)  # a whole window observed at one instance
    mesh.http(
        "POST",
        "/v1/job/asr-small-ondemand/scale",
        {"Count": 3, "Target": {"Group": "asr"}, "Message": "operator: load test"},
    )
    await mesh.tick()
    (adopted,) = mesh.records(Kind.ADOPT)
    assert "asr_small/on-demand: 1 -> 3 (operator: load test)" in adopted.reason
    assert adopted.actions[0].outcome is Outcome.NO_CHANGE

    for _ in range(int(WINDOW_S // 5) - 1):
        await mesh.tick(5.0)
    assert mesh.count("asr-small-ondemand") == 3  # the operator's count stands a window
    for _ in range(4):
        await mesh.tick(5.0)
    assert mesh.count("asr-small-ondemand") == 1
    assert len(mesh.records(Kind.ADOPT)) == 1  # our own scaling event is not adopted back


async def test_a_scale_refused_during_a_deployment_is_recorded_and_retried(mesh: Mesh) -> None:
    mesh.source.demand(active=1, queued=1)
    await mesh.tick()
    assert mesh.count("asr-small-preemptible") == 1
    mesh.source.demand(active=1, queued=2)  # more, while that count's deployment runs
    await mesh.tick()
    refused = mesh.records(Kind.SCALE)[-1].actions[1]
    assert (refused.group, refused.outcome) == (PE, Outcome.REFUSED)
    assert refused.detail.startswith("deployment-active: job scaling blocked")
    assert mesh.count("asr-small-preemptible") == 1
    for _ in range(10):
        await mesh.tick(2.0)
        if mesh.count("asr-small-preemptible") == 2:
            break
    assert mesh.count("asr-small-preemptible") == 2
    assert mesh.count("asr-small-ondemand") == 1
