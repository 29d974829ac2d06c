"""The Nomad job specs in ``nomad/`` parse and have the properties the mesh relies on."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import hcl2
import pytest

from services.autoscaler.settings import AutoscalerSettings
from services.autoscaler.targets.base import CapacityClass
from services.autoscaler.targets.nomad import NomadTargetConfig, default_groups
from services.router.settings import RouterSettings
from voxmesh.asr.settings import AsrSettings

NOMAD_DIR = Path(__file__).resolve().parents[2] / "nomad"
SPECS = sorted(NOMAD_DIR.glob("*.nomad.hcl"))
NODE_POOLS = {CapacityClass.ON_DEMAND: "gpu-ondemand", CapacityClass.PREEMPTIBLE: "gpu-preemptible"}
SCALE_TO_ZERO_POOLS = {"asr_large"}
"""Pools whose on-demand group may go to zero (issue 4, section 2: asr_large at night)."""
DRAIN_TIMEOUT_ENV = (
    "VOXMESH_ASR_DRAIN_TIMEOUT",
    "VOXMESH_ROUTER_DRAIN_TIMEOUT_S",
    "VOXMESH_AUTOSCALER_DRAIN_TIMEOUT",
)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _clean(value: Any) -> Any:
    """python-hcl2 output without its quotes and ``__is_block__`` markers."""
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items() if k != "__is_block__"}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _blocks(body: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return list(body.get(kind, []))


def _labelled(body: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    """Labelled blocks (``group "asr" {}``) as label -> body."""
    return {label: inner for block in _blocks(body, kind) for label, inner in block.items()}


def _seconds(text: str) -> float:
    parts = _DURATION.findall(text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


def _load(path: Path) -> tuple[str, dict[str, Any]]:
    with path.open() as f:
        spec = _clean(hcl2.load(f))
    jobs = _labelled(spec, "job")
    assert len(jobs) == 1, f"{path.name}: one job per file"
    return next(iter(jobs.items()))


JOBS = dict(_load(p) for p in SPECS)
ASR_JOBS = {job_id: job for job_id, job in JOBS.items() if job_id.startswith("asr-")}


def _groups(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return _labelled(job, "group")


def _tasks(job: dict[str, Any]) -> list[dict[str, Any]]:
    return [task for group in _groups(job).values() for task in _labelled(group, "task").values()]


def _env(task: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for block in _blocks(task, "env") for k, v in block.items()}


def test_the_specs_are_the_expected_jobs_one_per_file() -> None:
    assert {p.name.removesuffix(".nomad.hcl") for p in SPECS} == set(JOBS)
    expected = {"router", "autoscaler"} | {g.job_id for g in default_groups()}
    assert set(JOBS) == expected


@pytest.mark.parametrize("group", default_groups(), ids=lambda g: g.name)
def test_the_nomad_target_mapping_matches_the_specs(group: Any) -> None:
    job = JOBS[group.job_id]
    assert group.task_group in _groups(job)
    assert job["node_pool"] == NODE_POOLS[group.capacity_class]
    assert _blocks(job, "meta")[0]["voxmesh_pool"] == group.pool
    (task,) = _tasks(job)
    assert _env(task)["VOXMESH_ASR_POOL"] == group.pool
    assert _env(task)["VOXMESH_ASR_CAPACITY_CLASS"] == group.capacity_class.value
    preemptible = group.capacity_class is CapacityClass.PREEMPTIBLE
    assert (job["node_pool"] in NomadTargetConfig().preemptible_node_pools) is preemptible


@pytest.mark.parametrize("job_id", sorted(ASR_JOBS))
def test_asr_tasks_request_a_gpu_with_a_memory_constraint(job_id: str) -> None:
    (task,) = _tasks(ASR_JOBS[job_id])
    (resources,) = _blocks(task, "resources")
    devices = _labelled(resources, "device")
    assert set(devices) == {"nvidia/gpu"}
    device = devices["nvidia/gpu"]
    assert device["count"] >= 1
    constraints = _blocks(device, "constraint")
    memory = [c for c in constraints if c["attribute"] == "${device.attr.memory}"]
    assert memory and memory[0]["operator"] == ">="
    assert re.fullmatch(r"\d+ (MiB|GiB)", memory[0]["value"])


def test_every_model_has_an_on_demand_and_a_preemptible_job() -> None:
    classes: dict[str, set[str]] = {}
    for job in ASR_JOBS.values():
        meta = _blocks(job, "meta")[0]
        classes.setdefault(meta["voxmesh_pool"], set()).add(meta["voxmesh_capacity_class"])
    assert classes == {pool: {"on-demand", "preemptible"} for pool in ("asr_small", "asr_large")}


@pytest.mark.parametrize("job_id", sorted(ASR_JOBS))
def test_scaling_blocks_have_sane_bounds(job_id: str) -> None:
    job = ASR_JOBS[job_id]
    meta = _blocks(job, "meta")[0]
    for group in _groups(job).values():
        (scaling,) = _blocks(group, "scaling")
        assert scaling["enabled"] is True
        assert 0 <= scaling["min"] <= group["count"] <= scaling["max"]
        assert scaling["max"] >= 1
        if meta["voxmesh_capacity_class"] == "preemptible":
            assert scaling["min"] == 0, "bursts must be able to go away entirely"
        elif meta["voxmesh_pool"] not in SCALE_TO_ZERO_POOLS:
            assert scaling["min"] >= 1, "the on-demand baseline keeps one instance"


@pytest.mark.parametrize("job_id", sorted(JOBS))
def test_ports_are_dynamic(job_id: str) -> None:
    for group in _groups(JOBS[job_id]).values():
        (network,) = _blocks(group, "network")
        ports = _labelled(network, "port")
        assert {"grpc", "metrics"} <= set(ports)
        assert all("static" not in port for port in ports.values())


def _consul_owners(job: dict[str, Any]) -> set[str]:
    """Who registers the job's service in Consul: Nomad (a service block) or the service."""
    owners = set()
    for group in _groups(job).values():
        places = [group, *_labelled(group, "task").values()]
        if any(
            s.get("provider", "consul") == "consul" for p in places for s in _blocks(p, "service")
        ):
            owners.add("nomad")
    if any(_env(task).get("VOXMESH_ASR_DISCOVERY") == "consul" for task in _tasks(job)):
        owners.add("self")
    return owners


