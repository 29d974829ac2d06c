"""The Nomad API test double follows the documented v1.6 behaviour, edge cases included.

These tests call :meth:`NomadDouble.handle` directly (no sockets); the HTTP
layer itself is exercised by ``tests/integration/test_nomad_target.py``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.doubles.nomad_double import (
    ManualClock,
    NomadDouble,
    NomadError,
    blocking_wait,
    gpu_service_job,
    parse_go_duration,
)

JOB = "asr"
NS = 10**9


@pytest.fixture
def nomad() -> Iterator[NomadDouble]:
    """Not started: requests go straight to ``handle``. One node with two GPUs."""
    double = NomadDouble(clock=ManualClock(), start_delay_s=5.0, stop_delay_s=20.0)
    double.add_node("gpu-1", pool="gpu", gpus=2)
    double.register_job(gpu_service_job(JOB, node_pool="gpu", scaling=(1, 4)))
    double.advance(16)
    yield double
    double.close()


def call(nomad: NomadDouble, method: str, path: str, body: Any = None, **query: str) -> Any:
    raw = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    result, _ = nomad.handle(method, path, query, raw)
    return result


def fails(nomad: NomadDouble, method: str, path: str, body: Any = None, **query: str) -> NomadError:
    with pytest.raises(NomadError) as info:
        call(nomad, method, path, body, **query)
    return info.value


def scale(nomad: NomadDouble, count: int | None, job: str = JOB, **extra: Any) -> Any:
    body: dict[str, Any] = {"Target": {"Group": "asr"}, **extra}
    if count is not None:
        body["Count"] = count
    return call(nomad, "POST", f"/v1/job/{job}/scale", body)


def evals(nomad: NomadDouble, job: str = JOB) -> list[dict[str, Any]]:
    return sorted(call(nomad, "GET", f"/v1/job/{job}/evaluations"), key=lambda e: e["CreateIndex"])


def allocs(nomad: NomadDouble, job: str = JOB) -> list[dict[str, Any]]:
    return sorted(call(nomad, "GET", f"/v1/job/{job}/allocations"), key=lambda a: a["Name"])


def node_id(nomad: NomadDouble, name: str) -> str:
    return str(next(n["ID"] for n in call(nomad, "GET", "/v1/nodes") if n["Name"] == name))


def no_deployments(job: str, **kwargs: Any) -> dict[str, Any]:
    """A job whose update strategy is off (max_parallel 0): scaling starts no deployment."""
    spec = gpu_service_job(job, **kwargs)
    spec["Update"]["MaxParallel"] = 0
    return spec


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        ({"Count": 1}, 400, "missing task group name for scaling action"),
        ({"Count": -1, "Target": {"Group": "asr"}}, 400, "scaling action count can't be negative"),
        (
            {"Count": 1, "Error": True, "Target": {"Group": "asr"}},
            400,
            "scaling action should not contain count if error is true",
        ),
        (
            {"Error": "true", "Target": {"Group": "asr"}},
            400,
            "json: cannot unmarshal string into Go struct field ScalingRequest.Error of type bool",
        ),
        (
            {"Count": 1, "Target": {"Group": "nope"}},
            400,
            'task group "nope" specified for scaling does not exist in job',
        ),
        (
            {"Count": 9, "Target": {"Group": "asr"}},
            400,
            "group count was greater than scaling policy maximum: 9 > 4",
        ),
        (
            {"Count": 0, "Target": {"Group": "asr"}},
            400,
            "group count was less than scaling policy minimum: 0 < 1",
        ),
        (
            {"Count": 2, "Target": {"Group": "asr", "Job": "other"}},
            400,
            "job ID in payload did not match URL",
        ),
        (b"", 400, "EOF"),
    ],
)
def test_scale_validation_answers_like_nomad(
    nomad: NomadDouble, body: Any, code: int, message: str
) -> None:
    error = fails(nomad, "POST", f"/v1/job/{JOB}/scale", body)
    assert (error.code, error.message) == (code, message)


def test_scaling_an_unknown_job_is_a_404(nomad: NomadDouble) -> None:
    error = fails(nomad, "PUT", "/v1/job/nope/scale", {"Count": 1, "Target": {"Group": "asr"}})
    assert (error.code, error.message) == (404, 'job "nope" not found')


def test_each_count_change_is_a_new_version_with_a_scaling_evaluation(nomad: NomadDouble) -> None:
    version = call(nomad, "GET", f"/v1/job/{JOB}")["Version"]
    answer = scale(nomad, 2, Message="up", Meta={"k": "v"})

    job = call(nomad, "GET", f"/v1/job/{JOB}")
    assert job["Version"] == version + 1
    assert job["TaskGroups"][0]["Count"] == 2
    assert answer["JobModifyIndex"] == job["JobModifyIndex"]
    latest = evals(nomad)[-1]
    assert (latest["ID"], latest["TriggeredBy"], latest["Status"]) == (
        answer["EvalID"],
        "scaling",
        "complete",
    )
    event = call(nomad, "GET", f"/v1/job/{JOB}/scale")["TaskGroups"]["asr"]["Events"][0]
    assert event["EvalID"] == answer["EvalID"]
    assert (event["Count"], event["PreviousCount"], event["Error"]) == (2, 1, False)
    assert (event["Message"], event["Meta"]) == ("up", {"k": "v"})


def test_a_scale_without_count_only_records_an_event(nomad: NomadDouble) -> None:
    version = call(nomad, "GET", f"/v1/job/{JOB}")["Version"]
    answer = scale(nomad, None, Error=True, Message="metrics source down")
    assert (answer["EvalID"], answer["EvalCreateIndex"]) == ("", 0)
    assert call(nomad, "GET", f"/v1/job/{JOB}")["Version"] == version
    event = call(nomad, "GET", f"/v1/job/{JOB}/scale")["TaskGroups"]["asr"]["Events"][0]
    assert (event["Count"], event["EvalID"], event["Error"]) == (None, None, True)


def test_only_the_last_twenty_events_are_kept_newest_first(nomad: NomadDouble) -> None:
    for n in range(25):
        scale(nomad, None, Message=f"event {n}")
    events = call(nomad, "GET", f"/v1/job/{JOB}/scale")["TaskGroups"]["asr"]["Events"]
    assert [e["Message"] for e in events] == [f"event {n}" for n in range(24, 4, -1)]


def test_a_deployment_blocks_scaling_until_it_completes(nomad: NomadDouble) -> None:
    scale(nomad, 2)
    deployment = call(nomad, "GET", f"/v1/job/{JOB}/deployment")
    assert deployment["Status"] == "running"
    assert deployment["TaskGroups"]["asr"]["DesiredTotal"] == 2
    assert not any(key.startswith("_") for key in deployment)
    error = fails(nomad, "POST", f"/v1/job/{JOB}/scale", {"Count": 3, "Target": {"Group": "asr"}})
    assert (error.code, error.message) == (400, "job scaling blocked due to active deployment")

    nomad.advance(5 + 9)  # started at 5 s, healthy at 15 s
    assert call(nomad, "GET", f"/v1/job/{JOB}/deployment")["Status"] == "running"
    nomad.advance(1)
    finished = call(nomad, "GET", f"/v1/job/{JOB}/deployment")
    assert (finished["Status"], finished["TaskGroups"]["asr"]["HealthyAllocs"]) == ("successful", 2)
    scale(nomad, 3)


def test_a_deployment_that_cannot_place_fails_at_its_progress_deadline(nomad: NomadDouble) -> None:
    scale(nomad, 4)  # two GPUs: one more instance is placed, healthy 15 s later
    nomad.advance(614)
    assert call(nomad, "GET", f"/v1/job/{JOB}/deployment")["Status"] == "running"
    nomad.advance(2)
    failed = call(nomad, "GET", f"/v1/job/{JOB}/deployment")
    assert (failed["Status"], failed["StatusDescription"]) == (
        "failed",
        "Failed due to progress deadline",
    )
    scale(nomad, 2)


def test_scaling_to_zero_starts_no_deployment(nomad: NomadDouble) -> None:
    nomad.register_job(gpu_service_job("burst", node_pool="gpu", count=1, scaling=(0, 4)))
    nomad.advance(16)
    before = call(nomad, "GET", "/v1/job/burst/deployment")["ID"]
    scale(nomad, 0, job="burst")
    assert call(nomad, "GET", "/v1/job/burst/deployment")["ID"] == before
    scale(nomad, 1, job="burst")  # not blocked


def test_a_job_never_deployed_has_a_null_deployment(nomad: NomadDouble) -> None:
    nomad.register_job(no_deployments("plain", node_pool="gpu", count=0))
    assert call(nomad, "GET", "/v1/job/plain/deployment") is None


def test_allocations_start_pending_and_run_after_the_start_delay(nomad: NomadDouble) -> None:
    scale(nomad, 2)
    status = call(nomad, "GET", f"/v1/job/{JOB}/scale")["TaskGroups"]["asr"]
    assert (status["Desired"], status["Placed"], status["Running"]) == (2, 2, 1)
    new = allocs(nomad)[1]
    assert (new["Name"], new["ClientStatus"], new["DesiredStatus"]) == (
        "asr.asr[1]",
        "pending",
        "run",
    )
    assert new["NodeID"] == node_id(nomad, "gpu-1")
    nomad.advance(5)
    assert [a["ClientStatus"] for a in allocs(nomad)] == ["running", "running"]


def test_scaling_down_stops_the_highest_index_which_keeps_running_while_it_stops(
    nomad: NomadDouble,
) -> None:
    scale(nomad, 2)
    nomad.advance(16)
    scale(nomad, 1)
    stopping = allocs(nomad)[1]
    assert (stopping["Name"], stopping["DesiredStatus"], stopping["ClientStatus"]) == (
        "asr.asr[1]",
        "stop",
        "running",
    )
    assert stopping["DesiredDescription"] == "alloc not needed due to job update"
    status = call(nomad, "GET", f"/v1/job/{JOB}/scale")["TaskGroups"]["asr"]
    assert (status["Placed"], status["Running"]) == (1, 1)
    nomad.advance(20)
    assert allocs(nomad)[1]["ClientStatus"] == "complete"


def test_no_free_gpu_gives_failed_allocs_and_a_blocked_evaluation(nomad: NomadDouble) -> None:
    answer = scale(nomad, 4)
    original = next(e for e in evals(nomad) if e["ID"] == answer["EvalID"])
    assert original["Status"] == "complete"
    assert original["QueuedAllocations"] == {"asr": 2}
    metric = original["FailedTGAllocs"]["asr"]
    assert metric["DimensionExhausted"] == {"devices: no devices match request": 1}
    assert (metric["NodesEvaluated"], metric["NodesExhausted"], metric["CoalescedFailures"]) == (
        1,
        1,
        1,
    )
    assert metric["NodesAvailable"] == {"dc1": 1}

    blocked = call(nomad, "GET", f"/v1/evaluation/{original['BlockedEval']}")
    assert (blocked["Status"], blocked["TriggeredBy"], blocked["PreviousEval"]) == (
        "blocked",
        "queued-allocs",
        original["ID"],
    )
    assert blocked["StatusDescription"] == "created to place remaining allocations"
    assert blocked["FailedTGAllocs"]["asr"]["DimensionExhausted"]

    # The scheduler creates the blocked evaluation while it runs (GenericScheduler.process)
    # and only then marks the original complete (setStatus): the original is modified last.
    assert blocked["CreateIndex"] == blocked["ModifyIndex"] < original["ModifyIndex"]

    nomad.add_node("gpu-2", pool="gpu", gpus=2)
    unblocked = call(nomad, "GET", f"/v1/evaluation/{blocked['ID']}")
    assert (unblocked["Status"], unblocked["FailedTGAllocs"]) == ("complete", None)
    assert len([a for a in allocs(nomad) if a["DesiredStatus"] == "run"]) == 4


def test_a_blocked_evaluation_that_still_cannot_place_stays_blocked(nomad: NomadDouble) -> None:
    answer = scale(nomad, 4)
    blocked_id = call(nomad, "GET", f"/v1/evaluation/{answer['EvalID']}")["BlockedEval"]
    nomad.add_node("gpu-small", pool="gpu", gpus=1)
    reblocked = call(nomad, "GET", f"/v1/evaluation/{blocked_id}")
    assert reblocked["Status"] == "blocked"
    assert reblocked["FailedTGAllocs"]["asr"]["CoalescedFailures"] == 0


def test_a_newer_blocked_evaluation_cancels_the_older_one(nomad: NomadDouble) -> None:
    nomad.register_job(no_deployments("plain", node_pool="gpu", count=0))
    first = call(nomad, "GET", f"/v1/evaluation/{scale(nomad, 3, job='plain')['EvalID']}")
    second = call(nomad, "GET", f"/v1/evaluation/{scale(nomad, 4, job='plain')['EvalID']}")
    older = call(nomad, "GET", f"/v1/evaluation/{first['BlockedEval']}")
    assert (older["Status"], older["StatusDescription"]) == (
        "canceled",
        'existing blocked evaluation exists for job "plain"',
    )
    assert call(nomad, "GET", f"/v1/evaluation/{second['BlockedEval']}")["Status"] == "blocked"


def test_a_successful_evaluation_leaves_the_old_blocked_one_untracked(nomad: NomadDouble) -> None:
    nomad.register_job(no_deployments("plain", node_pool="gpu", count=0))
    blocked_id = call(nomad, "GET", f"/v1/evaluation/{scale(nomad, 3, job='plain')['EvalID']}")[
        "BlockedEval"
    ]
    scale(nomad, 1, job="plain")
    nomad.add_node("gpu-2", pool="gpu", gpus=2)
    assert call(nomad, "GET", f"/v1/evaluation/{blocked_id}")["Status"] == "blocked"
    assert len([a for a in allocs(nomad, "plain") if a["DesiredStatus"] == "run"]) == 1


@pytest.mark.parametrize(
    ("node", "constraint", "filtered"),
    [
        ({"gpus": 0}, None, {"missing devices": 1}),
        ({"gpus": 1, "gpu_memory_mib": 4096}, None, {"missing devices": 1}),
        (
            {"gpus": 1, "node_class": "cpu"},
            {"LTarget": "${node.class}", "RTarget": "gpu", "Operand": "="},
            {"${node.class} = gpu": 1},
        ),
    ],
)
def test_infeasible_nodes_are_constraint_filtered(
    nomad: NomadDouble,
    node: dict[str, Any],
    constraint: dict[str, str] | None,
    filtered: dict[str, int],
) -> None:
    nomad.add_node("only", pool="other", **node)
    job = no_deployments("picky", node_pool="other", count=1, gpu_memory="8 GiB")
    if constraint:
        job["Constraints"] = [constraint]
    answer = nomad.register_job(job)
    metric = call(nomad, "GET", f"/v1/evaluation/{answer['EvalID']}")["FailedTGAllocs"]["asr"]
    assert metric["ConstraintFiltered"] == filtered
    assert (metric["NodesEvaluated"], metric["NodesFiltered"], metric["NodesInPool"]) == (1, 1, 1)


def test_draining_a_node_migrates_its_allocations(nomad: NomadDouble) -> None:
    spare = nomad.add_node("gpu-2", pool="gpu", gpus=2)
    drained = node_id(nomad, "gpu-1")
    answer = call(nomad, "POST", f"/v1/node/{drained}/drain", {"DrainSpec": {"Deadline": 60 * NS}})
    assert set(answer) == {"EvalCreateIndex", "EvalIDs", "Index", "NodeModifyIndex"}
    assert (answer["EvalIDs"], answer["EvalCreateIndex"]) == (None, 0), "the drainer's, later"
    assert answer["Index"] == answer["NodeModifyIndex"] > 0
    assert evals(nomad)[-1]["TriggeredBy"] == "node-drain"

    stub = next(n for n in call(nomad, "GET", "/v1/nodes") if n["ID"] == drained)
    assert (stub["Drain"], stub["SchedulingEligibility"]) == (True, "ineligible")
    node = call(nomad, "GET", f"/v1/node/{drained}")
    assert node["DrainStrategy"]["Deadline"] == 60 * NS
    assert node["DrainStrategy"]["ForceDeadline"].endswith("Z")
    assert node["LastDrain"]["Status"] == "draining"

    old, new = sorted(allocs(nomad), key=lambda a: a["CreateIndex"])
    assert (old["DesiredStatus"], old["DesiredDescription"]) == ("stop", "alloc is being migrated")
    assert old["DesiredTransition"] == {"Migrate": True}
    assert (new["NodeID"], new["Name"]) == (spare, old["Name"])

    nomad.advance(20)
    done = call(nomad, "GET", f"/v1/node/{drained}")
    assert (done["DrainStrategy"], done["LastDrain"]["Status"]) == (None, "complete")
    assert done["SchedulingEligibility"] == "ineligible"


def test_a_drain_migrates_at_most_max_parallel_until_replacements_are_healthy(
    nomad: NomadDouble,
) -> None:
    scale(nomad, 2)
    nomad.advance(16)  # both healthy in their deployment
    spare = nomad.add_node("gpu-2", pool="gpu", gpus=2)
    drained = node_id(nomad, "gpu-1")
    call(nomad, "POST", f"/v1/node/{drained}/drain", {"DrainSpec": {"Deadline": 600 * NS}})

    def on(node: str, desired: str) -> list[str]:
        return [
            a["Name"] for a in allocs(nomad) if (a["NodeID"], a["DesiredStatus"]) == (node, desired)
        ]

    # migrate.max_parallel = 1: one of the two moves, the other keeps serving.
    assert (len(on(drained, "stop")), len(on(drained, "run")), len(on(spare, "run"))) == (1, 1, 1)
    nomad.advance(5 + 9)  # the replacement runs, not yet healthy (migrate.min_healthy_time 10 s)
    assert len(on(drained, "run")) == 1
    nomad.advance(1)
    replacement = next(a for a in allocs(nomad) if a["NodeID"] == spare)
    assert replacement["DeploymentStatus"]["Healthy"] is True, "the client's migrate health"
    assert on(drained, "run") == [] and len(on(spare, "run")) == 2


def test_a_drain_deadline_migrates_what_is_left(nomad: NomadDouble) -> None:
    scale(nomad, 2)
    nomad.advance(16)
    drained = node_id(nomad, "gpu-1")
    call(nomad, "POST", f"/v1/node/{drained}/drain", {"DrainSpec": {"Deadline": 60 * NS}})
    assert sorted(a["DesiredStatus"] for a in allocs(nomad)) == ["run", "stop"]
    nomad.advance(59)  # nowhere to go: the replacement is blocked
    assert sorted(a["DesiredStatus"] for a in allocs(nomad)) == ["run", "stop"]
    nomad.advance(2)
    assert [a["DesiredStatus"] for a in allocs(nomad)] == ["stop", "stop"]


def test_stopping_a_job_stops_every_allocation_and_places_none(nomad: NomadDouble) -> None:
    scale(nomad, 2)  # a deployment is running
    version = call(nomad, "GET", f"/v1/job/{JOB}")["Version"]
    answer = call(nomad, "DELETE", f"/v1/job/{JOB}")
    assert set(answer) == {
        "EvalID",
        "EvalCreateIndex",
        "JobModifyIndex",
        "VolumeEvalID",
        "VolumeEvalIndex",
        "Index",
        "KnownLeader",
        "LastContact",
    }
    job = call(nomad, "GET", f"/v1/job/{JOB}")
    assert (job["Stop"], job["Version"], job["Status"]) == (True, version + 1, "dead")
    assert job["JobModifyIndex"] == answer["JobModifyIndex"]
    latest = evals(nomad)[-1]
    assert (latest["ID"], latest["TriggeredBy"], latest["Status"]) == (
        answer["EvalID"],
        "job-deregister",
        "complete",
    )
    assert [a["DesiredStatus"] for a in allocs(nomad)] == ["stop", "stop"]
    status = call(nomad, "GET", f"/v1/job/{JOB}/scale")
    assert status["JobStopped"] is True
    group = status["TaskGroups"]["asr"]
    assert (group["Desired"], group["Placed"], group["Running"]) == (2, 0, 0)
    deployment = call(nomad, "GET", f"/v1/job/{JOB}/deployment")
    assert (deployment["Status"], deployment["StatusDescription"]) == (
        "cancelled",
        "Cancelled because job is stopped",
    )

    # Job.Scale takes a count for a stopped job (a new version, an evaluation)...
    assert scale(nomad, 3)["EvalID"]
    assert call(nomad, "GET", f"/v1/job/{JOB}/scale")["TaskGroups"]["asr"]["Desired"] == 3
    # ...and nothing is placed.
    assert all(a["DesiredStatus"] == "stop" for a in allocs(nomad))

    nomad.advance(20)  # the stopped allocations exit and free their GPUs
    nomad.register_job(gpu_service_job(JOB, node_pool="gpu", scaling=(1, 4)))  # `job run`
    assert call(nomad, "GET", f"/v1/job/{JOB}/scale")["JobStopped"] is False
    assert len([a for a in allocs(nomad) if a["DesiredStatus"] == "run"]) == 1


def test_stopping_an_unknown_job_is_no_error_and_purge_deletes(nomad: NomadDouble) -> None:
    result, index = nomad.handle("DELETE", "/v1/job/nope", {}, b"")
    assert (result["EvalID"], result["JobModifyIndex"], index) == ("", 0, 0)
    call(nomad, "DELETE", f"/v1/job/{JOB}", purge="true")
    assert fails(nomad, "GET", f"/v1/job/{JOB}").code == 404
    assert [a["DesiredStatus"] for a in allocs(nomad)] == ["stop"]
    assert fails(nomad, "DELETE", "/v1/job/x", purge="maybe").code == 400


def test_a_job_registered_again_after_a_purge_lists_only_its_own_allocations(
    nomad: NomadDouble,
) -> None:
    """``AllocsByJob``: the old job's allocations stay in the state but are listed only
    with ``?all=true`` (a bad value is read as false)."""
    (old,) = allocs(nomad)
    call(nomad, "DELETE", f"/v1/job/{JOB}", purge="true")
    nomad.register_job(gpu_service_job(JOB, node_pool="gpu", scaling=(1, 4)))
    (new,) = allocs(nomad)
    assert new["ID"] != old["ID"]
    listed = call(nomad, "GET", f"/v1/job/{JOB}/allocations", all="true")
    assert {a["ID"] for a in listed} == {old["ID"], new["ID"]}
    unparsed = call(nomad, "GET", f"/v1/job/{JOB}/allocations", all="yes")
    assert [a["ID"] for a in unparsed] == [new["ID"]]


def test_cancelling_a_drain_with_mark_eligible(nomad: NomadDouble) -> None:
    node = node_id(nomad, "gpu-1")
    call(nomad, "PUT", f"/v1/node/{node}/drain", {"DrainSpec": {"Deadline": -1}})
    answer = call(nomad, "PUT", f"/v1/node/{node}/drain", {"DrainSpec": None, "MarkEligible": True})
    assert (answer["EvalIDs"], answer["EvalCreateIndex"]) == (None, 0)
    assert answer["Index"] == answer["NodeModifyIndex"] > 0
    after = call(nomad, "GET", f"/v1/node/{node}")
    assert (after["DrainStrategy"], after["SchedulingEligibility"]) == (None, "eligible")
    assert after["LastDrain"]["Status"] == "canceled"


def test_eligibility_changes_and_their_errors(nomad: NomadDouble) -> None:
    node = node_id(nomad, "gpu-1")
    answer = call(nomad, "POST", f"/v1/node/{node}/eligibility", {"Eligibility": "ineligible"})
    modify_index = call(nomad, "GET", f"/v1/node/{node}")["ModifyIndex"]
    assert answer == {
        "EvalCreateIndex": 0,
        "EvalIDs": None,
        "Index": modify_index,
        "NodeModifyIndex": modify_index,
    }
    back = call(nomad, "POST", f"/v1/node/{node}/eligibility", {"Eligibility": "eligible"})
    assert back["NodeModifyIndex"] > modify_index and back["EvalIDs"] is None
    call(nomad, "POST", f"/v1/node/{node}/eligibility", {"Eligibility": "ineligible"})

    bad = fails(nomad, "POST", f"/v1/node/{node}/eligibility", {"Eligibility": "maybe"})
    assert (bad.code, bad.message) == (500, 'invalid scheduling eligibility "maybe"')
    missing = fails(nomad, "POST", "/v1/node/nope/eligibility", {"Eligibility": "eligible"})
    assert (missing.code, missing.message) == (500, "node not found")
    call(nomad, "POST", f"/v1/node/{node}/drain", {"DrainSpec": {"Deadline": 0}})
    nomad.add_node("gpu-2", pool="gpu")
    call(nomad, "POST", f"/v1/node/{node_id(nomad, 'gpu-2')}/drain", {"DrainSpec": {"Deadline": 0}})
    draining = fails(
        nomad,
        "POST",
        f"/v1/node/{node_id(nomad, 'gpu-1')}/eligibility",
        {"Eligibility": "eligible"},
    )
    assert draining.message == (
        "can not set node's scheduling eligibility to eligible while it is draining"
    )


def test_a_blocking_query_returns_when_the_index_moves(nomad: NomadDouble) -> None:
    _, index = nomad.handle("GET", f"/v1/job/{JOB}/scale", {}, b"")
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(
            nomad.handle, "GET", f"/v1/job/{JOB}/scale", {"index": str(index), "wait": "30s"}, b""
        )
        assert not waiting.done()
        started = time.monotonic()
        scale(nomad, 2)
        result, new_index = waiting.result(timeout=5)
    assert new_index > index
    assert result["TaskGroups"]["asr"]["Desired"] == 2
    assert time.monotonic() - started < 5


def test_a_blocking_query_times_out_with_the_same_index(nomad: NomadDouble) -> None:
    _, index = nomad.handle("GET", "/v1/nodes", {}, b"")
    started = time.monotonic()
    _, same = nomad.handle("GET", "/v1/nodes", {"index": str(index), "wait": "50ms"}, b"")
    assert same == index
    assert 0.05 <= time.monotonic() - started < 2


@pytest.mark.parametrize(
    ("query", "seconds"),
    [
        ({}, 300.0),
        ({"wait": ""}, 300.0),
        ({"wait": "0s"}, 300.0),
        ({"wait": "-1s"}, 300.0),
        ({"wait": "30s"}, 30.0),
        ({"wait": "10m"}, 300.0),
    ],
)
def test_blocking_waits_default_to_five_minutes_and_are_capped_there(
    query: dict[str, str], seconds: float
) -> None:
    assert blocking_wait(query) == seconds


def test_an_empty_index_is_no_index(nomad: NomadDouble) -> None:
    _, index = nomad.handle("GET", "/v1/nodes", {"index": "", "wait": ""}, b"")
    assert index >= 1


@pytest.mark.parametrize(
    ("query", "message"), [({"wait": "5"}, "Invalid wait time"), ({"index": "x"}, "Invalid index")]
)
def test_bad_blocking_parameters_are_400(
    nomad: NomadDouble, query: dict[str, str], message: str
) -> None:
    error = fails(nomad, "GET", "/v1/nodes", **query)
    assert (error.code, error.message) == (400, message)


@pytest.mark.parametrize(
    ("body", "path", "code", "message"),
    [
        ({}, "/v1/jobs", 400, "Job must be specified"),
        ({"Job": {"Type": "service"}}, "/v1/jobs", 400, "Job ID hasn't been provided"),
        ({"Job": {"ID": "a"}}, "/v1/job/b", 400, "Job ID does not match name"),
        (
            {"Job": {"ID": "a", "NodePool": "nowhere"}},
            "/v1/jobs",
            500,
            'job "a" is in nonexistent node pool "nowhere"',
        ),
    ],
)
def test_register_errors(
    nomad: NomadDouble, body: dict[str, Any], path: str, code: int, message: str
) -> None:
    error = fails(nomad, "PUT", path, body)
    assert (error.code, error.message) == (code, message)


def test_registration_canonicalises_and_versions_only_on_change(nomad: NomadDouble) -> None:
    job = call(nomad, "GET", f"/v1/job/{JOB}")
    group = job["TaskGroups"][0]
    assert (job["Datacenters"], job["Namespace"], job["NodePool"]) == (["*"], "default", "gpu")
    assert group["Update"]["MinHealthyTime"] == 10 * NS
    assert group["Migrate"]["MaxParallel"] == 1
    assert group["Scaling"]["Target"] == {"Namespace": "default", "Job": JOB, "Group": "asr"}

    again = call(
        nomad, "PUT", "/v1/jobs", {"Job": gpu_service_job(JOB, node_pool="gpu", scaling=(1, 4))}
    )
    assert again["EvalID"] and call(nomad, "GET", f"/v1/job/{JOB}")["Version"] == job["Version"]

    unbounded = gpu_service_job("free", node_pool="gpu", scaling=None)
    unbounded["TaskGroups"][0]["Scaling"] = None
    nomad.register_job(unbounded)
    assert call(nomad, "GET", "/v1/job/free")["TaskGroups"][0]["Scaling"] is None
    min_default = gpu_service_job("floor", node_pool="gpu", count=2, scaling=(0, 4))
    del min_default["TaskGroups"][0]["Scaling"]["Min"]
    nomad.register_job(min_default)
    assert call(nomad, "GET", "/v1/job/floor")["TaskGroups"][0]["Scaling"]["Min"] == 2


def test_routing_errors(nomad: NomadDouble) -> None:
    assert fails(nomad, "GET", "/v1/nowhere").code == 404
    assert (fails(nomad, "GET", "/v1/job/nope").message) == "job not found"
    assert (fails(nomad, "GET", "/v1/node/nope").message) == "node not found"
    assert (fails(nomad, "GET", "/v1/evaluation/nope").message) == "eval not found"
    assert (fails(nomad, "GET", "/v1/job/nope/scale").message) == "job not found"
    wrong = fails(nomad, "POST", "/v1/nodes")
    assert (wrong.code, wrong.message) == (405, "Invalid method")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0", 0.0), ("300ms", 0.3), ("1m30s", 90.0), ("1.5h", 5400.0), ("-1.5s", -1.5)],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["5", "s", "1m30", "-", "1d"])
def test_bad_go_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_go_duration(text)


def test_job_status_follows_allocations_then_open_evaluations(nomad: NomadDouble) -> None:
    def status(job: str) -> tuple[str, str]:
        stubs = {j["ID"]: j["Status"] for j in call(nomad, "GET", "/v1/jobs")}
        return call(nomad, "GET", f"/v1/job/{job}")["Status"], stubs[job]

    assert status(JOB) == ("running", "running")
    # Only a complete evaluation and no allocation: dead (not pending).
    nomad.register_job(gpu_service_job("idle", node_pool="gpu", count=0, scaling=(0, 4)))
    assert status("idle") == ("dead", "dead")
    # Both GPUs taken: the new job's allocation cannot be placed and its evaluation
    # blocks, so the job is pending until the room it waits for is freed.
    scale(nomad, 2)
    nomad.advance(16)
    nomad.register_job(gpu_service_job("starved", node_pool="gpu", count=1, scaling=(0, 4)))
    assert status("starved") == ("pending", "pending")
    scale(nomad, 1)
    nomad.advance(21)
    assert status("starved") == ("running", "running")
