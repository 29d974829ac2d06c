"""Consul discovery through the real code (py-consul over HTTP) against the Consul double.

The instances are real ``grpc.aio`` servers with the standard health service
on port 0; the double probes them with ``grpc.health.v1.Health/Check`` the way
a Consul agent runs a gRPC check. The last tests pin the double itself to a
few documented edge cases of the Consul HTTP API.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator

import consul
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from tests.conditions import wait_until, wait_until_async
from tests.doubles.consul_double import ConsulDouble, blocking_wait
from tests.health_server import HealthServer, health_server
from voxmesh.discovery.base import CAPACITY_PREEMPTIBLE, InstanceInfo, consul_service_name
from voxmesh.discovery.consul import (
    ConsulRegistrar,
    ConsulWatcher,
    PyConsulApi,
    next_index,
)
from voxmesh.errors import SettingsError

POOL = "asr_small"
SERVICE = consul_service_name(POOL)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def double() -> Iterator[ConsulDouble]:
    """A Consul double with agent timers shortened the way Consul's own tests do."""
    instance = ConsulDouble(min_check_interval=0.05, reap_interval=0.05, deregister_min=0.3)
    instance.start()
    yield instance
    instance.stop()


@pytest.fixture
async def instance() -> AsyncIterator[HealthServer]:
    async with health_server() as server:
        yield server


def api(double: ConsulDouble) -> PyConsulApi:
    return PyConsulApi.connect("127.0.0.1", double.port)


def info_for(port: int, instance_id: str = "asr-small-1") -> InstanceInfo:
    return InstanceInfo(
        instance_id=instance_id,
        pool=POOL,
        model="tiny.en",
        address="127.0.0.1",
        port=port,
        capacity_class=CAPACITY_PREEMPTIBLE,
        gpu_type="H100",
        region="eu-west",
        max_streams=8,
        metrics_port=9100,
        meta={"zone": "b"},
    )


def registrar_for(double: ConsulDouble) -> ConsulRegistrar:
    return ConsulRegistrar(api(double), check_interval="100ms", resync_interval=0.1)


def watcher_for(double: ConsulDouble, wait: str = "1s") -> ConsulWatcher:
    return ConsulWatcher(
        api(double), POOL, wait=wait, rate_every=0.01, backoff_base=0.02, backoff_max=0.1
    )


class Collector:
    """Consumes a watcher in the background and keeps every set it yields."""

    def __init__(self, watcher: ConsulWatcher) -> None:
        self.sets: list[list[InstanceInfo]] = []
        self._task = asyncio.create_task(self._run(watcher))

    async def _run(self, watcher: ConsulWatcher) -> None:
        async for instances in watcher.watch():
            self.sets.append(instances)

    def ids(self) -> list[str] | None:
        return [i.instance_id for i in self.sets[-1]] if self.sets else None

    async def until(self, ids: list[str], within: float = 5.0) -> None:
        await wait_until_async(lambda: self.ids() == ids, within)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@pytest.fixture
async def collectors() -> AsyncIterator[list[Collector]]:
    created: list[Collector] = []
    yield created
    for collector in created:
        await collector.close()


@pytest.fixture
async def registrars() -> AsyncIterator[list[ConsulRegistrar]]:
    created: list[ConsulRegistrar] = []
    yield created
    for registrar in created:
        await registrar.deregister()


async def registered_and_seen(
    double: ConsulDouble,
    instance: HealthServer,
    registrars: list[ConsulRegistrar],
    collectors: list[Collector],
) -> tuple[ConsulRegistrar, Collector]:
    """Registers ``instance`` and waits until a watcher sees it passing."""
    registrar = registrar_for(double)
    registrars.append(registrar)
    await registrar.register(info_for(instance.port))
    collector = Collector(watcher_for(double))
    collectors.append(collector)
    await collector.until(["asr-small-1"])
    return registrar, collector


