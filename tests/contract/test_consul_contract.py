"""Our Consul code against the documented Consul HTTP API: the double by default, a real
agent with ``VOXMESH_CONTRACT_CONSUL`` (see ``conftest.py``).

The registrar, the watcher and the leader lock are the production classes over
py-consul. Setup and assertions go through the HTTP API only (``/v1/agent/service``,
``/v1/health/service``, ``/v1/kv``, ``/v1/session``), never through a double-side
control, so against the double nothing here is double-specific. The instances are
real ``grpc.aio`` servers with the standard health service, which the agent (or the
double) probes as a gRPC check.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import pytest
from grpc_health.v1 import health_pb2

from tests.conditions import wait_until_async
from tests.contract.conftest import Agent, unique
from tests.health_server import HealthServer, health_server
from voxmesh.discovery.base import CAPACITY_ON_DEMAND, InstanceInfo, consul_service_name
from voxmesh.discovery.consul import ConsulRegistrar, ConsulWatcher, PyConsulApi
from voxmesh.leader import ConsulLeaderLock, PyConsulSessionApi, campaign

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
Json = dict[str, Any]


def http(agent: Agent, method: str, path: str, body: Any = None) -> tuple[int, dict[str, str], Any]:
    """One plain HTTP call: (status, headers, decoded JSON body or None)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(agent.url + path, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=agent.within) as response:
            raw, status, headers = response.read(), response.status, dict(response.headers)
    except urllib.error.HTTPError as err:
        raw, status, headers = err.read(), err.code, dict(err.headers)
    try:
        decoded = json.loads(raw) if raw else None
    except ValueError:
        decoded = raw.decode()
    return status, headers, decoded


@pytest.fixture
async def instance() -> AsyncIterator[HealthServer]:
    async with health_server() as server:
        yield server


