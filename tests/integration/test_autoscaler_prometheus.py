"""The Prometheus signal source against a real Prometheus server (Debian package).

Prometheus runs as a child process with a temporary config and storage, scraping two
metrics endpoints served here with the services' own metric classes (an ASR instance's
``AsrMetrics`` and the router's ``RouterMetrics``), labelled the way the file registry's
``file_sd`` targets label them. Every wait has a deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from services.autoscaler.signals.base import PoolLoad
from services.autoscaler.signals.prometheus import PrometheusSource
from services.router.metrics import RouterMetrics
from tests.prometheus_server import Endpoint, binary, free_port, running, serving
from voxmesh.asr.metrics import AsrMetrics

SCRAPE = "250ms"


@dataclass
class Scraped:
    url: str
    asr: AsrMetrics
    router: RouterMetrics
    router_endpoint: Endpoint


@pytest.fixture
def scraped(tmp_path: Path) -> Iterator[Scraped]:
    prometheus = binary("prometheus")
    if prometheus is None:
        pytest.skip("the Debian package prometheus is not installed (no prometheus binary)")
    asr, router = AsrMetrics.create(), RouterMetrics(CollectorRegistry())
    with serving(asr.registry) as asr_endpoint, serving(router.registry) as router_endpoint:
        config = tmp_path / "prometheus.yml"
        config.write_text(
            f"""
global:
  scrape_interval: {SCRAPE}
  scrape_timeout: 200ms
scrape_configs:
  - job_name: voxmesh-asr
    static_configs:
      - targets: ["127.0.0.1:{asr_endpoint.port}"]
        labels: {{pool: asr_small, instance_id: asr-small-1, capacity_class: preemptible}}
  - job_name: voxmesh-router
    static_configs:
      - targets: ["127.0.0.1:{router_endpoint.port}"]
"""
        )
        with running(prometheus, config, tmp_path) as url:
            yield Scraped(url, asr, router, router_endpoint)


async def _until(
    source: PrometheusSource, check: Callable[[PoolLoad], bool], timeout: float = 20.0
) -> PoolLoad:
    """Polls until the asr_small load passes ``check``; fails after ``timeout`` s."""
    async with asyncio.timeout(timeout):
        while True:
            await source.poll()
            load = source.read("asr_small")
            if check(load):
                return load
            await asyncio.sleep(0.1)  # Prometheus is polled: there is nothing to await


async def test_pool_load_from_a_real_prometheus(scraped: Scraped) -> None:
    asr, router = scraped.asr, scraped.router
    asr.streams_active.set(2)
    asr.real_time_factor.set(0.4)
    asr.gpu_utilization.labels("0").set(0.97)
    asr.gpu_memory_used.labels("0").set(6e9)
    asr.gpu_memory_total.labels("0").set(8e9)
    router.queue_depth.labels("asr_small", "realtime").set(3)
    router.queue_depth.labels("asr_small", "batch").set(1)
    router.streams_active.labels("asr_small").set(7)  # 4 queued + 3 relayed
    router.capacity.labels("asr_small").set(8)
    router.instances.labels("asr_small", "accepting").set(2)

    source = PrometheusSource(scraped.url, ["asr_small"], timeout_s=2.0)
    assert source.read("asr_small").missing.startswith("Prometheus not answered yet")
    # The instance and the router are separate scrape targets: wait for both.
    load = await _until(
        source,
        lambda load: not load.missing and load.queued_realtime == 3 and len(load.instances) == 1,
    )
    assert (load.active_streams, load.queued_realtime, load.queued_batch) == (3, 3, 1)
    assert load.max_streams == 4
    assert 0 <= load.age_s < 5
    (instance,) = load.instances
    assert (instance.instance_id, instance.capacity_class) == ("asr-small-1", "preemptible")
    assert (instance.active_streams, instance.real_time_factor) == (2, 0.4)
    assert instance.gpu_utilisation == pytest.approx(0.97)
    assert instance.gpu_memory_ratio == pytest.approx(0.75)
    assert source.instance_streams("asr-small-1") == 2

    router.queue_depth.labels("asr_small", "realtime").set(0)
    await _until(source, lambda load: load.queued_realtime == 0)

    scraped.router_endpoint.stop()  # the router goes away: its series go stale
    gone = await _until(source, lambda load: bool(load.missing))
    assert gone.missing == "no router metrics in Prometheus"


async def test_an_unreachable_prometheus_keeps_the_pool_missing() -> None:
    source = PrometheusSource(f"http://127.0.0.1:{free_port()}", ["asr_small"], timeout_s=1.0)
    await source.poll()
    load = source.read("asr_small")
    assert load.missing.startswith("Prometheus not answered yet: cannot query")
