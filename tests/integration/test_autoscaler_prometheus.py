"""The Prometheus signal source against a real Prometheus server (Debian package).

Prometheus runs as a child process with a temporary config and storage, scraping two
metrics endpoints served here with the services' own metric classes (an ASR instance's
``AsrMetrics`` and the router's ``RouterMetrics``), labelled the way the file registry's
``file_sd`` targets label them. One test puts a stand-in for Prometheus' HTTP API in its
place (:class:`CutShort`, NOT a Prometheus) to break one answer on purpose. Every wait has
a deadline.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, start_http_server

from services.autoscaler.signals.base import PoolLoad
from services.autoscaler.signals.prometheus import QUERIES, PrometheusSource
from services.router.metrics import RouterMetrics
from tests.conditions import wait_until_async
from tests.prometheus_server import Endpoint, binary, free_port, running, serving
from voxmesh.asr.metrics import AsrMetrics

SCRAPE = "250ms"


@dataclass
class Scraped:
    url: str
    asr: AsrMetrics
    router: RouterMetrics
    asr_endpoint: Endpoint
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
            yield Scraped(url, asr, router, asr_endpoint, router_endpoint)


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


async def test_an_instance_that_cannot_be_scraped_makes_the_pool_stale(scraped: Scraped) -> None:
    """Prometheus drops the series of an instance whose scrape fails: the pool's signals
    turn stale (nothing shrinks) rather than losing the instance, while the router's demand
    stays fresh; they are fresh again once the instance is scraped again."""
    asr, router = scraped.asr, scraped.router
    asr.streams_active.set(1)
    asr.gpu_utilization.labels("0").set(0.99)
    router.queue_depth.labels("asr_small", "realtime").set(0)
    router.streams_active.labels("asr_small").set(1)

    source = PrometheusSource(scraped.url, ["asr_small"], timeout_s=2.0)
    await _until(source, lambda load: not load.missing and len(load.instances) == 1)

    port = scraped.asr_endpoint.port
    scraped.asr_endpoint.stop()  # its scrapes fail: Prometheus marks its series stale
    silent = await _until(source, lambda load: not load.instances)
    assert math.isinf(silent.age_s), silent
    assert silent.router_age_s < 5 and silent.missing == ""  # the demand is still known

    server, _thread = start_http_server(port, addr="127.0.0.1", registry=asr.registry)
    back = Endpoint(server, port)
    try:
        again = await _until(source, lambda load: len(load.instances) == 1)
        assert again.age_s < 5 and again.missing == ""
    finally:
        back.stop()


class CutShort:
    """A stand-in for Prometheus' query API (NOT a Prometheus): every query gets an empty
    vector but two. ``router_age`` makes the pool's router known, and the n-th answer to
    ``queued`` has n realtime streams queued, so a load tells which poll it comes from.
    The answer to the ``queued`` query of poll ``cut`` is cut short mid-body."""

    def __init__(self, cut: int) -> None:
        self.cut, self.queued_asked = cut, 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> CutShort:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def answer(self, query: str) -> tuple[bytes, int]:
        """The body of the answer to ``query``, and the Content-Length to announce."""
        result: list[dict[str, Any]] = []
        if query == QUERIES["router_age"]:
            result = [{"metric": {"pool": "asr_small"}, "value": [0, "0.1"]}]
        if query == QUERIES["queued"]:
            with self._lock:
                self.queued_asked += 1
                asked = self.queued_asked
            labels = {"pool": "asr_small", "priority": "realtime"}
            result = [{"metric": labels, "value": [0, str(asked)]}]
            if asked == self.cut:
                return b'{"status": "succ', 500
        body = json.dumps(
            {"status": "success", "data": {"resultType": "vector", "result": result}}
        ).encode()
        return body, len(body)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                body, length = stand_in.answer(query["query"][0])
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(length))
                self.end_headers()
                self.wfile.write(body)  # HTTP/1.0: the connection closes after it

            def log_message(self, format: str, *args: Any) -> None:
                """No access log."""

        return Handler


async def test_polling_outlives_an_answer_cut_short(caplog: pytest.LogCaptureFixture) -> None:
    """A response cut short (``http.client.IncompleteRead``, no OSError) fails one poll;
    ``run()`` goes on polling and the source is fresh again with the next good answer."""
    with CutShort(cut=2) as prometheus:
        source = PrometheusSource(prometheus.url, ["asr_small"], interval_s=0.01)
        polling = asyncio.create_task(source.run())
        try:
            await wait_until_async(
                lambda: polling.done() or source.read("asr_small").queued_realtime >= 3
            )
            assert not polling.done(), polling.exception()
            load = source.read("asr_small")
            assert load.missing == "" and load.age_s < 5
        finally:
            await source.shutdown()
            await asyncio.wait_for(polling, 5)
    assert any("IncompleteRead" in r.getMessage() for r in caplog.records), caplog.text