class Mesh:
    """One pool with a name of its own, and the registrars and watchers a test made."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.pool = unique("contract").replace("-", "_")
        self.service = consul_service_name(self.pool)
        self.registrars: list[ConsulRegistrar] = []
        self.watches: list[Follower] = []

    def api(self) -> PyConsulApi:
        return PyConsulApi.connect(self.agent.host, self.agent.port, self.agent.scheme)

    def info(self, port: int, instance_id: str) -> InstanceInfo:
        return InstanceInfo(
            instance_id=instance_id,
            pool=self.pool,
            model="tiny.en",
            address="127.0.0.1",
            port=port,
            capacity_class=CAPACITY_ON_DEMAND,
            gpu_type="cpu",
            region="contract",
            max_streams=4,
            metrics_port=9100,
        )

    def registrar(self) -> ConsulRegistrar:
        resync = 1.0 if self.agent.real else 0.1
        registrar = ConsulRegistrar(
            self.api(), check_interval=self.agent.check_interval, resync_interval=resync
        )
        self.registrars.append(registrar)
        return registrar

    def follow(self) -> Follower:
        watcher = ConsulWatcher(
            self.api(), self.pool, wait="2s", rate_every=0.01, backoff_base=0.02, backoff_max=0.5
        )
        follower = Follower(watcher, self.agent.within)
        self.watches.append(follower)
        return follower

    def entries(self) -> list[Json]:
        status, _, body = http(self.agent, "GET", f"/v1/health/service/{self.service}")
        assert status == 200, body
        assert isinstance(body, list)
        return body

    async def close(self) -> None:
        for follower in self.watches:
            await follower.close()
        for registrar in self.registrars:
            await registrar.deregister()


class Follower:
    """Consumes a watcher in the background and keeps the last set it yielded."""

    def __init__(self, watcher: ConsulWatcher, within: float) -> None:
        self.sets: list[list[InstanceInfo]] = []
        self._within = within
        self._task = asyncio.create_task(self._run(watcher))

    async def _run(self, watcher: ConsulWatcher) -> None:
        async for instances in watcher.watch():
            self.sets.append(instances)

    def ids(self) -> list[str] | None:
        return sorted(i.instance_id for i in self.sets[-1]) if self.sets else None

    async def until(self, ids: list[str]) -> None:
        await wait_until_async(lambda: self.ids() == sorted(ids), self._within, interval=0.05)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@pytest.fixture
async def mesh(consul_agent: Agent) -> AsyncIterator[Mesh]:
    created = Mesh(consul_agent)
    yield created
    await created.close()


async def test_a_registration_reads_back_as_the_api_documents_it(
    mesh: Mesh, instance: HealthServer
) -> None:
    me = unique("inst")
    await mesh.registrar().register(mesh.info(instance.port, me))

    status, headers, service = http(mesh.agent, "GET", f"/v1/agent/service/{me}")
    assert status == 200, service
    assert (service["ID"], service["Service"], service["Port"]) == (me, mesh.service, instance.port)
    assert service["Address"] == "127.0.0.1"
    assert "voxmesh" in service["Tags"] and f"pool={mesh.pool}" in service["Tags"]
    assert {k: service["Meta"][k] for k in ("pool", "model", "capacity_class", "max_streams")} == {
        "pool": mesh.pool,
        "model": "tiny.en",
        "capacity_class": "on-demand",
        "max_streams": "4",
    }

    # The health endpoint reads the catalog, which the agent syncs to just after.
    await wait_until_async(lambda: mesh.entries() != [], mesh.agent.within, interval=0.05)
    status, headers, entries = http(mesh.agent, "GET", f"/v1/health/service/{mesh.service}")
    assert status == 200 and int(headers["X-Consul-Index"]) >= 1
    assert headers["X-Consul-KnownLeader"] in ("true", "false")
    [entry] = entries
    assert entry["Service"]["ID"] == me and entry["Node"]["Address"]
    [check] = [c for c in entry["Checks"] if c["ServiceID"] == me]
    assert (check["CheckID"], check["Type"]) == (f"service:{me}", "grpc")
    assert check["Status"] in ("passing", "warning", "critical")


async def test_only_instances_whose_grpc_check_passes_are_followed(
    mesh: Mesh, instance: HealthServer
) -> None:
    await instance.set(NOT_SERVING)
    me = unique("inst")
    info = mesh.info(instance.port, me)
    await mesh.registrar().register(info)
    follower = mesh.follow()
    await follower.until([])

    await instance.set(SERVING)
    await follower.until([me])
    assert follower.sets[-1] == [info], "Meta must round-trip into InstanceInfo"

    await instance.set(NOT_SERVING)
    await follower.until([])
    [check] = [c for e in mesh.entries() for c in e["Checks"] if c["ServiceID"] == me]
    assert check["Status"] == "critical"


async def test_draining_puts_the_instance_in_maintenance_and_out_of_the_set(
    mesh: Mesh, instance: HealthServer
) -> None:
    me = unique("inst")
    registrar = mesh.registrar()
    await registrar.register(mesh.info(instance.port, me))
    follower = mesh.follow()
    await follower.until([me])

    await registrar.set_draining()
    await follower.until([])
    checks = {c["CheckID"]: c["Status"] for e in mesh.entries() for c in e["Checks"]}
    assert checks[f"_service_maintenance:{me}"] == "critical"
    assert checks[f"service:{me}"] == "passing", "it still serves its own streams"
    _, _, service = http(mesh.agent, "GET", f"/v1/agent/service/{me}")
    assert service["Meta"]["draining"] == "true"


async def test_deregistering_removes_the_instance_and_is_idempotent(
    mesh: Mesh, instance: HealthServer
) -> None:
    me = unique("inst")
    registrar = mesh.registrar()
    await registrar.deregister()  # before register: nothing to do
    await registrar.register(mesh.info(instance.port, me))
    follower = mesh.follow()
    await follower.until([me])

    await registrar.deregister()
    await registrar.deregister()
    await follower.until([])
    status, _, _ = http(mesh.agent, "GET", f"/v1/agent/service/{me}")
    assert status == 404
    assert mesh.entries() == []


async def test_an_instance_deregistered_behind_its_back_registers_again(
    mesh: Mesh, instance: HealthServer
) -> None:
    """What an agent restart (or an operator) does; the registrar's resync repairs it."""
    me = unique("inst")
    await mesh.registrar().register(mesh.info(instance.port, me))
    follower = mesh.follow()
    await follower.until([me])

    status, _, _ = http(mesh.agent, "PUT", f"/v1/agent/service/deregister/{me}")
    assert status == 200

    def known() -> bool:
        return http(mesh.agent, "GET", f"/v1/agent/service/{me}")[0] == 200

    await wait_until_async(known, mesh.agent.within, interval=0.05)
    await follower.until([me])


