"""The parts around the loop that need no sockets: combining signals and target status,
PromQL answers, the decision log, the settings and how they wire the app."""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import logging
import math
import re
import time
import urllib.parse
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from services.autoscaler.app import AutoscalerApp, make_lock, make_source
from services.autoscaler.observe import (
    Observation,
    StartingSince,
    bounded_policy,
    group_signals,
    observe_pool,
    pool_signals,
)
from services.autoscaler.policy import (
    CapacityGroup,
    Decision,
    GroupLimits,
    GroupSignals,
    PolicyState,
    PoolPolicy,
    decide,
)
from services.autoscaler.records import DecisionLog, GroupAction, Kind, Outcome
from services.autoscaler.settings import load_settings
from services.autoscaler.signals.base import InstanceLoad, PoolLoad
from services.autoscaler.signals.prometheus import (
    QUERIES,
    PrometheusError,
    PrometheusSource,
    load_from_results,
    parse_vector,
)
from services.autoscaler.signals.telemetry import TelemetrySource, _Feed, _instance_load
from services.autoscaler.targets.base import CapacityClass, GroupStatus
from services.autoscaler.targets.nomad import NomadTarget
from voxmesh.discovery import InstanceInfo
from voxmesh.errors import SettingsError
from voxmesh.leader import ConsulLeaderLock, FileLeaderLock
from voxmesh.stt.v1 import stt_pb2


def _status(desired: int, running: int, **extra: object) -> GroupStatus:
    return GroupStatus(
        name="asr_small/on-demand",
        pool="asr_small",
        capacity_class=CapacityClass.ON_DEMAND,
        desired=desired,
        running=running,
        placed=desired,
        healthy=running,
        pending=desired - running,
        **extra,  # type: ignore[arg-type]
    )


def test_group_signals_split_the_target_count_into_serving_starting_and_reclaiming() -> None:
    assert group_signals(_status(3, 2)) == GroupSignals(serving=2, starting=1)
    reclaimed = group_signals(_status(3, 2, placement_failing=True), reclaims=1, draining=2)
    assert reclaimed == GroupSignals(
        serving=1, starting=1, draining=2, reclaiming=1, placement_failing=True
    )
    assert group_signals(_status(1, 1), reclaims=5).reclaiming == 1
    assert group_signals(None) == GroupSignals()


def test_the_policy_is_narrowed_to_what_the_target_allows() -> None:
    policy = PoolPolicy(on_demand=GroupLimits(min_count=1, max_count=8))
    narrowed = bounded_policy(policy, _status(1, 1, min_count=2, max_count=4), None)
    assert (narrowed.on_demand.min_count, narrowed.on_demand.max_count) == (2, 4)
    assert narrowed.preemptible.max_count == 0  # the target runs no preemptible group
    assert bounded_policy(policy, _status(1, 1), None).on_demand == policy.on_demand
    closed = bounded_policy(policy, _status(0, 0, max_count=0), None)
    assert closed.on_demand.max_count == 0 and closed.allow_scale_to_zero


def test_pool_signals_use_reported_limits_and_only_serving_instances() -> None:
    load = PoolLoad(
        "asr_small",
        active_streams=3,
        queued_realtime=2,
        queued_batch=1,
        instances=(
            InstanceLoad("a", "preemptible", 2, 4, serving=True, gpu_utilisation=0.95),
            InstanceLoad("b", "on-demand", 1, 4, serving=False),
        ),
        age_s=0.4,
    )
    signals = pool_signals(load, GroupSignals(serving=1), GroupSignals(serving=1), 7)
    assert signals.max_streams == 7  # nothing reported: the configured fallback
    assert (signals.demand, signals.queued, signals.age_s) == (6, 3, 0.4)
    (instance,) = signals.instances
    assert (instance.group, instance.gpu_utilisation) == (CapacityGroup.PREEMPTIBLE, 0.95)
    reported = PoolLoad("asr_small", max_streams=2, age_s=0.1)
    assert pool_signals(reported, GroupSignals(), GroupSignals(), 7).max_streams == 2


