"""The Prometheus side shipped in ``prometheus/``, checked with the real Prometheus tools.

* ``promtool check config`` on both scrape configs, ``promtool check rules`` and
  ``promtool test rules`` (the alert unit tests in ``prometheus/alerts_test.yml``);
* every ``voxmesh_*`` metric the alerts use is exported by the services' registries;
* a real Prometheus (a child process, temporary storage) runs the shipped
  ``prometheus-local.yml`` against a :class:`FileRegistrar` target serving
  ``AsrMetrics``, and the autoscaler's :class:`PrometheusSource` reads the pool from it;
* a real Prometheus runs the shipped ``prometheus.yml`` against the Consul test double
  (``tests/doubles/consul_double.py``, NOT a Consul agent), with instances registered
  by :class:`ConsulRegistrar` and a service registered the way Nomad registers the router.

The configs are copied into a temporary folder with only their paths, ports and
intervals rewritten (``_retime``); their relabelling is used as shipped. Debian's
prometheus 2.42 (the package CI installs) is built without Consul service discovery
(its changelog: "Disable Consul SD until its Debian package is back in shape"). With
such a binary the Consul config runs with its ``consul_sd_configs`` replaced by an
``http_sd_configs`` pointing at :class:`ConsulSdStandIn`, which makes the reads of
Prometheus 2.42's Consul discovery (``discovery/consul/consul.go``) against the double and
serves the ``__meta_consul_*`` labels it derives; the same test also runs with the real
Consul discovery when the binary has it (a Prometheus built from source in
``.tools/bin``). Every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from services.autoscaler.metrics import AutoscalerMetrics
from services.autoscaler.signals.prometheus import PrometheusSource
from services.router.metrics import RouterMetrics
from tests.conditions import wait_until, wait_until_async
from tests.doubles.consul_double import ConsulDouble
from tests.prometheus_server import binary, running, serving
from voxmesh.asr.metrics import AsrMetrics
from voxmesh.discovery.base import (
    CAPACITY_PREEMPTIBLE,
    InstanceInfo,
    consul_service_name,
    scrape_labels,
)
from voxmesh.discovery.consul import ConsulRegistrar, PyConsulApi
from voxmesh.discovery.file import FileRegistrar

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "prometheus"
SCRAPE = "250ms"
"""Scrape and rule interval of the copies under test (shipped: 5 s and 15 s)."""
TARGET_LABELS = ("service", "pool", "model", "instance_id", "capacity_class", "gpu_type", "region")
"""The target labels both configs give an ASR instance (prometheus/README.md)."""


# ----------------------------------------------------------------- binaries
def _required(name: str) -> str:
    found = binary(name)
    if found is None:
        pytest.skip(f"{name} is not installed (Debian package prometheus, make system-deps)")
    return found


@pytest.fixture(scope="module")
def promtool() -> str:
    return _required("promtool")


@pytest.fixture(scope="module")
def prometheus() -> str:
    return _required("prometheus")


@pytest.fixture(scope="module")
def has_consul_sd(promtool: str, tmp_path_factory: pytest.TempPathFactory) -> bool:
    """Whether this Prometheus build has Consul service discovery (Debian's has not)."""
    config = tmp_path_factory.mktemp("consul-sd") / "probe.yml"
    config.write_text(
        "scrape_configs:\n  - job_name: probe\n    consul_sd_configs:\n      - server: x:8500\n"
    )
    result = _run([promtool, "check", "config", str(config)], config.parent)
    if result.returncode == 0:
        return True
    assert "consul_sd_configs not found" in result.stdout + result.stderr, result
    return False


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, check=False, cwd=cwd, capture_output=True, text=True, timeout=60)


def _load(name: str) -> dict[str, Any]:
    loaded = yaml.safe_load((SHIPPED / name).read_text())
    assert isinstance(loaded, dict)
    return loaded