async def test_registration_shape(
    double: ConsulDouble, instance: HealthServer, registrars: list[ConsulRegistrar]
) -> None:
    registrar = registrar_for(double)
    registrars.append(registrar)
    await registrar.register(info_for(instance.port))

    service = double.service("asr-small-1")
    assert service is not None
    assert service["Service"] == SERVICE and service["Port"] == instance.port
    assert service["Tags"] == ["voxmesh", "pool=asr_small", "model=tiny.en", "preemptible"]
    assert service["Meta"] == {
        "zone": "b",
        "model": "tiny.en",
        "pool": "asr_small",
        "capacity_class": "preemptible",
        "gpu_type": "H100",
        "region": "eu-west",
        "max_streams": "8",
        "metrics_port": "9100",
        "instance_id": "asr-small-1",
        "draining": "false",
    }
    check = double.check("service:asr-small-1")
    assert check is not None and check["Type"] == "grpc"
    definition = check["Definition"]
    assert definition["grpc"] == f"127.0.0.1:{instance.port}"
    assert definition["interval"] == "100ms" and definition["timeout"] == "2s"
    assert definition["deregistercriticalserviceafter"] == "1m"


async def test_an_ipv6_instance_is_checked_at_a_bracketed_target(
    double: ConsulDouble, registrars: list[ConsulRegistrar], collectors: list[Collector]
) -> None:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health_aio.HealthServicer(), server)
    port = server.add_insecure_port("[::1]:0")
    await server.start()
    try:
        info = dataclasses.replace(info_for(port), address="::1")
        assert info.target == f"[::1]:{port}"
        assert dataclasses.replace(info, address="[::1]").target == f"[::1]:{port}"
        registrar = registrar_for(double)
        registrars.append(registrar)
        await registrar.register(info)
        check = double.check("service:asr-small-1")
        assert check is not None and check["Definition"]["grpc"] == f"[::1]:{port}"
        collector = Collector(watcher_for(double))
        collectors.append(collector)
        await collector.until(["asr-small-1"])  # the double's gRPC probe reached it
    finally:
        await server.stop(0)


def test_deregister_after_below_one_minute_is_rejected(double: ConsulDouble) -> None:
    with pytest.raises(SettingsError, match="deregister_after"):
        ConsulRegistrar(api(double), deregister_after="30s")


@pytest.mark.parametrize(("drain_timeout", "reap"), [(100.0, "130s"), (20.0, "1m")])
async def test_a_drain_longer_than_deregister_after_is_never_reaped(
    double: ConsulDouble, registrars: list[ConsulRegistrar], drain_timeout: float, reap: str
) -> None:
    """Draining keeps the check critical: the agent must not reap the instance mid-drain."""
    registrar = ConsulRegistrar(api(double), deregister_after="1m", drain_timeout=drain_timeout)
    registrars.append(registrar)
    await registrar.register(info_for(1, "asr-small-1"))
    check = double.check("service:asr-small-1")
    assert check is not None
    assert check["Definition"]["deregistercriticalserviceafter"] == reap


async def test_absent_until_grpc_check_passes_then_dropped_when_critical(
    double: ConsulDouble,
    instance: HealthServer,
    registrars: list[ConsulRegistrar],
    collectors: list[Collector],
) -> None:
    await instance.set(NOT_SERVING)
    registrar = registrar_for(double)
    registrars.append(registrar)
    me = info_for(instance.port)
    await registrar.register(me)
    collector = Collector(watcher_for(double))
    collectors.append(collector)

    await collector.until([])
    wait_until(lambda: "NOT_SERVING" in (double.check("service:asr-small-1") or {})["Output"])
    assert collector.ids() == [], "a critical instance must not be routable"

    await instance.set(SERVING)
    await collector.until(["asr-small-1"])
    assert collector.sets[-1] == [me], "Meta must round-trip into InstanceInfo"

    await instance.set(NOT_SERVING)
    await collector.until([])


