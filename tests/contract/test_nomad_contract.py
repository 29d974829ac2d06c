"""Contract tests of the Nomad scale target against the documented Nomad HTTP API.

The real :class:`~services.autoscaler.targets.nomad.NomadTarget` over its real
client wrapper (:class:`~services.autoscaler.targets.nomad_api.PythonNomadApi`)
runs each scenario against whatever ``nomad_agent`` (``tests/contract/conftest.py``)
yields:

- by default (CI), :class:`~tests.doubles.nomad_double.NomadDouble`, a test
  double of the Nomad API (a double, not Nomad) with one client node in the
  ``default`` node pool, ``dc1``, no GPUs, on the real clock;
- with ``VOXMESH_CONTRACT_NOMAD=http://127.0.0.1:4646``, a real Nomad 1.6+
  agent in dev mode (``nomad agent -dev``: ``raw_exec``, node pool ``default``).

Nothing here is specific to the double: jobs are registered with ``POST
/v1/jobs`` (API JSON, durations in nanoseconds), the tests wait by polling
documented endpoints with a deadline (``Agent.within``), assert on those
endpoints and on what the target reports, and purge every job they registered
(``DELETE /v1/job/:id?purge=true``), also when a test fails. Each test has its
own job ID from ``unique()``; the tasks are ``/bin/sleep`` under ``raw_exec``
with tiny resources, and ``min_healthy_time`` is 1 s so deployments end quickly.
"""

from __future__ import annotations

import functools
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from services.autoscaler.targets.base import (
    CapacityClass,
    GroupStatus,
    Refusal,
    ScaleOutcome,
)
from services.autoscaler.targets.nomad import (
    MARKER_KEY,
    NomadGroup,
    NomadTarget,
    NomadTargetConfig,
    default_groups,
)
from services.autoscaler.targets.nomad_api import Json, PythonNomadApi
from tests.conditions import wait_until_async
from tests.contract.conftest import Agent, unique

NS = 1_000_000_000
MAX_COUNT = 3
"""The ``scaling`` block's ``max`` of every test job."""
AUTOSCALER_ID = unique("voxmesh-contract")
"""The target's marker value (:data:`MARKER_KEY`), unique to this run."""
POLL_S = 0.05
NEVER = {"LTarget": "${meta.voxmesh_contract}", "RTarget": "never", "Operand": "="}
"""A constraint no node satisfies (no node has that meta entry)."""


# --------------------------------------------------------------- the Nomad API


def _http(agent: Agent, method: str, path: str, body: Json | None = None) -> Any:
    """One API call; the decoded JSON answer (an error status raises ``HTTPError``)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(agent.url + path, data=data, method=method)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _http_error(agent: Agent, method: str, path: str, body: Json | None = None) -> tuple[int, str]:
    """One API call that must fail: its status and plain-text body."""
    with pytest.raises(urllib.error.HTTPError) as info:
        _http(agent, method, path, body)
    return info.value.code, info.value.read().decode().strip()


def _scale_status(agent: Agent, group: NomadGroup) -> Json:
    """``GET /v1/job/:id/scale``: the group's entry of ``TaskGroups``."""
    status: Json = _http(agent, "GET", f"/v1/job/{group.job_id}/scale")["TaskGroups"][
        group.task_group
    ]
    return status


def _deployment_of_current_version_is(agent: Agent, job_id: str, status: str) -> bool:
    """Whether the latest deployment is the current job version's and has ``status``.

    A count change makes a new job version; until the scheduler has processed it,
    the latest deployment is the previous version's.
    """
    version = _http(agent, "GET", f"/v1/job/{job_id}")["Version"]
    deployment = _http(agent, "GET", f"/v1/job/{job_id}/deployment")
    return (
        deployment is not None
        and deployment["JobVersion"] == version
        and deployment["Status"] == status
    )


def _running(agent: Agent, group: NomadGroup, count: int) -> bool:
    return bool(_scale_status(agent, group)["Running"] == count)


def _blocked_on(agent: Agent, group: NomadGroup) -> bool:
    """Whether a blocked evaluation of the job holds failed placements of the group."""
    evaluations = _http(agent, "GET", f"/v1/job/{group.job_id}/evaluations")
    return any(
        e["Status"] == "blocked" and group.task_group in (e.get("FailedTGAllocs") or {})
        for e in evaluations
    )


async def _settled(agent: Agent, group: NomadGroup) -> None:
    """Waits for the current job version's deployment to succeed (counts may change again)."""
    await wait_until_async(
        functools.partial(_deployment_of_current_version_is, agent, group.job_id, "successful"),
        timeout=agent.within,
        interval=POLL_S,
    )