def _observe_for(
    seconds: int,
    load: PoolLoad,
    *,
    start: int = 0,
    since: dict[CapacityGroup, StartingSince] | None = None,
    state: PolicyState | None = None,
) -> tuple[Observation, Decision, PolicyState]:
    """Evaluates a pool every 5 s as the loop does, with its on-demand group at 1 running
    instance and its preemptible group at 4 running ones; the last observation and decision.
    """

    def group(capacity_class: CapacityClass, count: int) -> GroupStatus:
        return GroupStatus(
            name=f"asr_small/{capacity_class.value}",
            pool="asr_small",
            capacity_class=capacity_class,
            desired=count,
            running=count,
            placed=count,
            healthy=count,
            pending=0,
            oldest_pending_s=0.0,  # Nomad: no allocation pending
            max_count=64,
        )

    policy = PoolPolicy()
    status = {
        CapacityGroup.ON_DEMAND: group(CapacityClass.ON_DEMAND, 1),
        CapacityGroup.PREEMPTIBLE: group(CapacityClass.PREEMPTIBLE, 4),
    }
    since = {g: StartingSince() for g in CapacityGroup} if since is None else since
    state = PolicyState() if state is None else state
    for now in range(start, start + seconds + 1, 5):

        def starting_for(g: CapacityGroup, unseen: int | None, at: float = now) -> float:
            return since[g].update(status[g], at, unseen)

        seen = observe_pool(policy, 4, load, status, {}, starting_for)
        decision, state = decide(seen.signals, state, seen.policy, float(now))
    return seen, decision, state


def _instances(serving_preemptible: int) -> tuple[InstanceLoad, ...]:
    return (
        InstanceLoad("od", "on-demand", 3, 4, serving=True),
        *(
            InstanceLoad(f"pe{i}", "preemptible", 3, 4, serving=True)
            for i in range(serving_preemptible)
        ),
    )


def test_a_preemptible_instance_that_runs_but_never_serves_ages_past_its_deadline() -> None:
    # Nomad runs all 4 preemptible instances; only 1 serves, 3 hang loading their model.
    load = PoolLoad(
        "asr_small", active_streams=6, max_streams=4, instances=_instances(1), age_s=0.5
    )
    deadline = PoolPolicy().preemptible.placement_deadline_s
    young, decision, _ = _observe_for(int(deadline) - 5, load)
    assert (young.signals.preemptible.serving, young.signals.preemptible.starting) == (1, 3)
    assert young.signals.preemptible.oldest_starting_s == deadline - 5
    assert "pending for" not in decision.reason

    seen, decision, _ = _observe_for(1200, load)
    pe = seen.signals.preemptible
    assert (pe.serving, pe.starting, pe.oldest_starting_s) == (1, 3, 1200.0)
    assert "preemptible pending for 1200 s" in decision.reason
    od = decision.group(CapacityGroup.ON_DEMAND)
    assert od.desired > od.current, "on-demand did not take the shortfall"


def test_stale_or_missing_signals_never_make_running_instances_look_stuck() -> None:
    # A telemetry outage: the last load says nothing of the preemptible instances.
    deadline = PoolPolicy().preemptible.placement_deadline_s
    since, state = {g: StartingSince() for g in CapacityGroup}, PolicyState()
    for start, outage in (
        # an instance's telemetry is silent; the routers' demand is fresh: the policy runs
        (0, PoolLoad("asr_small", active_streams=6, max_streams=4, age_s=40, router_age_s=0.5)),
        (605, PoolLoad("asr_small", missing="no telemetry from any router yet")),
    ):
        seen, decision, state = _observe_for(595, outage, start=start, since=since, state=state)
        assert seen.signals.preemptible.starting == 4
        assert seen.signals.preemptible.oldest_starting_s == 0.0
        assert "pending for" not in decision.reason
    # Fresh again, and the instances still do not serve: they age from now on only.
    fresh = PoolLoad(
        "asr_small", active_streams=6, max_streams=4, instances=_instances(0), age_s=0.5
    )
    seen, decision, state = _observe_for(
        int(deadline) - 5, fresh, start=1205, since=since, state=state
    )
    assert seen.signals.preemptible.oldest_starting_s == deadline - 5
    assert "pending for" not in decision.reason
    seen, decision, _ = _observe_for(10, fresh, start=1445, since=since, state=state)
    assert seen.signals.preemptible.oldest_starting_s == deadline + 10
    assert "preemptible pending for" in decision.reason


def _vector(*samples: tuple[dict[str, str], float]) -> dict[str, object]:
    return {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [{"metric": m, "value": [1.7e9, str(v)]} for m, v in samples],
        },
    }


