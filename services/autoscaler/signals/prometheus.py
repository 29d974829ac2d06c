"""Signals from Prometheus: the same per-pool load, by PromQL through the HTTP API.

Every ``interval_s`` the source runs a few instant queries (``GET /api/v1/query``, in a
worker thread) and keeps the resulting :class:`PoolLoad` per pool. It expects the
metrics the services export, with the labels their discovery gives scrape targets (the
file registry's ``file_sd`` targets carry ``pool`` and ``instance_id``; with Consul,
relabel the service meta the same way):

- instances: ``voxmesh_asr_streams_active{pool, instance_id[, capacity_class]}``,
  ``voxmesh_asr_gpu_utilization_ratio``, ``voxmesh_asr_gpu_memory_{used,total}_bytes``,
  ``voxmesh_asr_real_time_factor``, and Prometheus' own ``up{pool, instance_id}``;
- routers: ``voxmesh_router_queue_depth{pool, priority}``,
  ``voxmesh_router_streams_active{pool}`` (queued and relayed),
  ``voxmesh_router_capacity_streams{pool}``, ``voxmesh_router_instances{pool, state}``.

The age of a pool's signals is that of its oldest sample (``time() - timestamp(...)``);
the router age that of the oldest router sample alone (the demand: fresh router samples
still scale a pool up while an instance's are stale).
A router that stops being scraped goes stale in Prometheus and its series vanish: the pool
is then reported missing. An instance whose scrape fails vanishes the same way, and its
absence would read as spare capacity (the GPU guard loses a saturated instance, the pool
shrinks). Prometheus still knows the target: its ``up`` series, which carries the target's
``pool`` and ``instance_id`` labels under both shipped configs (routers and the autoscaler
have none), is 0. While an instance of the pool is down the pool's signals are stale
(``age_s`` infinite) and its router age stays as it is: the policy grows the pool on the
routers' demand but shrinks nothing, as it does when the gRPC source hears nothing from an
instance. An instant query cannot tell since when a target has been failing, so one failed
scrape is enough (and the scale-down window starts again); a target that discovery drops
(a stopped instance) takes its ``up`` series with it.

A poll that fails (Prometheus cannot be reached, answers an error or a broken HTTP
response, or anything unexpected, logged with its traceback) keeps the last good load,
which ages meanwhile, and polling goes on every ``interval_s``: stale signals hold the
pools until Prometheus answers again. The per-instance stream limit is the routers'
capacity divided by their accepting instances.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import logging
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from services.autoscaler.signals.base import InstanceLoad, PoolLoad
from voxmesh.discovery import CAPACITY_ON_DEMAND

__all__ = ["QUERIES", "PrometheusError", "PrometheusSource", "load_from_results", "parse_vector"]

logger = logging.getLogger(__name__)

Sample = tuple[dict[str, str], float]
"""One element of an instant vector: its labels and its value."""

QUERIES: Mapping[str, str] = {
    "instances": "voxmesh_asr_streams_active",
    "gpu_util": "max by (instance_id) (voxmesh_asr_gpu_utilization_ratio)",
    "gpu_memory": (
        "max by (instance_id) "
        "(voxmesh_asr_gpu_memory_used_bytes / voxmesh_asr_gpu_memory_total_bytes)"
    ),
    "rtf": "max by (instance_id) (voxmesh_asr_real_time_factor)",
    "queued": "sum by (pool, priority) (voxmesh_router_queue_depth)",
    "router_streams": "sum by (pool) (voxmesh_router_streams_active)",
    "capacity": "max by (pool) (voxmesh_router_capacity_streams)",
    "accepting": 'max by (pool) (voxmesh_router_instances{state="accepting"})',
    "router_age": "max by (pool) (time() - timestamp(voxmesh_router_queue_depth))",
    "instance_age": "max by (pool) (time() - timestamp(voxmesh_asr_streams_active))",
    "instances_down": 'up{instance_id!=""} == 0',
}
"""The instant queries of one poll, by name."""


class PrometheusError(Exception):
    """Prometheus could not be reached or answered an error."""


def parse_vector(payload: Any) -> list[Sample]:
    """The samples of an instant-vector answer of ``/api/v1/query``.

    Raises :class:`PrometheusError` for an error answer or any other result type.
    """
    if not isinstance(payload, dict) or payload.get("status") != "success":
        error = payload.get("error") if isinstance(payload, dict) else payload
        raise PrometheusError(f"query failed: {error}")
    data = payload.get("data") or {}
    if data.get("resultType") != "vector":
        raise PrometheusError(f"expected a vector, got {data.get('resultType')!r}")
    samples: list[Sample] = []
    try:
        for item in data.get("result") or []:
            labels = {str(k): str(v) for k, v in (item.get("metric") or {}).items()}
            samples.append((labels, float(item["value"][1])))
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise PrometheusError(f"malformed vector sample: {exc!r}") from exc
    return samples


def load_from_results(pool: str, results: Mapping[str, list[Sample]]) -> PoolLoad:
    """One pool's load from the answers to :data:`QUERIES` (a pure function)."""

    def by_pool(name: str) -> list[Sample]:
        return [s for s in results.get(name, []) if s[0].get("pool") == pool]

    def pool_value(name: str) -> float | None:
        values = [v for _, v in by_pool(name)]
        return max(values) if values else None

    per_instance = {
        name: {s[0].get("instance_id", ""): s[1] for s in results.get(name, [])}
        for name in ("gpu_util", "gpu_memory", "rtf")
    }
    instances = tuple(
        _instance(labels, value, per_instance) for labels, value in by_pool("instances")
    )
    queued = {labels.get("priority", ""): value for labels, value in by_pool("queued")}
    queued_total = sum(queued.values())
    relayed = (pool_value("router_streams") or 0.0) - queued_total
    capacity, accepting = pool_value("capacity"), pool_value("accepting")
    router_age = pool_value("router_age")
    ages = [a for a in (router_age, pool_value("instance_age")) if a is not None]
    if by_pool("instances_down"):  # a silent instance is unknown load, not spare capacity
        ages.append(math.inf)
    return PoolLoad(
        pool=pool,
        active_streams=round(max(sum(i.active_streams for i in instances), relayed, 0.0)),
        queued_realtime=round(queued.get("realtime", 0.0)),
        queued_batch=round(queued.get("batch", 0.0)),
        max_streams=round(capacity / accepting) if capacity and accepting else None,
        instances=instances,
        age_s=max(ages, default=math.inf),
        router_age_s=math.inf if router_age is None else router_age,
        missing="" if router_age is not None else "no router metrics in Prometheus",
    )