# ------------------------------------------------------------- promtool checks
def test_promtool_accepts_the_local_config(promtool: str) -> None:
    result = _run([promtool, "check", "config", "prometheus-local.yml"], SHIPPED)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout


def test_promtool_accepts_the_consul_config(
    promtool: str, has_consul_sd: bool, tmp_path: Path
) -> None:
    """As shipped when the build has Consul SD; else all but the discovery block, and
    that block's keys against the fields of Prometheus 2.42's ``consul.SDConfig``."""
    if has_consul_sd:
        result = _run([promtool, "check", "config", "prometheus.yml"], SHIPPED)
    else:
        config = _load("prometheus.yml")
        (job,) = config["scrape_configs"]
        (consul_sd,) = job.pop("consul_sd_configs")
        assert set(consul_sd) <= _CONSUL_SD_FIELDS, set(consul_sd) - _CONSUL_SD_FIELDS
        job["http_sd_configs"] = [{"url": "http://127.0.0.1:8500/stand-in"}]
        shutil.copy(SHIPPED / "alerts.yml", tmp_path)
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        result = _run([promtool, "check", "config", "prometheus.yml"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout


_CONSUL_SD_FIELDS = {
    "server", "token", "datacenter", "namespace", "partition", "tag_separator", "scheme",
    "username", "password", "allow_stale", "refresh_interval", "services", "tags",
    "node_meta", "tls_config", "authorization", "oauth2", "basic_auth", "proxy_url",
    "follow_redirects", "enable_http2",
}  # fmt: skip
"""The YAML keys of ``consul_sd_configs`` in Prometheus 2.42 (``discovery/consul``)."""


def test_promtool_checks_and_unit_tests_the_alert_rules(promtool: str) -> None:
    checked = _run([promtool, "check", "rules", "alerts.yml"], SHIPPED)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    rules = [r for g in _load("alerts.yml")["groups"] for r in g["rules"]]
    assert f"SUCCESS: {len(rules)} rules found" in checked.stdout
    tested = _run([promtool, "test", "rules", "alerts_test.yml"], SHIPPED)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_is_unit_tested_and_says_what_to_do() -> None:
    rules = [r for g in _load("alerts.yml")["groups"] for r in g["rules"]]
    tests = _load("alerts_test.yml")["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    silent = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if not case.get("exp_alerts")
    }
    names = {rule["alert"] for rule in rules}
    assert names == fired, "alerts without a firing test"
    assert names == silent, "alerts without a test where they stay silent"
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert rule.get("for"), f"{rule['alert']} has no `for:` and would flap"


# -------------------------------------------------------------- metric names
def _exported_names() -> set[str]:
    """Every sample name the services' registries expose (by metric type)."""
    registries = [
        AsrMetrics.create().registry,
        RouterMetrics(CollectorRegistry()).registry,
        AutoscalerMetrics().registry,
    ]
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_count", "_sum"),
        "gauge": ("",),
    }
    names: set[str] = set()
    for registry in registries:
        for family in registry.collect():
            names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return names


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bvoxmesh_[a-z0-9_]+", expr))


def test_alerts_use_only_metrics_the_services_export() -> None:
    exported = _exported_names()
    # The resolution is strict: a counter only as _total, a histogram only by its series.
    assert "voxmesh_router_rejected_total" in exported
    assert "voxmesh_router_rejected" not in exported
    assert "voxmesh_router_queue_wait_seconds_bucket" in exported
    assert "voxmesh_router_queue_wait_seconds" not in exported
    used = {
        name
        for group in _load("alerts.yml")["groups"]
        for rule in group["rules"]
        for name in _metric_names(rule["expr"])
    }
    assert len(used) >= 10
    assert used <= exported, sorted(used - exported)


# ------------------------------------------------------- running Prometheus
def _retime(config: dict[str, Any]) -> None:
    """Shortens the intervals of a config copy; nothing else of its jobs changes."""
    config["global"].update(scrape_interval=SCRAPE, evaluation_interval=SCRAPE)
    for job in config["scrape_configs"]:
        job.update(scrape_interval=SCRAPE, scrape_timeout="200ms")


@contextlib.contextmanager
def _running(binary: str, config: dict[str, Any], folder: Path) -> Iterator[str]:
    """Prometheus on ``config`` (written to ``folder`` with alerts.yml); yields its URL."""
    shutil.copy(SHIPPED / "alerts.yml", folder)
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    with running(binary, folder / "prometheus.yml", folder) as url:
        yield url


def _api(url: str, path: str, **params: str) -> Any:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    with urllib.request.urlopen(f"{url}/api/v1/{path}{query}", timeout=5) as response:
        payload = json.loads(response.read())
    assert payload["status"] == "success", payload
    return payload["data"]


def _series(url: str, promql: str) -> list[dict[str, str]]:
    """The label sets of an instant query's result."""
    return [item["metric"] for item in _api(url, "query", query=promql)["result"]]


def _instance(instance_id: str, pool: str, metrics_port: int) -> InstanceInfo:
    return InstanceInfo(
        instance_id=instance_id,
        pool=pool,
        model="tiny.en" if pool == "asr_small" else "base",
        address="127.0.0.1",
        port=50051,
        capacity_class=CAPACITY_PREEMPTIBLE,
        gpu_type="H100",
        region="eu-west-1",
        max_streams=4,
        metrics_port=metrics_port,
    )


# ------------------------------------------------- the local mesh's config
@pytest.fixture
async def file_registrar(tmp_path: Path) -> AsyncIterator[FileRegistrar]:
    registrar = FileRegistrar(tmp_path / "registry", heartbeat_interval=3600.0)
    yield registrar
    await registrar.deregister()


async def test_local_config_scrapes_the_file_registry_for_the_autoscaler(
    prometheus: str, tmp_path: Path, file_registrar: FileRegistrar
) -> None:
    asr, router, autoscaler = (
        AsrMetrics.create(),
        RouterMetrics(CollectorRegistry()),
        AutoscalerMetrics(),
    )
    asr.streams_active.set(2)
    asr.real_time_factor.set(0.4)
    router.queue_depth.labels("asr_small", "realtime").set(1)
    router.streams_active.labels("asr_small").set(3)
    router.capacity.labels("asr_small").set(4)
    router.instances.labels("asr_small", "accepting").set(1)
    autoscaler.leader.set(1)

    with (
        serving(asr.registry) as asr_endpoint,
        serving(router.registry) as router_endpoint,
        serving(autoscaler.registry) as autoscaler_endpoint,
    ):
        info = _instance("asr-small-7", "asr_small", asr_endpoint.port)
        await file_registrar.register(info)

        config = _load("prometheus-local.yml")
        _retime(config)
        ports = {"9101": router_endpoint.port, "9102": autoscaler_endpoint.port}
        for job in config["scrape_configs"]:
            for sd in job.get("file_sd_configs", []):
                assert sd["files"] == ["../.run/registry/file_sd/*.json"]
                sd["files"] = [str(tmp_path / "registry" / "file_sd" / "*.json")]
            for static in job.get("static_configs", []):
                static["targets"] = [
                    re.sub(r":(\d+)$", lambda m: f":{ports[m[1]]}", t) for t in static["targets"]
                ]

        with _running(prometheus, config, tmp_path) as url:
            query = 'voxmesh_asr_streams_active{instance_id="asr-small-7"}'
            wait_until(lambda: _series(url, query), timeout=15, interval=0.1)
            (labels,) = _series(url, query)
            assert labels.items() >= scrape_labels(info).items(), labels
            assert labels["capacity_class"] == "preemptible"

            wait_until(lambda: _series(url, "voxmesh_router_queue_depth"), 15, 0.1)
            (routed,) = _series(url, 'voxmesh_router_queue_depth{priority="realtime"}')
            # The router's own pool label survives: its target has no pool label.
            assert routed["service"] == "voxmesh-router" and routed["pool"] == "asr_small"
            assert "exported_pool" not in routed
            wait_until(lambda: _series(url, "voxmesh_autoscaler_leader == 1"), 15, 0.1)
            (leader,) = _series(url, "voxmesh_autoscaler_leader")
            assert leader["service"] == "voxmesh-autoscaler"

            source = PrometheusSource(url, ["asr_small"], timeout_s=2.0)
            await source.poll()
            load = source.read("asr_small")
            assert load.missing == "", load
            (instance,) = load.instances
            assert (instance.instance_id, instance.capacity_class) == ("asr-small-7", "preemptible")
            assert (instance.active_streams, instance.real_time_factor) == (2, 0.4)
            assert (load.queued_realtime, load.max_streams) == (1, 4)

            # The instance's scrape fails: its series go, its file_sd target's `up` stays.
            asr_endpoint.stop()
            wait_until(lambda: not _series(url, query), timeout=15, interval=0.1)
            await source.poll()
            silent = source.read("asr_small")
            assert math.isinf(silent.age_s) and silent.missing == "", silent

            groups = _api(url, "rules")["groups"]
            loaded = {rule["name"] for group in groups for rule in group["rules"]}
            shipped = {r["alert"] for g in _load("alerts.yml")["groups"] for r in g["rules"]}
            assert loaded == shipped


# ---------------------------------------------------------- the Consul config
class ConsulSdStandIn:
    """An ``http_sd`` endpoint doing what Prometheus 2.42's Consul discovery does.

    On every request it reads the double like ``discovery/consul/consul.go``:
    ``GET /v1/catalog/services``, then ``GET /v1/health/service/<name>`` (every
    instance, any health) per service, and serves one target group per instance with
    the ``__meta_consul_*`` labels that file derives (address from the service address,
    falling back to the node's; ``consul_health`` as ``AggregatedStatus``). Only for a
    Prometheus built without Consul discovery; the relabelling under test is Prometheus's.
    """

    def __init__(self, consul_url: str, datacenter: str) -> None:
        self._consul, self._dc = consul_url, datacenter
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/sd"

    def __enter__(self) -> ConsulSdStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def groups(self) -> list[dict[str, Any]]:
        out = []
        for name in sorted(self._get("/v1/catalog/services")):
            for entry in self._get(f"/v1/health/service/{urllib.parse.quote(name)}"):
                service, node = entry["Service"], entry["Node"]
                host = service["Address"] or node["Address"]
                labels = {
                    "__meta_consul_service": name,
                    "__meta_consul_dc": self._dc,
                    "__meta_consul_address": node["Address"],
                    "__meta_consul_node": node["Node"],
                    "__meta_consul_tags": "," + ",".join(service["Tags"]) + ",",
                    "__meta_consul_service_address": service["Address"],
                    "__meta_consul_service_port": str(service["Port"]),
                    "__meta_consul_service_id": service["ID"],
                    "__meta_consul_health": _aggregated_status(entry["Checks"]),
                }
                for prefix, pairs in (
                    ("__meta_consul_metadata_", node.get("Meta") or {}),
                    ("__meta_consul_service_metadata_", service.get("Meta") or {}),
                    ("__meta_consul_tagged_address_", node.get("TaggedAddresses") or {}),
                ):
                    labels.update({prefix + _UNSAFE.sub("_", k): v for k, v in pairs.items()})
                out.append({"targets": [f"{host}:{service['Port']}"], "labels": labels})
        return out

    def _get(self, path: str) -> Any:
        url = f"{self._consul}{path}?{urllib.parse.urlencode({'dc': self._dc, 'stale': ''})}"
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps(stand_in.groups()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                """No access log."""

        return Handler


_UNSAFE = re.compile(r"[^a-zA-Z0-9_]")
"""What ``strutil.SanitizeLabelName`` replaces with ``_`` in a meta key."""


def _aggregated_status(checks: list[dict[str, Any]]) -> str:
    """``api.HealthChecks.AggregatedStatus`` of the Consul Go client."""
    statuses = set()
    for check in checks:
        check_id = check["CheckID"]
        if check_id == "_node_maintenance" or check_id.startswith("_service_maintenance:"):
            statuses.add("maintenance")
        elif check["Status"] in ("passing", "warning", "critical"):
            statuses.add(check["Status"])
        else:
            return ""
    return next((s for s in ("maintenance", "critical", "warning") if s in statuses), "passing")


@pytest.fixture
def double() -> Iterator[ConsulDouble]:
    """The Consul double; no gRPC probes (checks stay as set: any health is scraped)."""
    instance = ConsulDouble(grpc_probes=False)
    instance.start()
    yield instance
    instance.stop()


@pytest.fixture
async def consul_registrars() -> AsyncIterator[list[ConsulRegistrar]]:
    created: list[ConsulRegistrar] = []
    yield created
    for registrar in created:
        await registrar.deregister()


def _put(url: str, body: dict[str, Any]) -> None:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="PUT")
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


@pytest.mark.parametrize("discovery", ["consul_sd", "http_sd stand-in"])
async def test_consul_config_scrapes_registered_services_with_meta_labels(
    prometheus: str,
    has_consul_sd: bool,
    discovery: str,
    tmp_path: Path,
    double: ConsulDouble,
    consul_registrars: list[ConsulRegistrar],
) -> None:
    if discovery == "consul_sd" and not has_consul_sd:
        pytest.skip(
            "this prometheus is built without Consul SD (Debian 2.42: 'Disable Consul SD "
            "until its Debian package is back in shape'); the stand-in case runs instead"
        )
    registries = [AsrMetrics.create().registry for _ in range(3)]
    router = RouterMetrics(CollectorRegistry())
    router.queue_depth.labels("asr_small", "realtime").set(0)
    with contextlib.ExitStack() as stack:
        small, large, unexported = (stack.enter_context(serving(r)) for r in registries)
        router_endpoint = stack.enter_context(serving(router.registry))
        small_info = _instance("asr-small-1", "asr_small", small.port)
        large_info = _instance("asr-large-1", "asr_large", large.port)
        quiet_info = _instance("asr-small-2", "asr_small", 0)
        for info in (small_info, large_info, quiet_info):
            registrar = ConsulRegistrar(PyConsulApi.connect("127.0.0.1", double.port))
            consul_registrars.append(registrar)
            await registrar.register(info)
            if info is large_info:
                await registrar.set_draining()  # maintenance: critical, still scraped
        double.set_check_status("service:asr-small-1", "passing")
        # As Nomad registers the router: no address (the node's), metrics_port in Meta.
        register = f"{double.url}/v1/agent/service/register"
        router_id = "_nomad-task-0b1c-router-router-voxmesh-router-grpc"
        _put(register, {
            "ID": router_id, "Name": "voxmesh-router", "Tags": ["grpc"], "Port": 50051,
            "Meta": {"metrics_port": str(router_endpoint.port)},
        })  # fmt: skip
        _put(register, {
            "ID": "web-1", "Name": "web", "Address": "127.0.0.1", "Port": 8080,
            "Meta": {"metrics_port": str(unexported.port)},
        })  # fmt: skip

        config = _load("prometheus.yml")
        _retime(config)
        (job,) = config["scrape_configs"]
        (consul_sd,) = job["consul_sd_configs"]
        assert consul_sd == {"server": "127.0.0.1:8500"}
        consul_sd.update(server=f"127.0.0.1:{double.port}", datacenter=double.datacenter)
        if discovery != "consul_sd":
            stand_in = stack.enter_context(ConsulSdStandIn(double.url, double.datacenter))
            del job["consul_sd_configs"]
            job["http_sd_configs"] = [{"url": stand_in.url}]

        url = stack.enter_context(_running(prometheus, config, tmp_path))

        def up() -> dict[str, dict[str, str]]:
            return {
                labels["service"] + "/" + labels.get("instance_id", ""): labels
                for labels in _series(url, "up == 1")
            }

        wait_until(lambda: len(up()) == 3, timeout=15, interval=0.1)
        scraped = up()
        assert set(scraped) == {
            "voxmesh-asr-small/asr-small-1",
            "voxmesh-asr-large/asr-large-1",  # draining, in maintenance
            "voxmesh-router/",
        }
        for info, port in ((small_info, small.port), (large_info, large.port)):
            labels = scraped[f"{consul_service_name(info.pool)}/{info.instance_id}"]
            assert labels.items() >= scrape_labels(info).items(), labels
            assert labels["instance"] == f"127.0.0.1:{port}"
        router_labels = scraped["voxmesh-router/"]
        assert router_labels["instance"] == f"127.0.0.1:{router_endpoint.port}"  # node address
        assert not {"pool", "instance_id", "capacity_class"} & set(router_labels)
        (depth,) = _series(url, "voxmesh_router_queue_depth")
        assert depth["pool"] == "asr_small" and "exported_pool" not in depth

        dropped = _api(url, "targets", state="dropped")["droppedTargets"]
        dropped_services = {t["discoveredLabels"]["__meta_consul_service"] for t in dropped}
        assert dropped_services == {"web", "voxmesh-asr-small"}  # no metrics port: asr-small-2
        reads = {r.path for r in double.requests if r.method == "GET"}
        assert "/v1/catalog/services" in reads
        assert "/v1/health/service/voxmesh-asr-large" in reads


# ----------------------------------------------- the double's catalog reads
def _get(url: str) -> tuple[Any, int]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read()), int(response.headers["X-Consul-Index"])