async def test_flapping_instance_is_followed_without_duplicate_sets(
    double: ConsulDouble,
    instance: HealthServer,
    registrars: list[ConsulRegistrar],
    collectors: list[Collector],
) -> None:
    registrar = registrar_for(double)
    registrars.append(registrar)
    await registrar.register(info_for(instance.port))
    collector = Collector(watcher_for(double))
    collectors.append(collector)
    for _ in range(3):
        await instance.set(SERVING)
        await collector.until(["asr-small-1"])
        await instance.set(NOT_SERVING)
        await collector.until([])
    ids = [[i.instance_id for i in s] for s in collector.sets]
    assert all(a != b for a, b in itertools.pairwise(ids)), ids


async def test_unchanged_results_are_not_yielded_again(
    double: ConsulDouble,
    instance: HealthServer,
    registrars: list[ConsulRegistrar],
    collectors: list[Collector],
) -> None:
    registrar = registrar_for(double)
    registrars.append(registrar)
    await registrar.register(info_for(instance.port))
    collector = Collector(watcher_for(double, wait="50ms"))
    collectors.append(collector)
    await collector.until(["asr-small-1"])
    yielded, mark = len(collector.sets), len(double.requests)
    client = consul.Consul(host="127.0.0.1", port=double.port)
    client.agent.service.register(SERVICE, service_id="never-ready", port=1, check={"TTL": "60s"})

    def health_queries() -> int:
        return sum(r.path.endswith(SERVICE) for r in list(double.requests)[mark:])

    await wait_until_async(lambda: health_queries() >= 5)  # index bumps and wait timeouts
    assert len(collector.sets) == yielded


async def test_draining_drops_instance_via_maintenance_mode(
    double: ConsulDouble,
    instance: HealthServer,
    registrars: list[ConsulRegistrar],
    collectors: list[Collector],
) -> None:
    registrar, collector = await registered_and_seen(double, instance, registrars, collectors)

    await registrar.set_draining()
    await collector.until([])
    maintenance = double.check("_service_maintenance:asr-small-1")
    assert maintenance is not None and maintenance["Status"] == "critical"
    assert (double.service("asr-small-1") or {})["Meta"]["draining"] == "true"
    check = double.check("service:asr-small-1")
    assert check is not None and check["Status"] == "passing", "it still serves its own streams"


async def test_deregister_removes_instance_and_is_idempotent(
    double: ConsulDouble, instance: HealthServer, collectors: list[Collector]
) -> None:
    registrar = registrar_for(double)
    await registrar.deregister()  # before register: nothing happens
    await registrar.register(info_for(instance.port))
    collector = Collector(watcher_for(double))
    collectors.append(collector)
    await collector.until(["asr-small-1"])

    await registrar.deregister()
    await registrar.deregister()
    await collector.until([])
    assert double.service("asr-small-1") is None
    assert double.check("service:asr-small-1") is None


async def test_agent_that_forgot_the_instance_gets_it_back(
    double: ConsulDouble,
    instance: HealthServer,
    registrars: list[ConsulRegistrar],
    collectors: list[Collector],
) -> None:
    _registrar, collector = await registered_and_seen(double, instance, registrars, collectors)

    double.wipe()  # a -dev agent restart: registrations and indexes are gone
    await wait_until_async(lambda: double.service("asr-small-1") is not None)
    await collector.until(["asr-small-1"])


async def test_a_registration_that_failed_is_retried_on_the_backoff_not_the_resync(
    double: ConsulDouble, instance: HealthServer, registrars: list[ConsulRegistrar]
) -> None:
    """An instance started while its agent restarts is registered as soon as the agent is
    back, not a whole resync interval later; so is a drain mark that did not get through."""
    registrar = ConsulRegistrar(
        api(double), resync_interval=60.0, backoff_base=0.05, backoff_max=0.2
    )
    registrars.append(registrar)
    double.pause("refuse")
    await registrar.register(info_for(instance.port))  # fails: the keeper retries
    double.resume()
    await wait_until_async(lambda: double.service("asr-small-1") is not None)

    double.pause("refuse")
    await registrar.set_draining()  # fails while the keeper waits out its resync
    double.resume()
    await wait_until_async(lambda: double.check("_service_maintenance:asr-small-1") is not None)
    assert (double.service("asr-small-1") or {})["Meta"]["draining"] == "true"