def _instance(
    labels: dict[str, str], active: float, per_instance: Mapping[str, Mapping[str, float]]
) -> InstanceLoad:
    instance_id = labels.get("instance_id") or labels.get("instance", "")
    return InstanceLoad(
        instance_id=instance_id,
        capacity_class=labels.get("capacity_class", CAPACITY_ON_DEMAND),
        active_streams=round(active),
        max_streams=0,
        serving=True,
        gpu_utilisation=per_instance["gpu_util"].get(instance_id),
        gpu_memory_ratio=per_instance["gpu_memory"].get(instance_id),
        real_time_factor=per_instance["rtf"].get(instance_id),
    )


@dataclass(frozen=True)
class _Poll:
    loads: dict[str, PoolLoad]
    at: float


class PrometheusSource:
    """:class:`~services.autoscaler.signals.base.SignalSource` over the Prometheus HTTP API."""

    def __init__(
        self,
        url: str,
        pools: Sequence[str],
        *,
        interval_s: float = 2.0,
        timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url.rstrip("/")
        self._pools = list(pools)
        self._interval_s, self._timeout_s = interval_s, timeout_s
        self._clock = clock
        self._last: _Poll | None = None
        self._error = ""
        self._stop = asyncio.Event()

    async def run(self) -> None:
        """Polls Prometheus every ``interval_s`` until :meth:`shutdown`."""
        while not self._stop.is_set():
            await self.poll()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval_s):
                    await self._stop.wait()

    async def shutdown(self) -> None:
        """Stops polling (a poll in flight finishes in its thread); idempotent."""
        self._stop.set()

    async def poll(self) -> None:
        """Runs the queries once and keeps the result (or the error).

        Never raises but for cancellation: :meth:`run` must outlive any one bad answer, or
        the last good load would age for ever and hold every pool until a restart.
        """
        try:
            results = await asyncio.to_thread(self._query_all)
            loads = {pool: load_from_results(pool, results) for pool in self._pools}
        except PrometheusError as exc:
            if exc.args[0] != self._error:
                logger.warning("prometheus %s: %s", self._url, exc)
            self._error = str(exc.args[0])
            return
        except Exception as exc:  # a fault not foreseen: a failed poll all the same
            error = f"{type(exc).__name__}: {exc}"
            if error != self._error:
                logger.exception("prometheus %s: poll failed", self._url)
            self._error = error
            return
        self._error = ""
        self._last = _Poll(loads, self._clock())

    def read(self, pool: str) -> PoolLoad:
        """The pool's load from the last successful poll, aged since."""
        if self._last is None:
            reason = f"Prometheus not answered yet{': ' + self._error if self._error else ''}"
            return PoolLoad(pool=pool, missing=reason)
        load = self._last.loads.get(pool) or PoolLoad(pool=pool, missing="pool not polled")
        since = self._clock() - self._last.at
        return replace(load, age_s=load.age_s + since, router_age_s=load.router_age_s + since)

    def instance_streams(self, instance_id: str) -> int | None:
        """Active streams of one instance at the last poll; None when unknown."""
        for load in self._last.loads.values() if self._last else ():
            for instance in load.instances:
                if instance.instance_id == instance_id:
                    return instance.active_streams
        return None

    def _query_all(self) -> dict[str, list[Sample]]:
        return {name: self._query(query) for name, query in QUERIES.items()}

    def _query(self, query: str) -> list[Sample]:
        url = f"{self._url}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
        try:
            with urllib.request.urlopen(url, timeout=self._timeout_s) as response:
                payload = json.loads(response.read())
        except urllib.error.HTTPError as exc:  # 400/422/503 carry an error body
            try:
                payload = json.loads(exc.read())
            except (OSError, ValueError, http.client.HTTPException):
                raise PrometheusError(f"HTTP {exc.code} for {query!r}") from exc
        except (OSError, ValueError) as exc:
            raise PrometheusError(f"cannot query {self._url}: {exc}") from exc
        except http.client.HTTPException as exc:  # cut short or malformed, and no OSError
            raise PrometheusError(f"cannot query {self._url}: {exc!r}") from exc
        return parse_vector(payload)
