"""The router on Consul discovery, against the Consul HTTP API test double (not a Consul agent).

Instances register through the real ConsulRegistrar (gRPC health checks the
double probes for real); the router follows them with the real ConsulWatcher.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.conditions import wait_until_async
from tests.doubles.consul_double import ConsulDouble
from tests.integration.router_harness import Mesh, mesh, pcm
from tests.streaming import config_request, run_stream
from voxmesh.discovery import Watcher
from voxmesh.discovery.consul import ConsulRegistrar, ConsulWatcher, PyConsulApi

pytestmark = pytest.mark.usefixtures("router_data_path")


@pytest.fixture
def consul() -> Iterator[ConsulDouble]:
    double = ConsulDouble(min_check_interval=0.05, reap_interval=0.05, deregister_min=0.3)
    double.start()
    yield double
    double.stop()


def api(double: ConsulDouble) -> PyConsulApi:
    return PyConsulApi.connect("127.0.0.1", double.port)


def watchers(double: ConsulDouble) -> Callable[[str], Watcher]:
    def make(pool: str) -> Watcher:
        return ConsulWatcher(
            api(double), pool, wait="1s", rate_every=0.01, backoff_base=0.02, backoff_max=0.1
        )

    return make


async def served_by(m: Mesh) -> str:
    run = await run_stream(m.channel, pcm(0.2), first=config_request(model="asr_small"))
    assert run.error is None and run.summary is not None
    return run.summary.instance_id


async def test_router_follows_consul_through_critical_flap_and_outage(
    consul: ConsulDouble,
) -> None:
    async with mesh(watcher_for=watchers(consul)) as m:
        registrars: dict[str, ConsulRegistrar] = {}
        for name in ("a", "b"):
            fake = await m.add(name, announce=False, region="eu" if name == "a" else "us")
            registrars[name] = ConsulRegistrar(api(consul), check_interval="100ms")
            await registrars[name].register(fake.info)
        await m.known("a")  # passing after the first probe of its gRPC health check
        await m.known("b")

        # "a" turns critical (its health check fails): it leaves the router.
        await m.fakes["a"].set_health(False)
        await wait_until_async(lambda: m.member("a") is None)
        assert {await served_by(m) for _ in range(3)} == {"b"}

        # ... and flaps back.
        await m.fakes["a"].set_health(True)
        await m.known("a")

        # Consul goes away: the router keeps serving from the last known set.
        consul.pause("refuse")
        assert {await served_by(m) for _ in range(6)} <= {"a", "b"}
        assert m.member("a") is not None and m.member("b") is not None
        consul.resume()

        # Consul is back: a deregistration is seen again.
        await registrars["b"].deregister()
        await wait_until_async(lambda: m.member("b") is None, timeout=10)
        assert await served_by(m) == "a"
        await registrars["a"].deregister()
        await wait_until_async(lambda: m.member("a") is None, timeout=10)