def _job(
    group: NomadGroup,
    *,
    count: int,
    min_healthy_s: float = 1.0,
    constraints: list[Json] | None = None,
) -> Json:
    """A service job (API JSON) with the group's one task group: a ``/bin/sleep`` task."""
    task_group: Json = {
        "Name": group.task_group,
        "Count": count,
        "Scaling": {"Min": 0, "Max": MAX_COUNT, "Enabled": True, "Policy": {}},
        "Update": {
            "MaxParallel": 1,
            "HealthCheck": "task_states",
            "MinHealthyTime": int(min_healthy_s * NS),
            "HealthyDeadline": 60 * NS,
            "ProgressDeadline": 120 * NS,
        },
        "Tasks": [
            {
                "Name": "sleep",
                "Driver": "raw_exec",
                "Config": {"command": "/bin/sleep", "args": ["3600"]},
                "Resources": {"CPU": 20, "MemoryMB": 32},
            }
        ],
    }
    if constraints:
        task_group["Constraints"] = constraints
    return {
        "ID": group.job_id,
        "Name": group.job_id,
        "Type": "service",
        "Datacenters": ["*"],
        "NodePool": "default",
        "TaskGroups": [task_group],
    }


class _Jobs:
    """Registers jobs through the API; :meth:`purge` removes every one of them."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent
        self._ids: list[str] = []

    def register(self, job: Json) -> None:
        self._ids.append(job["ID"])  # before the call: a half-done registration is purged too
        _http(self._agent, "POST", "/v1/jobs", {"Job": job})

    def purge(self) -> None:
        failed = []
        for job_id in self._ids:
            try:
                _http(self._agent, "DELETE", f"/v1/job/{job_id}?purge=true")
            except (urllib.error.URLError, OSError) as exc:
                failed.append(f"{job_id}: {exc}")
        assert not failed, f"jobs left on the agent: {failed}"


# ------------------------------------------------------------------- fixtures


@pytest.fixture
def jobs(nomad_agent: Agent) -> Iterator[_Jobs]:
    registry = _Jobs(nomad_agent)
    try:
        yield registry
    finally:
        registry.purge()


@pytest.fixture
def group() -> NomadGroup:
    """asr_small's on-demand group as ``default_groups`` lays it out, under a unique job ID."""
    layout = next(
        g for g in default_groups(("asr_small",)) if g.capacity_class is CapacityClass.ON_DEMAND
    )
    return replace(layout, job_id=unique(layout.job_id))


@pytest.fixture
def target(nomad_agent: Agent, group: NomadGroup) -> NomadTarget:
    config = NomadTargetConfig(groups=(group,), autoscaler_id=AUTOSCALER_ID)
    return NomadTarget(PythonNomadApi(nomad_agent.url), config)


async def _status(target: NomadTarget, group: NomadGroup) -> GroupStatus:
    return (await target.status())[group.name]


# ---------------------------------------------------------------------- tests


async def test_status_reports_counts_and_scaling_bounds_once_the_allocation_runs(
    nomad_agent: Agent, jobs: _Jobs, group: NomadGroup, target: NomadTarget
) -> None:
    jobs.register(_job(group, count=1))
    await _settled(nomad_agent, group)

    status = await _status(target, group)
    assert (status.name, status.pool, status.capacity_class) == (
        "asr_small/on-demand",
        "asr_small",
        CapacityClass.ON_DEMAND,
    )
    assert (status.desired, status.running, status.placed, status.healthy, status.pending) == (
        1,
        1,
        1,
        1,
        0,
    )
    assert (status.min_count, status.max_count) == (0, MAX_COUNT)
    assert status.oldest_pending_s == 0.0
    assert not status.placement_failing and status.placement_reason == ""
    assert not status.deployment_active
    assert status.external_change is None, "a registration records no scaling event"


async def test_scale_up_is_applied_recorded_with_our_marker_and_runs(
    nomad_agent: Agent, jobs: _Jobs, group: NomadGroup, target: NomadTarget
) -> None:
    jobs.register(_job(group, count=0))  # no allocation, so no deployment to wait out

    result = await target.scale(group.name, 2, "queue of 6 streams", {"decision": "d-17"})
    assert result.outcome is ScaleOutcome.APPLIED
    assert (result.requested, result.count, result.previous, result.refusal) == (2, 2, 0, None)

    scale = _scale_status(nomad_agent, group)
    assert scale["Desired"] == 2
    event = scale["Events"][0]  # newest first
    assert (event["Count"], event["PreviousCount"], event["Error"]) == (2, 0, False)
    assert event["Message"] == "queue of 6 streams"
    assert event["Meta"] == {"decision": "d-17", MARKER_KEY: AUTOSCALER_ID}
    assert event["EvalID"], "a count change creates an evaluation"

    await wait_until_async(
        functools.partial(_running, nomad_agent, group, 2),
        timeout=nomad_agent.within,
        interval=POLL_S,
    )
    status = await _status(target, group)
    assert (status.desired, status.running) == (2, 2)
    assert status.external_change is None, "our own change"