def test_promql_vectors_are_parsed_and_errors_raised() -> None:
    samples = parse_vector(_vector(({"pool": "asr_small"}, 2.0)))
    assert samples == [({"pool": "asr_small"}, 2.0)]
    with pytest.raises(PrometheusError, match="parse error"):
        parse_vector({"status": "error", "errorType": "bad_data", "error": "parse error"})
    with pytest.raises(PrometheusError, match="expected a vector"):
        parse_vector({"status": "success", "data": {"resultType": "scalar", "result": []}})
    with pytest.raises(PrometheusError, match="malformed vector sample"):
        parse_vector({"status": "success", "data": {"resultType": "vector", "result": [{}]}})


def test_a_pool_load_from_promql_results() -> None:
    small = {"pool": "asr_small"}
    results = {
        "instances": [
            ({**small, "instance_id": "a", "capacity_class": "preemptible"}, 2.0),
            ({**small, "instance_id": "b"}, 1.0),
            ({"pool": "asr_large", "instance_id": "c"}, 4.0),
        ],
        "gpu_util": [({"instance_id": "a"}, 0.97)],
        "queued": [({**small, "priority": "realtime"}, 3.0), ({**small, "priority": "batch"}, 1.0)],
        "router_streams": [(small, 9.0)],  # 4 queued + 5 relayed (instances lag behind)
        "capacity": [(small, 8.0)],
        "accepting": [(small, 2.0)],
        "router_age": [(small, 1.5)],
        "instance_age": [(small, 4.0)],
    }
    load = load_from_results("asr_small", results)
    assert (load.active_streams, load.queued_realtime, load.queued_batch) == (5, 3, 1)
    assert (load.max_streams, load.age_s, load.missing) == (4, 4.0, "")
    assert load.router_age_s == 1.5  # the demand is fresher than the instances' samples
    a, b = load.instances
    assert (a.instance_id, a.capacity_class, a.gpu_utilisation) == ("a", "preemptible", 0.97)
    assert (b.capacity_class, b.gpu_utilisation) == ("on-demand", None)

    no_router = load_from_results("asr_large", results)
    assert no_router.missing == "no router metrics in Prometheus"
    assert no_router.active_streams == 4 and no_router.max_streams is None
    assert math.isinf(load_from_results("asr_other", {}).age_s)


def _action(current: int, desired: int, outcome: Outcome) -> tuple[GroupAction, ...]:
    return (GroupAction("p/on-demand", CapacityClass.ON_DEMAND, current, desired, 0, outcome),)


async def test_the_decision_log_skips_repeats_and_streams_to_watchers() -> None:
    log = DecisionLog(keep=3, queue_size=2)
    hold = _action(1, 1, Outcome.NO_CHANGE)
    assert log.record("p", Kind.HOLD, "demand 3 streams: no change", hold) is not None
    assert log.record("p", Kind.HOLD, "demand 4 streams: no change", hold) is None
    assert log.record("p", Kind.HOLD, "held (within tolerance band)", hold) is not None
    up = _action(1, 2, Outcome.APPLIED)
    assert log.record("p", Kind.SCALE, "queue of 1: +1", up) is not None
    assert log.record("p", Kind.SCALE, "queue of 1: +1", up) is not None  # applied twice
    assert [r.sequence for r in log.recent()] == [2, 3, 4]  # only 3 kept
    assert [r.sequence for r in log.recent("p", 1)] == [4]

    watch = log.watch(replay=1)
    assert (await anext(watch)).sequence == 4
    pending = asyncio.ensure_future(anext(watch))
    await asyncio.sleep(0)  # the watcher is now waiting for new records
    log.append("q", Kind.HOLD, "other pool", ())
    assert (await pending).pool == "q"
    for n in range(3):  # more than the watcher's queue holds: its stream ends
        log.append("q", Kind.HOLD, f"burst {n}", ())
    seen = [r.reason async for r in watch]
    assert seen == ["burst 0", "burst 1"]