async def test_consul_double_catalog_reads(double: ConsulDouble) -> None:
    """``/v1/catalog/services`` and ``/v1/catalog/service/:name`` as catalog.mdx documents."""
    register = f"{double.url}/v1/agent/service/register"
    for sid, tags in (("a", ["voxmesh", "x"]), ("b", ["voxmesh", "y"])):
        _put(register, {
            "ID": sid, "Name": "voxmesh-asr-small", "Tags": tags, "Port": 1,
            "Meta": {"pool": "asr_small", "instance_id": sid},
        })  # fmt: skip
    _put(register, {"Name": "web", "Port": 2})

    services, index = _get(f"{double.url}/v1/catalog/services")
    assert services == {"voxmesh-asr-small": ["voxmesh", "x", "y"], "web": []}
    nodes, _ = _get(f"{double.url}/v1/catalog/service/voxmesh-asr-small?tag=x")
    (node,) = nodes
    assert (node["ServiceID"], node["ServiceAddress"], node["Address"]) == ("a", "", "127.0.0.1")
    assert node["ServiceMeta"] == {"pool": "asr_small", "instance_id": "a"}
    assert (node["Node"], node["Datacenter"]) == (double.node, double.datacenter)
    query = urllib.parse.urlencode({"filter": 'ServiceMeta.instance_id == "b"'})
    nodes, _ = _get(f"{double.url}/v1/catalog/service/voxmesh-asr-small?{query}")
    assert [n["ServiceID"] for n in nodes] == ["b"]
    nodes, _ = _get(f"{double.url}/v1/catalog/services?node-meta=rack:r1")
    assert nodes == {}

    # Blocking: returns at the timeout with the same index, or at once on a change.
    started = time.monotonic()
    _, same = _get(f"{double.url}/v1/catalog/services?index={index}&wait=200ms")
    assert same == index and time.monotonic() - started >= 0.2
    blocked = asyncio.create_task(
        asyncio.to_thread(_get, f"{double.url}/v1/catalog/services?index={index}&wait=10s")
    )
    await wait_until_async(lambda: any(r.query.get("wait") == "10s" for r in double.requests))
    _put(register, {"Name": "voxmesh-router", "Port": 3})
    services, later = await asyncio.wait_for(blocked, 5)
    assert later > index and "voxmesh-router" in services