async def test_a_scale_during_the_deployment_is_refused_until_it_succeeds(
    nomad_agent: Agent, jobs: _Jobs, group: NomadGroup, target: NomadTarget
) -> None:
    # 3 s of min_healthy_time keep the deployment running well past the refused call.
    jobs.register(_job(group, count=0, min_healthy_s=3.0))
    assert (await target.scale(group.name, 1, "first")).outcome is ScaleOutcome.APPLIED
    await wait_until_async(
        functools.partial(_deployment_of_current_version_is, nomad_agent, group.job_id, "running"),
        timeout=nomad_agent.within,
        interval=POLL_S,
    )
    assert (await _status(target, group)).deployment_active

    refused = await target.scale(group.name, 2, "more")
    assert refused.outcome is ScaleOutcome.REFUSED
    assert refused.refusal is Refusal.DEPLOYMENT_ACTIVE
    assert refused.detail == "job scaling blocked due to active deployment"
    assert (refused.count, refused.previous) == (2, 1)
    assert _scale_status(nomad_agent, group)["Desired"] == 1

    await _settled(nomad_agent, group)
    assert not (await _status(target, group)).deployment_active
    applied = await target.scale(group.name, 2, "more")
    assert (applied.outcome, applied.previous, applied.count) == (ScaleOutcome.APPLIED, 1, 2)


async def test_a_count_above_the_scaling_maximum_is_clamped(
    nomad_agent: Agent, jobs: _Jobs, group: NomadGroup, target: NomadTarget
) -> None:
    jobs.register(_job(group, count=0))
    # What the clamping spares us: the API refuses a count above the maximum.
    code, text = _http_error(
        nomad_agent,
        "POST",
        f"/v1/job/{group.job_id}/scale",
        {"Count": MAX_COUNT + 1, "Target": {"Group": group.task_group}, "Message": "over"},
    )
    assert (code, text) == (400, "group count was greater than scaling policy maximum: 4 > 3")

    high = await target.scale(group.name, 10, "spike")
    assert high.outcome is ScaleOutcome.APPLIED
    assert (high.requested, high.count, high.previous) == (10, MAX_COUNT, 0)
    assert high.detail == f"clamped from 10 to {MAX_COUNT} (bounds 0..{MAX_COUNT})"
    scale = _scale_status(nomad_agent, group)
    assert scale["Desired"] == MAX_COUNT
    assert len(scale["Events"]) == 1, "the refused call recorded no event"

    # Clamped to the count in force: nothing is sent (no new event, no deployment refusal).
    again = await target.scale(group.name, 7, "spike")
    assert (again.outcome, again.count, again.previous) == (
        ScaleOutcome.UNCHANGED,
        MAX_COUNT,
        MAX_COUNT,
    )
    assert len(_scale_status(nomad_agent, group)["Events"]) == 1


async def test_a_manual_scale_through_the_api_is_reported_as_an_external_change(
    nomad_agent: Agent, jobs: _Jobs, group: NomadGroup, target: NomadTarget
) -> None:
    jobs.register(_job(group, count=0))
    assert (await target.scale(group.name, 1, "ours")).outcome is ScaleOutcome.APPLIED
    assert (await _status(target, group)).external_change is None
    await _settled(nomad_agent, group)

    answer = _http(
        nomad_agent,
        "POST",
        f"/v1/job/{group.job_id}/scale",
        {
            "Count": 2,
            "Target": {"Group": group.task_group},
            "Message": "ops: game night",
            "Meta": {"who": "ana"},
        },
    )
    assert answer["EvalID"]

    status = await _status(target, group)
    assert status.desired == 2
    change = status.external_change
    assert change is not None
    assert (change.count, change.previous_count, change.message) == (2, 1, "ops: game night")
    assert change.meta == {"who": "ana"}
    assert abs(change.time - time.time()) < 60, "event times are nanoseconds since the epoch"


async def test_an_unsatisfiable_constraint_is_a_placement_failure(
    nomad_agent: Agent, jobs: _Jobs, group: NomadGroup, target: NomadTarget
) -> None:
    jobs.register(_job(group, count=0, constraints=[NEVER]))
    assert (await target.scale(group.name, 2, "burst")).outcome is ScaleOutcome.APPLIED
    await wait_until_async(
        functools.partial(_blocked_on, nomad_agent, group),
        timeout=nomad_agent.within,
        interval=POLL_S,
    )

    status = await _status(target, group)
    assert (status.desired, status.placed, status.running) == (2, 0, 0)
    assert status.placement_failing
    reason = status.placement_reason
    assert reason.startswith("2 allocation(s) not placed: "), reason
    assert "constraint '${meta.voxmesh_contract} = never' filtered" in reason
    assert "(blocked evaluation " in reason


async def test_a_job_that_does_not_exist_is_left_out_and_its_group_refused(
    nomad_agent: Agent, group: NomadGroup, target: NomadTarget
) -> None:
    assert _http_error(nomad_agent, "GET", f"/v1/job/{group.job_id}") == (404, "job not found")

    assert await target.status() == {}
    missing = await target.scale(group.name, 1, "x")
    assert (missing.outcome, missing.refusal, missing.previous) == (
        ScaleOutcome.REFUSED,
        Refusal.UNKNOWN_GROUP,
        0,
    )
    unknown = await target.scale("asr_huge/on-demand", 1, "x")
    assert (unknown.outcome, unknown.refusal) == (ScaleOutcome.REFUSED, Refusal.UNKNOWN_GROUP)