def test_settings_from_flags_and_environment() -> None:
    settings = load_settings(
        [
            "--pools=asr_small,asr_large",
            "--on-demand-min=asr_large=0",
            "--on-demand-max=asr_small=2",
            "--local-asr-args=--max-streams=1,--cpu-threads=1",
            "--rise-quantile=0.99",
            "--gpu-utilisation-limit=0.8",
        ],
        {"VOXMESH_AUTOSCALER_SCALE_DOWN_WINDOW": "10", "VOXMESH_AUTOSCALER_TARGET": "nomad"},
    )
    assert settings.target == "nomad"
    assert settings.local_asr_args == ("--max-streams=1", "--cpu-threads=1")
    small, large = settings.pool_policy("asr_small"), settings.pool_policy("asr_large")
    assert (small.on_demand.min_count, small.on_demand.max_count) == (1, 2)
    assert small.scale_down_window_s == 10 and not small.allow_scale_to_zero
    assert (small.rise_quantile, small.gpu_utilisation_limit) == (0.99, 0.8)
    assert large.rise_history_s == PoolPolicy().rise_history_s
    assert large.on_demand.min_count == 0 and large.allow_scale_to_zero
    assert settings.fallback_max_streams("asr_large") == 2
    assert settings.leader_backend == "file"
    assert settings.router_targets == ("127.0.0.1:50051",)
    cluster = load_settings([], {"VOXMESH_AUTOSCALER_DISCOVERY": "consul"})
    assert cluster.leader_backend == "consul"
    assert cluster.router_targets == ()  # discovered in Consul


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--target=kubernetes"], "setting target='kubernetes'"),
        (["--on-demand-min=asr_huge=1"], "setting on_demand_min: ['asr_huge']"),
        (["--on-demand-max=asr_small=lots"], "setting on_demand_max[asr_small]='lots'"),
        (["--on-demand-min=asr_small=3", "--on-demand-max=asr_small=2"], "max_count"),
        (["--routers=router-1"], "setting routers: 'router-1' is not host:port"),
        (["--telemetry-interval=0.01"], "setting telemetry_interval=0.01"),
    ],
)
def test_invalid_settings_name_the_setting(argv: list[str], message: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(message)):
        load_settings(argv, {})


async def test_cluster_settings_wire_consul_discovery_the_consul_lock_and_nomad() -> None:
    settings = load_settings(
        [],
        {
            "VOXMESH_AUTOSCALER_TARGET": "nomad",
            "VOXMESH_AUTOSCALER_DISCOVERY": "consul",
            "VOXMESH_AUTOSCALER_LEADER_KEY": "voxmesh/test/leader",
            "VOXMESH_AUTOSCALER_PORT": "0",
            "VOXMESH_AUTOSCALER_METRICS_PORT": "-1",
        },
    )
    app = AutoscalerApp(settings, registry=CollectorRegistry())  # connects to nothing yet
    assert isinstance(app.source, TelemetrySource)
    assert isinstance(app.target, NomadTarget)
    assert isinstance(make_lock(settings), ConsulLeaderLock)
    local = load_settings(["--signals=prometheus"], {})
    assert isinstance(make_source(local, time.monotonic), PrometheusSource)
    assert isinstance(make_lock(local), FileLeaderLock)

    sole = make_lock(load_settings(["--leader=none"], {}))  # one replica: always the leader
    assert await sole.acquire() and sole.is_leader
    holding = asyncio.create_task(sole.hold())
    await sole.release()
    await asyncio.wait_for(holding, 5)
    assert not sole.is_leader


def test_gpu_figures_an_instance_reports_unknown_are_not_read_as_zero() -> None:
    """A GPU whose utilisation NVML does not report is not an idle GPU: the guard must
    not see 0 %, only the figures that were read."""
    info = InstanceInfo("a", "asr_small", "tiny.en", "127.0.0.1", 1)
    snapshot = stt_pb2.TelemetrySnapshot(
        instance_id="a", state=stt_pb2.SERVING_STATE_SERVING, gpu_available=True
    )
    snapshot.gpus.add(index=0, memory_total_bytes=8, unknown_figures=["utilization_ratio"])
    snapshot.gpus.add(index=1, utilization_ratio=0.4, memory_used_bytes=2, memory_total_bytes=8)
    load = _instance_load(_Feed("instance", info, 0.0), snapshot)
    assert load.gpu_utilisation == 0.4
    snapshot.gpus[1].unknown_figures.append("utilization_ratio")
    assert _instance_load(_Feed("instance", info, 0.0), snapshot).gpu_utilisation is None


def _silent_pool_results(
    scraped: tuple[str, ...], down: tuple[str, ...]
) -> dict[str, list[tuple[dict[str, str], float]]]:
    """PromQL answers for a pool of three on-demand instances with 8 streams; ``a`` has a
    saturated GPU. Prometheus drops the series of the instances in ``down`` (their scrape
    failed) but keeps their ``up`` at 0."""
    small = {"pool": "asr_small"}
    active = {"a": 1.0, "b": 4.0, "c": 3.0}
    util = {"a": 0.99, "b": 0.3, "c": 0.3}
    return {
        "instances": [({**small, "instance_id": i}, active[i]) for i in scraped],
        "gpu_util": [({"instance_id": i}, util[i]) for i in scraped],
        "queued": [({**small, "priority": "realtime"}, 0.0)],
        "router_streams": [(small, 8.0)],
        "capacity": [(small, 12.0)],
        "accepting": [(small, 3.0)],
        "router_age": [(small, 1.0)],
        "instance_age": [(small, 2.0)] if scraped else [],
        "instances_down": [
            ({**small, "instance_id": i, "service": "voxmesh-asr-small"}, 0.0) for i in down
        ],
    }


