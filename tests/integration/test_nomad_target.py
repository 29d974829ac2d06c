"""The Nomad scale target through python-nomad against the Nomad API test double.

Every test runs the real target and its real client wrapper over HTTP against
:class:`~tests.doubles.nomad_double.NomadDouble` (a double, not Nomad), with a
manual clock shared by both so that starts, health and deadlines are stepped,
never slept on.
"""

from __future__ import annotations

import http.server
import json
import math
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from services.autoscaler.targets.base import (
    GroupStatus,
    Refusal,
    ScaleOutcome,
    TargetUnavailable,
)
from services.autoscaler.targets.nomad import (
    MARKER_KEY,
    NomadTarget,
    NomadTargetConfig,
    default_groups,
)
from services.autoscaler.targets.nomad_api import JobState, Json, PythonNomadApi
from tests.doubles.nomad_double import ManualClock, NomadDouble, gpu_service_job

ON_DEMAND = "asr_small/on-demand"
PREEMPTIBLE = "asr_small/preemptible"
START_S = 5.0
MIN_HEALTHY_S = 10.0
SETTLE_S = START_S + MIN_HEALTHY_S + 1


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def nomad(clock: ManualClock) -> Iterator[NomadDouble]:
    """Four on-demand GPUs and two preemptible GPUs, asr-small at 1 + 0 instances."""
    with NomadDouble(clock=clock, start_delay_s=START_S, stop_delay_s=30.0) as double:
        double.add_node("od-1", pool="gpu-ondemand", gpus=4)
        double.add_node("spot-1", pool="gpu-preemptible", gpus=2)
        double.register_job(
            gpu_service_job("asr-small-ondemand", node_pool="gpu-ondemand", scaling=(1, 4))
        )
        double.register_job(
            gpu_service_job(
                "asr-small-preemptible",
                node_pool="gpu-preemptible",
                count=0,
                scaling=(0, 8),
                progress_deadline_s=240,
            )
        )
        double.advance(SETTLE_S)
        yield double


def _target(
    nomad: NomadDouble, clock: ManualClock, api: PythonNomadApi | None = None
) -> NomadTarget:
    config = NomadTargetConfig(
        groups=default_groups(("asr_small",)), autoscaler_id="test", pending_deadline_s=120
    )
    return NomadTarget(api or PythonNomadApi(nomad.url), config, clock=clock)


@pytest.fixture
def target(nomad: NomadDouble, clock: ManualClock) -> NomadTarget:
    return _target(nomad, clock)