async def test_a_hung_agent_holds_up_the_drain_mark_and_the_deregistration_briefly(
    double: ConsulDouble, instance: HealthServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A blackholed agent (py-consul waits 30 s per call) held an instance's shutdown
    past the scheduler's kill timeout: each shutdown call waits ``shutdown_timeout``."""
    bound = 0.3
    registrar = ConsulRegistrar(
        api(double), resync_interval=0.05, backoff_base=0.05, shutdown_timeout=bound
    )
    await registrar.register(info_for(instance.port))
    double.pause("hang")
    try:
        # The keeper's next check hangs, holding the registrar's lock.
        await wait_until_async(
            lambda: any(
                r.paused and r.path == "/v1/agent/service/asr-small-1" for r in double.requests
            )
        )
        with caplog.at_level(logging.WARNING, logger="voxmesh.discovery.consul"):
            for step in (registrar.set_draining, registrar.deregister):
                started = time.monotonic()
                await asyncio.wait_for(step(), 10)
                assert time.monotonic() - started < bound + 0.5, step.__name__
        messages = [r.getMessage() for r in caplog.records]
        no_answer = f"no answer within {bound:g} s"
        assert any("draining failed" in m and no_answer in m for m in messages)
        assert any("deregistering asr-small-1 failed" in m for m in messages)
    finally:
        double.resume()


def test_critical_instance_is_reaped_after_deregister_critical_service_after(
    double: ConsulDouble,
) -> None:
    client = consul.Consul(host="127.0.0.1", port=double.port)
    check = {"TTL": "50ms", "DeregisterCriticalServiceAfter": "10ms"}
    start = time.monotonic()
    client.agent.service.register(SERVICE, service_id="doomed", port=1, check=check)
    wait_until(lambda: double.service("doomed") is None)
    elapsed = time.monotonic() - start
    assert elapsed >= 0.05 + 0.3, "the clock starts when the TTL runs out, then the minimum"


def test_registering_again_restarts_the_reap_clock() -> None:
    """The agent restores a re-registered check's status and output, in a new check state
    whose critical clock starts again at its next update: an instance that registers
    itself again is not reaped on the old clock."""
    double = ConsulDouble(min_check_interval=0.05, reap_interval=0.05, deregister_min=1.0)
    double.start()
    try:
        client = consul.Consul(host="127.0.0.1", port=double.port)
        check = {"TTL": "50ms", "DeregisterCriticalServiceAfter": "10ms"}
        client.agent.service.register(SERVICE, service_id="again", port=1, check=check)
        wait_until(lambda: double.critical_for("service:again") is not None)  # TTL ran out
        client.agent.service.register(SERVICE, service_id="again", port=1, check=check)
        registered_again = time.monotonic()
        assert double.critical_for("service:again") is None
        restored = double.check("service:again")
        assert restored is not None and restored["Status"] == "critical"
        assert restored["Output"] == "TTL expired"
        wait_until(lambda: double.service("again") is None)
        assert time.monotonic() - registered_again >= 0.05 + 1.0
    finally:
        double.stop()


async def test_watcher_keeps_last_set_while_consul_refuses_and_recovers(
    double: ConsulDouble,
    instance: HealthServer,
    registrars: list[ConsulRegistrar],
    collectors: list[Collector],
    caplog: pytest.LogCaptureFixture,
) -> None:
    _registrar, collector = await registered_and_seen(double, instance, registrars, collectors)
    yielded = len(collector.sets)

    with caplog.at_level(logging.WARNING, logger="voxmesh.discovery.consul"):
        double.pause("refuse")
        await instance.set(NOT_SERVING)  # the double keeps probing behind the closed port

        def failures() -> int:
            return sum("watching" in r.getMessage() for r in caplog.records)

        await wait_until_async(lambda: failures() >= 3)
    assert len(collector.sets) == yielded, "nothing is yielded for an error"
    assert collector.ids() == ["asr-small-1"]

    double.resume()
    await collector.until([])


async def test_watcher_rides_out_500s(
    double: ConsulDouble,
    instance: HealthServer,
    registrars: list[ConsulRegistrar],
    collectors: list[Collector],
) -> None:
    _registrar, collector = await registered_and_seen(double, instance, registrars, collectors)

    double.pause("error")
    mark = len(double.requests)
    await instance.set(NOT_SERVING)

    def answered_500() -> int:
        return sum(r.paused and r.path.endswith(SERVICE) for r in list(double.requests)[mark:])

    await wait_until_async(lambda: answered_500() >= 3)
    assert collector.ids() == ["asr-small-1"]
    double.resume()
    await collector.until([])


async def test_index_going_backwards_resets_the_blocking_loop(
    double: ConsulDouble,
    instance: HealthServer,
    registrars: list[ConsulRegistrar],
    collectors: list[Collector],
) -> None:
    double.advance_index(1000)
    registrar = registrar_for(double)
    registrars.append(registrar)
    await registrar.register(info_for(instance.port))
    collector = Collector(watcher_for(double, wait="300ms"))
    collectors.append(collector)
    await collector.until(["asr-small-1"])

    mark = len(double.requests)
    double.wipe()

    def health_queries() -> list[dict[str, str]]:
        return [r.query for r in list(double.requests)[mark:] if r.path.endswith(SERVICE)]

    await wait_until_async(lambda: any(int(q["index"]) > 1000 for q in health_queries()))
    await wait_until_async(lambda: any("index" not in q for q in health_queries()))
    await collector.until(["asr-small-1"])
    assert all(int(q.get("index", "1")) >= 1 for q in health_queries())


def test_next_index_rules() -> None:
    assert next_index(0, 17) == 17
    assert next_index(17, 17) == 17
    assert next_index(17, 5) == 0, "lower than before: reset"
    assert next_index(0, 0) == 1, "never block on index 0"


async def test_empty_service_address_falls_back_to_node_and_meta_is_optional(
    double: ConsulDouble, collectors: list[Collector]
) -> None:
    client = consul.Consul(host="127.0.0.1", port=double.port)
    meta = {"model": "base", "max_streams": "not-a-number"}
    client.agent.service.register(
        SERVICE, service_id="bare", port=7000, meta=meta, check={"TTL": "60s"}
    )
    client.agent.check.ttl_pass("service:bare")
    collector = Collector(watcher_for(double))
    collectors.append(collector)
    await collector.until(["bare"])

    expected = InstanceInfo(
        instance_id="bare", pool=POOL, model="base", address=double.node_address, port=7000
    )
    assert collector.sets[-1] == [expected]


async def test_node_failure_drops_every_instance(
    double: ConsulDouble,
    instance: HealthServer,
    registrars: list[ConsulRegistrar],
    collectors: list[Collector],
) -> None:
    _registrar, collector = await registered_and_seen(double, instance, registrars, collectors)
    double.node_fail()
    await collector.until([])
    double.node_recover()
    await collector.until(["asr-small-1"])


# --------------------------------------------------------------------------
# The double itself, on documented edge cases of the Consul HTTP API.


def http(
    double: ConsulDouble, method: str, path: str, body: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(double.url + path, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_double_kv_missing_key_is_404_with_empty_body_and_index(double: ConsulDouble) -> None:
    status, headers, body = http(double, "GET", "/v1/kv/missing")
    assert (status, body) == (404, b"")
    assert int(headers["X-Consul-Index"]) >= 1
    assert headers["X-Consul-KnownLeader"] == "true"


def test_double_kv_put_answers_literal_true_and_value_is_base64(double: ConsulDouble) -> None:
    assert http(double, "PUT", "/v1/kv/k", b"test")[2] == b"true"
    _, headers, body = http(double, "GET", "/v1/kv/k")
    entry = json.loads(body)[0]
    assert entry["Value"] == "dGVzdA==" and entry["LockIndex"] == 0 and "Session" not in entry
    assert headers["X-Consul-Index"] == str(entry["ModifyIndex"])


def test_double_errors_are_text_plain(double: ConsulDouble) -> None:
    status, headers, body = http(double, "PUT", "/v1/agent/check/pass/nope")
    assert status == 500 and headers["Content-Type"].startswith("text/plain")
    assert body == b'CheckID "nope" does not have associated TTL'
    client = consul.Consul(host="127.0.0.1", port=double.port)
    client.agent.service.register(
        SERVICE, service_id="grpc", port=1, check={"GRPC": "127.0.0.1:1", "Interval": "1h"}
    )
    status, _, body = http(double, "PUT", "/v1/agent/check/pass/service:grpc")
    assert (status, body) == (500, b'CheckID "service:grpc" does not have associated TTL')
    status, _, body = http(double, "PUT", "/v1/session/renew/nope")
    assert (status, body) == (404, b"Session id 'nope' not found")
    status, _, body = http(double, "PUT", "/v1/kv/k?acquire=nope", b"x")
    assert (status, body) == (500, b'invalid session "nope"')
    status, _, body = http(double, "PUT", "/v1/agent/service/register", b'{"Port": 1}')
    assert (status, body) == (400, b"Missing service name")
    status, _, body = http(double, "GET", "/v1/health/service/x?passing=maybe")
    assert (status, body) == (400, b"Invalid value for ?passing")


async def test_unknown_ids_are_404_as_the_agent_source_vets_them_even_without_acls() -> None:
    vetting = ConsulDouble(acl_vetting=True)
    vetting.start()
    try:
        await _unknown_ids_are_404(vetting)
    finally:
        vetting.stop()


async def _unknown_ids_are_404(double: ConsulDouble) -> None:
    unknown = (
        b'Unknown service ID "gone". Ensure that the service ID is passed, not the service name.'
    )
    assert http(double, "PUT", "/v1/agent/service/deregister/gone")[::2] == (404, unknown)
    path = "/v1/agent/service/maintenance/gone?enable=true"
    assert http(double, "PUT", path)[::2] == (404, unknown)
    unknown_check = (
        b'Unknown check ID "nope". Ensure that the check ID is passed, not the check name.'
    )
    assert http(double, "PUT", "/v1/agent/check/warn/nope")[::2] == (404, unknown_check)
    body = b'{"Status": "passing"}'
    assert http(double, "PUT", "/v1/agent/check/update/nope", body)[::2] == (404, unknown_check)

    api = PyConsulApi.connect("127.0.0.1", double.port)
    await api.deregister_service("gone")  # an agent that forgot it: nothing left to do
    assert not await api.set_maintenance("gone", True, "draining")
    registrar = ConsulRegistrar(api)
    await registrar.register(info_for(1, "gone"))
    double.wipe()  # a -dev agent restart: the instance is unknown now
    await registrar.deregister()  # answered 404: no error


async def test_unknown_service_ids_as_the_api_docs_describe_them_are_no_error_either() -> None:
    documented = ConsulDouble()  # the default: the documented answers
    documented.start()
    try:
        # The docs: deregistering an unknown service is a no-op (200).
        assert http(documented, "PUT", "/v1/agent/service/deregister/gone")[::2] == (200, b"")
        status, _, body = http(documented, "PUT", "/v1/agent/check/pass/nope")
        assert (status, body) == (500, b'CheckID "nope" does not have associated TTL')
        api = PyConsulApi.connect("127.0.0.1", documented.port)
        await api.deregister_service("gone")
        assert not await api.set_maintenance("gone", True, "draining")
    finally:
        documented.stop()


def test_double_unknown_service_is_empty_list_with_index(double: ConsulDouble) -> None:
    status, headers, body = http(double, "GET", "/v1/health/service/nobody?passing")
    assert (status, body) == (200, b"[]")
    assert int(headers["X-Consul-Index"]) >= 1


def test_double_session_defaults_and_lock_delay_quirk(double: ConsulDouble) -> None:
    sid = json.loads(http(double, "PUT", "/v1/session/create", b'{"LockDelay": 5}')[2])["ID"]
    info = json.loads(http(double, "GET", f"/v1/session/info/{sid}")[2])[0]
    assert info["LockDelay"] == 5_000_000_000, "numbers below 1000 are seconds"
    assert info["NodeChecks"] == ["serfHealth"] and info["Behavior"] == "release"
    body = b'{"Checks": [], "TTL": "10s"}'
    sid = json.loads(http(double, "PUT", "/v1/session/create", body)[2])["ID"]
    renewed = json.loads(http(double, "PUT", f"/v1/session/renew/{sid}")[2])
    assert (
        isinstance(renewed, list) and renewed[0]["NodeChecks"] == [] and renewed[0]["TTL"] == "10s"
    )
    assert http(double, "PUT", f"/v1/session/destroy/{sid}")[2] == b"true"
    assert http(double, "GET", f"/v1/session/info/{sid}")[2] == b"[]"
    status, _, body = http(double, "PUT", "/v1/session/create", b'{"TTL": "5s"}')
    assert status == 500 and body.startswith(b"Invalid Session TTL")


def test_double_session_checks_follow_the_agents_defaults(double: ConsulDouble) -> None:
    client = consul.Consul(host="127.0.0.1", port=double.port)
    check = {"TTL": "1h", "Status": "passing"}
    client.agent.service.register(SERVICE, service_id="ttl", port=1, check=check)

    def create(body: dict[str, object]) -> dict[str, object]:
        status, _, raw = http(double, "PUT", "/v1/session/create", json.dumps(body).encode())
        assert status == 200, raw
        sid = json.loads(raw)["ID"]
        info: dict[str, object] = json.loads(http(double, "GET", f"/v1/session/info/{sid}")[2])[0]
        return info

    default = create({"LockDelay": "90s"})
    assert default["NodeChecks"] == ["serfHealth"] and "Checks" not in default
    assert default["LockDelay"] == 90_000_000_000, "capped only when used"
    only_service = create({"NodeChecks": ["service:ttl"]})
    assert only_service["NodeChecks"] == ["service:ttl"], "a NodeChecks key replaces serfHealth"
    assert "Checks" not in only_service
    assert create({"NodeChecks": []})["NodeChecks"] == [], "so does an empty one"
    deprecated = create({"Checks": ["service:ttl"]})
    assert deprecated["Checks"] == ["service:ttl"], "the deprecated field is kept"
    assert deprecated["NodeChecks"] == ["serfHealth"], "beside the default node check"
    assert create({"Checks": []})["NodeChecks"] == [], "an empty Checks empties NodeChecks"

    double.node_fail()
    alive = double.session_ids()
    assert only_service["ID"] in alive, "serfHealth is not among its checks"
    assert default["ID"] not in alive and deprecated["ID"] not in alive


def test_double_blocking_query_waits_for_change_or_timeout(double: ConsulDouble) -> None:
    _, headers, _ = http(double, "GET", "/v1/kv/k")
    index = headers["X-Consul-Index"]
    start = time.monotonic()
    status, headers, _ = http(double, "GET", f"/v1/kv/k?index={index}&wait=200ms")
    elapsed = time.monotonic() - start
    assert status == 404 and headers["X-Consul-Index"] == index
    assert 0.2 <= elapsed < 0.2 + 0.2 / 16 + 0.5, elapsed

    result: list[tuple[int, dict[str, str], bytes]] = []

    def block() -> None:
        result.append(http(double, "GET", f"/v1/kv/k?index={index}&wait=5s"))

    thread = threading.Thread(target=block)
    start = time.monotonic()
    thread.start()
    wait_until(lambda: any(r.query.get("wait") == "5s" for r in double.requests))
    http(double, "PUT", "/v1/kv/k", b"v")
    thread.join(timeout=5)
    assert result and result[0][0] == 200 and time.monotonic() - start < 2
    assert int(result[0][1]["X-Consul-Index"]) > int(index)


def test_double_blocking_query_with_a_wait_not_positive_waits_the_default(
    double: ConsulDouble,
) -> None:
    """``wait=0s`` is Consul's default 5 min (``blockingQuery``), not an immediate answer."""
    _, headers, _ = http(double, "GET", "/v1/kv/k")
    index = headers["X-Consul-Index"]
    result: list[tuple[int, dict[str, str], bytes]] = []
    thread = threading.Thread(
        target=lambda: result.append(http(double, "GET", f"/v1/kv/k?index={index}&wait=0s"))
    )
    thread.start()
    wait_until(lambda: any(r.query.get("wait") == "0s" for r in double.requests))
    http(double, "PUT", "/v1/kv/k", b"v")
    thread.join(timeout=5)
    assert result and result[0][0] == 200, "it blocked until the write"
    assert int(result[0][1]["X-Consul-Index"]) > int(index)


@pytest.mark.parametrize(
    ("query", "seconds"),
    [({}, 300.0), ({"wait": "0s"}, 300.0), ({"wait": "-1s"}, 300.0), ({"wait": "20m"}, 600.0)],
)
def test_double_blocking_waits_default_to_five_minutes_and_stop_at_ten(
    query: dict[str, str], seconds: float
) -> None:
    assert blocking_wait(query) == seconds


def test_double_ttl_check_turns_critical_when_not_refreshed(double: ConsulDouble) -> None:
    client = consul.Consul(host="127.0.0.1", port=double.port)
    check = {"TTL": "200ms", "Status": "passing"}
    client.agent.service.register(SERVICE, service_id="ttl", port=1, check=check)
    assert (double.check("service:ttl") or {})["Status"] == "passing"
    start = time.monotonic()
    wait_until(lambda: (double.check("service:ttl") or {})["Status"] == "critical")
    assert time.monotonic() - start >= 0.1
    client.agent.check.ttl_warn("service:ttl", notes="slow")
    assert (double.check("service:ttl") or {})["Status"] == "warning"
    _, _, body = http(double, "GET", f"/v1/health/service/{SERVICE}?passing")
    assert body == b"[]", "warning is not passing"


def test_double_filter_subset_and_tags(double: ConsulDouble) -> None:
    client = consul.Consul(host="127.0.0.1", port=double.port)
    for sid, model in (("s1", "tiny.en"), ("s2", "base")):
        meta = {"model": model}
        client.agent.service.register(SERVICE, service_id=sid, port=1, tags=[model], meta=meta)

    def ids(query: str) -> list[str]:
        status, _, body = http(double, "GET", f"/v1/health/service/{SERVICE}?{query}")
        assert status == 200, body
        return [e["Service"]["ID"] for e in json.loads(body)]

    assert ids("filter=" + urllib.parse.quote('Service.Meta.model == "base"')) == ["s2"]
    assert ids("filter=" + urllib.parse.quote('Service.Tags contains "tiny.en"')) == ["s1"]
    assert ids("tag=base") == ["s2"]
    status, _, _ = http(double, "GET", f"/v1/health/service/{SERVICE}?filter=a%20or%20b")
    assert status == 400, "unsupported expressions are refused, not ignored"