async def test_a_blocking_health_query_waits_for_a_change(
    mesh: Mesh, instance: HealthServer
) -> None:
    path = f"/v1/health/service/{mesh.service}?passing"
    status, headers, body = http(mesh.agent, "GET", path)
    assert (status, body) == (200, []), "an unknown service is an empty list, not an error"
    index = int(headers["X-Consul-Index"])
    assert index >= 1

    started = time.monotonic()
    status, headers, body = http(mesh.agent, "GET", f"{path}&index={index}&wait=1s")
    assert status == 200 and time.monotonic() - started >= 0.9, "no change: it waited"
    assert int(headers["X-Consul-Index"]) >= index

    me = unique("inst")
    blocked = asyncio.create_task(
        asyncio.to_thread(http, mesh.agent, "GET", f"{path}&index={index}&wait=60s")
    )
    await mesh.registrar().register(mesh.info(instance.port, me))
    status, headers, body = await asyncio.wait_for(blocked, mesh.agent.within)
    assert status == 200 and int(headers["X-Consul-Index"]) > index


@pytest.fixture
async def locks(consul_agent: Agent) -> AsyncIterator[list[ConsulLeaderLock]]:
    created: list[ConsulLeaderLock] = []
    yield created
    for lock in created:
        await lock.release()


def new_lock(
    agent: Agent, locks: list[ConsulLeaderLock], key: str, holder: str
) -> ConsulLeaderLock:
    api = PyConsulSessionApi.connect(agent.host, agent.port, agent.scheme)
    lock = ConsulLeaderLock(
        api,
        key,
        holder=holder,
        ttl=agent.session_ttl,
        lock_delay=2.0,
        retry_interval=0.1,
        min_ttl=agent.session_ttl,
    )
    locks.append(lock)
    return lock


def kv_entry(agent: Agent, key: str) -> Json | None:
    status, headers, body = http(agent, "GET", f"/v1/kv/{key}")
    if status == 404:
        return None
    assert status == 200 and int(headers["X-Consul-Index"]) >= 1
    [entry] = body
    assert isinstance(entry, dict)
    return entry


async def test_one_of_two_contenders_leads_and_the_key_names_it(
    consul_agent: Agent, locks: list[ConsulLeaderLock]
) -> None:
    key = f"voxmesh-contract/{unique('leader')}"
    a, b = new_lock(consul_agent, locks, key, "a"), new_lock(consul_agent, locks, key, "b")
    assert await a.acquire()
    assert not await b.acquire()
    entry = kv_entry(consul_agent, key)
    assert entry is not None and entry["Session"] == a.session_id
    assert base64.b64decode(entry["Value"]) == b"a"
    _, _, info = http(consul_agent, "GET", f"/v1/session/info/{a.session_id}")
    [session] = info
    assert session["ID"] == a.session_id and session["TTL"].endswith("s")
    assert session["LockDelay"] == 2_000_000_000, "read back in nanoseconds"

    await a.release()
    entry = kv_entry(consul_agent, key)
    assert entry is None or not entry.get("Session"), "a release frees the key at once"
    await asyncio.wait_for(campaign(b, retry_interval=0.1), consul_agent.within)
    assert b.is_leader


async def test_a_destroyed_leader_session_hands_over_after_the_lock_delay(
    consul_agent: Agent, locks: list[ConsulLeaderLock]
) -> None:
    key = f"voxmesh-contract/{unique('leader')}"
    a, b = new_lock(consul_agent, locks, key, "a"), new_lock(consul_agent, locks, key, "b")
    assert await a.acquire()
    hold = asyncio.create_task(a.hold())
    try:
        started = time.monotonic()
        status, _, answer = http(consul_agent, "PUT", f"/v1/session/destroy/{a.session_id}")
        assert (status, answer) == (200, True)
        entry = kv_entry(consul_agent, key)
        assert entry is not None and not entry.get("Session"), "the key is free..."
        if time.monotonic() - started < 1.5:  # well inside the 2 s lock-delay
            assert not await b.acquire(), "...but the lock-delay refuses it"
        await asyncio.wait_for(campaign(b, retry_interval=0.1), consul_agent.within)
        assert b.is_leader and time.monotonic() - started >= 2.0
        await asyncio.wait_for(hold, consul_agent.session_ttl + consul_agent.within)
        assert not a.is_leader, "the next renew (404) told the old leader"
    finally:
        hold.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await hold