def test_an_instance_prometheus_cannot_scrape_makes_the_pool_stale() -> None:
    """Prometheus drops the series of a target whose scrape fails: the instance's absence
    must not read as spare capacity. Its ``up`` says it is there: the pool's signals are
    stale (no scale-down) while the routers' demand stays fresh (scale-up still works)."""
    everyone = load_from_results("asr_small", _silent_pool_results(("a", "b", "c"), ()))
    assert (everyone.age_s, everyone.router_age_s, everyone.missing) == (2.0, 1.0, "")

    silent = load_from_results("asr_small", _silent_pool_results(("b", "c"), ("a",)))
    assert math.isinf(silent.age_s)
    assert (silent.router_age_s, silent.missing) == (1.0, "")  # not missing: it may grow
    assert [i.instance_id for i in silent.instances] == ["b", "c"]
    assert math.isinf(
        load_from_results("asr_small", _silent_pool_results((), ("a", "b", "c"))).age_s
    )
    # Another pool's silent instance leaves this one alone.
    other = _silent_pool_results(("a", "b", "c"), ())
    other["instances_down"] = [({"pool": "asr_large", "instance_id": "z"}, 0.0)]
    assert load_from_results("asr_small", other).age_s == 2.0


def test_the_policy_never_shrinks_a_pool_on_an_instance_prometheus_cannot_scrape() -> None:
    """The saturated instance ``a`` keeps three instances needed (8 streams on 4-stream
    instances need two, the GPU guard a third); while ``a`` is not scraped, that guard
    cannot see it, and the pool must hold instead of shrinking to two."""
    policy = PoolPolicy(
        on_demand=GroupLimits(min_count=1, max_count=4, lead_time_s=0.0),
        preemptible=GroupLimits(min_count=0, max_count=0),
        target_utilisation=1.0,
        burst_sigmas=0.0,
        tolerance=0.0,
        scale_down_window_s=10.0,
        stale_after_s=15.0,
    )
    serving = GroupSignals(serving=3)
    state, now = PolicyState(), 0.0
    for scraped, down in ((("a", "b", "c"), ()), (("b", "c"), ("a",))):
        load = load_from_results("asr_small", _silent_pool_results(scraped, down))
        signals = pool_signals(load, serving, GroupSignals(), 1)
        for _ in range(30):  # three windows
            now += 1.0
            decision, state = decide(signals, state, policy, now)
            assert decision.on_demand.desired == 3, (scraped, decision.reason)
            assert decision.preemptible.desired == 0
    assert "nothing shrinks" in decision.reason


async def test_a_poll_that_fails_in_any_way_is_a_failed_poll_not_a_crash(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever one poll runs into, it says so and returns, so that ``run()`` polls again;
    the load of the next good poll replaces the error."""
    fault: list[Exception] = []

    def urlopen(url: str, timeout: float) -> io.BytesIO:
        if fault:
            raise fault[0]
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["query"][0]
        samples = [({"pool": "asr_small"}, 0.5)] if query == QUERIES["router_age"] else []
        return io.BytesIO(json.dumps(_vector(*samples)).encode())

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    source = PrometheusSource("http://prometheus:9090", ["asr_small"])

    fault[:] = [http.client.LineTooLong("status line")]  # an HTTPException, not an OSError
    await source.poll()
    assert source.read("asr_small").missing == (
        "Prometheus not answered yet: cannot query http://prometheus:9090: "
        "LineTooLong('got more than 65536 bytes when reading status line')"
    )
    fault[:] = [RuntimeError("a fault of nobody's foresight")]
    caplog.clear()
    with caplog.at_level(logging.ERROR, "services.autoscaler.signals.prometheus"):
        await source.poll()
        await source.poll()  # the same fault again: logged once
    (logged,) = caplog.records
    assert logged.exc_info is not None and logged.exc_info[0] is RuntimeError
    reason = source.read("asr_small").missing
    assert reason.endswith("RuntimeError: a fault of nobody's foresight")

    fault.clear()
    await source.poll()
    load = source.read("asr_small")
    assert load.missing == "" and load.router_age_s < 5