def _http(nomad: NomadDouble, method: str, path: str, body: Json | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(nomad.url + path, data=data, method=method)
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def _set_eligibility(nomad: NomadDouble, node_name: str, eligibility: str) -> None:
    nodes = {n["Name"]: n["ID"] for n in _http(nomad, "GET", "/v1/nodes")}
    _http(nomad, "POST", f"/v1/node/{nodes[node_name]}/eligibility", {"Eligibility": eligibility})


async def _group(target: NomadTarget, name: str) -> GroupStatus:
    return (await target.status())[name]


async def test_status_reports_running_and_desired_counts_and_bounds(target: NomadTarget) -> None:
    status = await target.status()
    assert set(status) == {ON_DEMAND, PREEMPTIBLE}
    on_demand = status[ON_DEMAND]
    assert (on_demand.desired, on_demand.running, on_demand.placed, on_demand.healthy) == (
        1,
        1,
        1,
        1,
    )
    assert (on_demand.min_count, on_demand.max_count) == (1, 4)
    assert on_demand.pool == "asr_small"
    assert not on_demand.deployment_active and not on_demand.placement_failing
    assert status[PREEMPTIBLE].desired == 0


async def test_scaling_up_counts_desired_before_running(
    target: NomadTarget, nomad: NomadDouble
) -> None:
    result = await target.scale(PREEMPTIBLE, 2, "queue of 6 streams")
    assert result.outcome is ScaleOutcome.APPLIED
    assert (result.previous, result.count) == (0, 2)

    starting = await _group(target, PREEMPTIBLE)
    assert (starting.desired, starting.placed, starting.pending, starting.running) == (2, 2, 2, 0)
    assert starting.deployment_active

    nomad.advance(START_S)
    running = await _group(target, PREEMPTIBLE)
    assert (running.running, running.pending, running.healthy) == (2, 0, 0)

    nomad.advance(MIN_HEALTHY_S)
    healthy = await _group(target, PREEMPTIBLE)
    assert healthy.healthy == 2 and not healthy.deployment_active


async def test_scaling_down_stops_instances(target: NomadTarget, nomad: NomadDouble) -> None:
    assert (await target.scale(ON_DEMAND, 2, "up")).outcome is ScaleOutcome.APPLIED
    nomad.advance(SETTLE_S)
    assert (await _group(target, ON_DEMAND)).running == 2

    result = await target.scale(ON_DEMAND, 1, "idle")
    assert result.outcome is ScaleOutcome.APPLIED and result.previous == 2
    status = await _group(target, ON_DEMAND)
    assert (status.desired, status.running) == (1, 1)


async def test_a_second_scale_during_the_deployment_is_refused(
    target: NomadTarget, nomad: NomadDouble
) -> None:
    assert (await target.scale(ON_DEMAND, 2, "up")).outcome is ScaleOutcome.APPLIED

    refused = await target.scale(ON_DEMAND, 3, "more")
    assert refused.outcome is ScaleOutcome.REFUSED
    assert refused.refusal is Refusal.DEPLOYMENT_ACTIVE
    assert refused.detail == "job scaling blocked due to active deployment"
    assert (await _group(target, ON_DEMAND)).desired == 2

    nomad.advance(SETTLE_S)
    assert (await target.scale(ON_DEMAND, 3, "more")).outcome is ScaleOutcome.APPLIED


async def test_counts_outside_the_scaling_bounds_are_clamped(
    target: NomadTarget, nomad: NomadDouble
) -> None:
    high = await target.scale(ON_DEMAND, 10, "spike")
    assert high.outcome is ScaleOutcome.APPLIED
    assert (high.requested, high.count) == (10, 4)
    assert "clamped" in high.detail

    nomad.advance(SETTLE_S)
    low = await target.scale(ON_DEMAND, 0, "night")
    assert (low.outcome, low.count) == (ScaleOutcome.APPLIED, 1)

    unchanged = await target.scale(ON_DEMAND, -3, "night")
    assert (unchanged.outcome, unchanged.count) == (ScaleOutcome.UNCHANGED, 1)


async def test_bounds_changed_behind_our_back_come_back_as_a_refusal(
    nomad: NomadDouble, clock: ManualClock
) -> None:
    class StaleBounds(PythonNomadApi):
        """Reads the job as it was before someone lowered the scaling maximum."""

        async def read_job(self, job_id: str) -> Json | None:
            job = await super().read_job(job_id)
            assert job is not None
            job["TaskGroups"][0]["Scaling"]["Max"] = 10
            return job

    target = _target(nomad, clock, StaleBounds(nomad.url))
    result = await target.scale(ON_DEMAND, 6, "spike")
    assert result.outcome is ScaleOutcome.REFUSED
    assert result.refusal is Refusal.OUT_OF_BOUNDS
    assert result.detail == "group count was greater than scaling policy maximum: 6 > 4"


async def test_unknown_group_and_disabled_scaling_are_refused(
    target: NomadTarget, nomad: NomadDouble
) -> None:
    unknown = await target.scale("asr_huge/on-demand", 1, "x")
    assert (unknown.outcome, unknown.refusal) == (ScaleOutcome.REFUSED, Refusal.UNKNOWN_GROUP)

    job = gpu_service_job("asr-small-ondemand", node_pool="gpu-ondemand", scaling=(1, 4))
    job["TaskGroups"][0]["Scaling"]["Enabled"] = False
    nomad.register_job(job)
    disabled = await target.scale(ON_DEMAND, 2, "x")
    assert (disabled.outcome, disabled.refusal) == (ScaleOutcome.REFUSED, Refusal.DISABLED)


async def test_our_scaling_events_carry_the_marker_and_are_not_external(
    target: NomadTarget, nomad: NomadDouble
) -> None:
    await target.scale(ON_DEMAND, 2, "queue of 3", {"decision": "d-17"})
    events = _http(nomad, "GET", "/v1/job/asr-small-ondemand/scale")["TaskGroups"]["asr"]["Events"]
    assert events[0]["Meta"] == {"decision": "d-17", MARKER_KEY: "test"}
    assert events[0]["Message"] == "queue of 3"
    assert (await _group(target, ON_DEMAND)).external_change is None


async def test_a_manual_scale_is_reported_as_an_external_change(
    target: NomadTarget, nomad: NomadDouble
) -> None:
    await target.scale(ON_DEMAND, 2, "ours")
    nomad.advance(SETTLE_S)
    _http(
        nomad,
        "POST",
        "/v1/job/asr-small-ondemand/scale",
        {
            "Count": 3,
            "Target": {"Group": "asr"},
            "Message": "ops: game night",
            "Meta": {"who": "ana"},
        },
    )

    change = (await _group(target, ON_DEMAND)).external_change
    assert change is not None
    assert (change.count, change.previous_count, change.message) == (3, 2, "ops: game night")
    assert change.meta == {"who": "ana"}

    nomad.advance(SETTLE_S)
    await target.scale(ON_DEMAND, 4, "adopted and raised")
    assert (await _group(target, ON_DEMAND)).external_change is None


async def test_a_count_reset_by_job_registration_is_an_external_change(
    target: NomadTarget, nomad: NomadDouble, clock: ManualClock
) -> None:
    await target.scale(ON_DEMAND, 3, "ours")
    nomad.advance(SETTLE_S)
    nomad.register_job(
        gpu_service_job("asr-small-ondemand", node_pool="gpu-ondemand", scaling=(1, 4))
    )

    change = (await _group(target, ON_DEMAND)).external_change
    assert change is not None
    assert (change.count, change.previous_count) == (1, 3)
    assert "job registration" in change.message
    assert change.time == pytest.approx(clock(), abs=1e-3)


async def test_no_gpu_room_on_preemptible_nodes_is_a_placement_failure(
    target: NomadTarget, nomad: NomadDouble
) -> None:
    await target.scale(PREEMPTIBLE, 4, "burst")
    status = await _group(target, PREEMPTIBLE)
    assert (status.desired, status.placed) == (4, 2)
    assert status.placement_failing
    assert "'devices: no devices match request' exhausted on 1 node(s)" in status.placement_reason
    assert "2 allocation(s) not placed" in status.placement_reason
    assert "blocked evaluation" in status.placement_reason

    # The deployment cannot finish, so this job is stuck; the on-demand job is not.
    stuck = await target.scale(PREEMPTIBLE, 2, "fewer")
    assert stuck.refusal is Refusal.DEPLOYMENT_ACTIVE
    fallback = await target.scale(ON_DEMAND, 3, "preemptible placements failing")
    assert fallback.outcome is ScaleOutcome.APPLIED

    nomad.add_node("spot-2", pool="gpu-preemptible", gpus=2)
    recovered = await _group(target, PREEMPTIBLE)
    assert not recovered.placement_failing and recovered.placement_reason == ""
    assert recovered.placed == 4


async def test_nodes_without_a_fitting_gpu_are_reported_as_missing_devices(
    target: NomadTarget, nomad: NomadDouble
) -> None:
    job = gpu_service_job(
        "asr-small-preemptible",
        node_pool="gpu-preemptible",
        count=0,
        scaling=(0, 8),
        gpu_memory="24 GiB",
    )
    nomad.register_job(job)
    nomad.advance(SETTLE_S)
    await target.scale(PREEMPTIBLE, 1, "burst")
    status = await _group(target, PREEMPTIBLE)
    assert status.placement_failing
    assert "constraint 'missing devices' filtered 1 node(s)" in status.placement_reason

    nomad.add_node("spot-big", pool="gpu-preemptible", gpus=1, gpu_memory_mib=40960)
    assert not (await _group(target, PREEMPTIBLE)).placement_failing


async def test_allocations_pending_past_the_deadline_are_a_placement_failure(
    target: NomadTarget, nomad: NomadDouble
) -> None:
    nomad.add_node("od-slow", pool="gpu-ondemand", gpus=4, start_delay_s=math.inf)
    _set_eligibility(nomad, "od-1", "ineligible")  # the new instances go to od-slow
    assert (await _group(target, ON_DEMAND)).oldest_pending_s == 0.0, "none pending"
    await target.scale(ON_DEMAND, 3, "spike")
    nomad.advance(60)
    early = await _group(target, ON_DEMAND)
    assert early.pending == 2 and not early.placement_failing
    assert early.oldest_pending_s == pytest.approx(60, abs=1e-3), "from CreateTime"

    nomad.advance(61)
    late = await _group(target, ON_DEMAND)
    assert late.placement_failing
    assert late.placement_reason == "2 allocation(s) pending for more than 120 s"
    assert late.oldest_pending_s == pytest.approx(121, abs=1e-3)


async def test_a_drained_preemptible_node_is_reclaiming(
    target: NomadTarget, nomad: NomadDouble, clock: ManualClock
) -> None:
    await target.scale(PREEMPTIBLE, 2, "burst")
    nomad.advance(SETTLE_S)
    assert await target.reclaiming() == []

    spot = next(n for n in _http(nomad, "GET", "/v1/nodes") if n["Name"] == "spot-1")
    _http(nomad, "POST", f"/v1/node/{spot['ID']}/drain", {"DrainSpec": {"Deadline": 120 * 10**9}})

    # migrate.max_parallel = 1: Nomad stops one at once (no longer in its Running count),
    # the other keeps serving until its replacement is healthy or the deadline passes.
    (reclaim,) = await target.reclaiming()
    assert (reclaim.group, reclaim.node, reclaim.reason) == (PREEMPTIBLE, "spot-1", "node draining")
    assert reclaim.deadline == pytest.approx(clock() + 120, abs=1e-3)
    status = await _group(target, PREEMPTIBLE)
    assert status.running == 1
    # Nowhere else to go: the replacements are blocked, so the loop falls back to on-demand.
    assert status.placement_failing

    nomad.advance(31)  # the stopped instance has drained and exited; the other still serves
    assert [r.instance_id for r in await target.reclaiming()] == [reclaim.instance_id]
    nomad.advance(90)  # past the deadline: Nomad stops the last one too
    assert await target.reclaiming() == []


async def test_allocations_nomad_is_stopping_are_not_reclaiming(
    target: NomadTarget, nomad: NomadDouble
) -> None:
    """Nomad's Running count leaves out an allocation it stops (DesiredStatus stop);
    reporting it reclaimed too would take it off serving twice for its kill_timeout."""
    await target.scale(PREEMPTIBLE, 2, "burst")
    nomad.advance(SETTLE_S)
    assert (await target.scale(PREEMPTIBLE, 1, "idle")).outcome is ScaleOutcome.APPLIED
    _set_eligibility(nomad, "spot-1", "ineligible")

    (reclaim,) = await target.reclaiming()
    allocs = _http(nomad, "GET", "/v1/job/asr-small-preemptible/allocations")
    still_run = [a["ID"] for a in allocs if a["DesiredStatus"] == "run"]
    assert [reclaim.instance_id] == still_run
    assert (await _group(target, PREEMPTIBLE)).running == 1


async def test_a_force_drain_stops_at_once_and_leaves_nothing_to_reclaim(
    target: NomadTarget, nomad: NomadDouble, clock: ManualClock
) -> None:
    await target.scale(PREEMPTIBLE, 1, "burst")
    nomad.advance(SETTLE_S)
    spot = next(n for n in _http(nomad, "GET", "/v1/nodes") if n["Name"] == "spot-1")
    started = clock()
    _http(nomad, "POST", f"/v1/node/{spot['ID']}/drain", {"DrainSpec": {"Deadline": -1}})
    strategy = _http(nomad, "GET", f"/v1/node/{spot['ID']}")["DrainStrategy"]
    assert strategy["ForceDeadline"] == "0001-01-01T00:00:00Z", "Nomad sets it only for > 0"
    assert await target.reclaiming() == []
    assert (await _group(target, PREEMPTIBLE)).running == 0

    class BeforeThePlan(PythonNomadApi):
        """Reads the allocations as they were before the drain's plan stopped them."""

        async def job_state(self, job_id: str) -> JobState:
            state = await super().job_state(job_id)
            for alloc in state.allocations:
                if (alloc.get("DesiredTransition") or {}).get("Migrate"):
                    alloc["DesiredStatus"] = "run"
            return state

    (reclaim,) = await _target(nomad, clock, BeforeThePlan(nomad.url)).reclaiming()
    assert reclaim.reason == "node draining"
    assert reclaim.deadline == pytest.approx(started, abs=1e-3)


async def test_a_stopped_job_reports_its_group_stopped_and_is_not_scaled(
    target: NomadTarget, nomad: NomadDouble
) -> None:
    await target.scale(ON_DEMAND, 2, "up")
    nomad.advance(SETTLE_S)
    _http(nomad, "DELETE", "/v1/job/asr-small-ondemand")  # `nomad job stop`, no purge

    status = await _group(target, ON_DEMAND)
    assert (status.desired, status.running, status.placed, status.pending) == (0, 0, 0, 0)
    assert status.placement_failing and not status.deployment_active
    assert status.placement_reason == "job asr-small-ondemand is stopped"

    version = _http(nomad, "GET", "/v1/job/asr-small-ondemand")["Version"]
    refused = await target.scale(ON_DEMAND, 3, "queue of 9")
    assert (refused.outcome, refused.refusal) == (ScaleOutcome.REFUSED, Refusal.REJECTED)
    assert refused.detail == "job asr-small-ondemand is stopped"
    assert _http(nomad, "GET", "/v1/job/asr-small-ondemand")["Version"] == version, "not sent"

    nomad.register_job(  # `nomad job run` starts it again
        gpu_service_job("asr-small-ondemand", node_pool="gpu-ondemand", scaling=(1, 4))
    )
    again = await _group(target, ON_DEMAND)
    assert (again.desired, again.placement_failing) == (1, False)
    assert (await target.scale(ON_DEMAND, 1, "x")).outcome is ScaleOutcome.UNCHANGED


async def test_an_ineligible_preemptible_node_is_reclaiming_and_on_demand_is_not(
    target: NomadTarget, nomad: NomadDouble
) -> None:
    await target.scale(PREEMPTIBLE, 1, "burst")
    for name in ("spot-1", "od-1"):
        _set_eligibility(nomad, name, "ineligible")

    (reclaim,) = await target.reclaiming()
    assert (reclaim.group, reclaim.node, reclaim.reason, reclaim.deadline) == (
        PREEMPTIBLE,
        "spot-1",
        "node ineligible",
        None,
    )


async def test_preemptible_nodes_can_be_recognised_by_node_meta(
    nomad: NomadDouble, clock: ManualClock
) -> None:
    nomad.add_node("spot-meta", pool="gpu-ondemand", gpus=1, meta={"capacity": "spot"})
    config = NomadTargetConfig(
        groups=default_groups(("asr_small",)), preemptible_node_meta={"capacity": "spot"}
    )
    target = NomadTarget(PythonNomadApi(nomad.url), config, clock=clock)
    _set_eligibility(nomad, "od-1", "ineligible")  # the new instance goes to spot-meta
    await target.scale(ON_DEMAND, 2, "up")
    _set_eligibility(nomad, "spot-meta", "ineligible")
    (reclaim,) = await target.reclaiming()
    assert (reclaim.node, reclaim.group) == ("spot-meta", ON_DEMAND)


async def test_an_unreachable_nomad_raises_target_unavailable(
    nomad: NomadDouble, clock: ManualClock
) -> None:
    url = nomad.url
    nomad.close()
    target = _target(nomad, clock, PythonNomadApi(url, timeout_s=2))
    with pytest.raises(TargetUnavailable):
        await target.status()


async def test_a_200_that_is_not_json_raises_target_unavailable() -> None:
    """Something other than Nomad answering (a proxy's HTML page) is an unavailable target."""

    class NotNomad(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = b"<html>sign in</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotNomad)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02})
    thread.start()
    try:
        api = PythonNomadApi(f"http://127.0.0.1:{server.server_address[1]}", timeout_s=2)
        with pytest.raises(TargetUnavailable):
            await api.job_state("asr-small-ondemand")
        with pytest.raises(TargetUnavailable):
            await api.scale_job("asr-small-ondemand", {"Count": 1, "Target": {"Group": "asr"}})
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_the_double_answers_errors_in_plain_text_with_nomad_headers(nomad: NomadDouble) -> None:
    with pytest.raises(urllib.error.HTTPError) as info:
        _http(nomad, "GET", "/v1/job/nope")
    assert info.value.code == 404
    assert info.value.read() == b"job not found"
    assert info.value.headers["Content-Type"].startswith("text/plain")

    with urllib.request.urlopen(nomad.url + "/v1/job/asr-small-ondemand", timeout=5) as response:
        assert int(response.headers["X-Nomad-Index"]) >= 1
        assert response.headers["X-Nomad-KnownLeader"] == "true"
        assert response.headers["X-Nomad-LastContact"] == "0"