@pytest.mark.parametrize("job_id", sorted(JOBS))
def test_each_service_has_exactly_one_consul_registration_owner(job_id: str) -> None:
    expected = {"self"} if job_id in ASR_JOBS else {"nomad"}
    assert _consul_owners(JOBS[job_id]) == expected


@pytest.mark.parametrize("job_id", ["router", "autoscaler"])
def test_services_nomad_registers_have_grpc_checks(job_id: str) -> None:
    for group in _groups(JOBS[job_id]).values():
        services = _blocks(group, "service")
        assert services
        for service in services:
            assert service["port"] == "grpc"
            (check,) = _blocks(service, "check")
            assert check["type"] == "grpc"
            assert check["port"] == "grpc"
            assert _seconds(check["interval"]) >= 1 and _seconds(check["timeout"]) >= 1


@pytest.mark.parametrize("job_id", sorted(JOBS))
def test_kill_timeout_is_longer_than_the_drain_timeout(job_id: str) -> None:
    for task in _tasks(JOBS[job_id]):
        env = _env(task)
        (drain_key,) = [k for k in DRAIN_TIMEOUT_ENV if k in env]
        assert task["kill_signal"] == "SIGTERM"
        assert _seconds(task["kill_timeout"]) > float(env[drain_key])


PREEMPTIBLE_DRAIN_S = (90.0, 120.0)
"""A preemptible instance drains through most of a spot reclaim's two-minute notice: longer
than an on-demand replacement takes to serve (60 s provisioning + start-up), shorter than the
notice."""


@pytest.mark.parametrize(
    "job_id", sorted(j for j, spec in JOBS.items() if spec["node_pool"] == "gpu-preemptible")
)
def test_preemptible_instances_drain_until_replacements_can_serve(job_id: str) -> None:
    (task,) = _tasks(JOBS[job_id])
    low, high = PREEMPTIBLE_DRAIN_S
    assert low <= float(_env(task)["VOXMESH_ASR_DRAIN_TIMEOUT"]) < high


@pytest.mark.parametrize("job_id", sorted(JOBS))
def test_update_and_migrate_blocks_are_present(job_id: str) -> None:
    job = JOBS[job_id]
    (update,) = _blocks(job, "update")
    assert update["max_parallel"] >= 1
    assert _seconds(update["min_healthy_time"]) < _seconds(update["healthy_deadline"])
    assert _seconds(update["healthy_deadline"]) < _seconds(update["progress_deadline"])
    for group in _groups(job).values():
        (migrate,) = _blocks(group, "migrate")
        assert migrate["max_parallel"] >= 1
        assert update["health_check"] == migrate["health_check"]
    if job_id in ASR_JOBS:  # no Nomad checks exist: the instance registers itself
        assert update["health_check"] == "task_states"
    # A preemptible group failing to place is spot shortage, not a bad release: a revert
    # would take back the count the autoscaler keeps requested.
    assert update["auto_revert"] is (job["node_pool"] != "gpu-preemptible")


@pytest.mark.parametrize(
    ("prefix", "settings", "jobs"),
    [
        ("VOXMESH_ASR_", AsrSettings, sorted(ASR_JOBS)),
        ("VOXMESH_ROUTER_", RouterSettings, ["router"]),
        ("VOXMESH_AUTOSCALER_", AutoscalerSettings, ["autoscaler"]),
    ],
)
def test_environment_names_are_settings_of_the_service(
    prefix: str, settings: type, jobs: list[str]
) -> None:
    fields = {f.name.upper() for f in dataclasses.fields(settings)}
    for job_id in jobs:
        for task in _tasks(JOBS[job_id]):
            names = {k.removeprefix(prefix) for k in _env(task) if k.startswith(prefix)}
            assert names and names <= fields, f"{job_id}: unknown settings {names - fields}"
