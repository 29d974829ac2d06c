"""The Consul backend of discovery: :class:`ConsulRegistrar` and :class:`ConsulWatcher`.

Every call to Consul goes through :class:`ConsulApi`, a five-method protocol;
:class:`PyConsulApi` implements it over py-consul, so the logic here can be
tested against a fake or a double.

Registration. An instance registers as service ``consul_service_name(pool)``
with ID ``instance_id``, its facts in ``Meta`` and a gRPC check
(``grpc.health.v1``, overall health) that the agent runs every
``check_interval``; a check critical for ``deregister_after`` (at least 1m)
gets the instance reaped. A draining instance is critical on purpose (it must
get no new streams) for as long as its ``drain_timeout``: ``deregister_after``
is raised above that, or the agent would reap it mid-drain and the keeper
register it again. A new registration starts ``critical``, so the
instance is absent from ``?passing`` until its first good probe. A keeper task
asks the agent every ``resync_interval`` whether it still knows the instance
(``GET /v1/agent/service/:id``) and registers again if it forgot (an agent
restart); a registration or drain mark that could not reach the agent is retried
with exponential backoff from the failure on, not a resync interval later.
Draining turns on service maintenance mode, which adds a critical check and so
drops the instance from ``?passing``, and sets ``Meta.draining``. Marking the
instance draining and deregistering it wait at most ``shutdown_timeout``
(:data:`SHUTDOWN_TIMEOUT_S`) for the agent: a hung agent must not hold up a
shutdown the scheduler gives a bounded time.

Watching. A loop of blocking queries on
``/v1/health/service/<name>?passing`` with ``index`` and ``wait``; the index
follows the documented rules (lower than before: reset to 0; never below 1).
The loop is rate limited by a token bucket (burst 2), errors are retried with
exponential backoff and jitter, the last good set stays in force meanwhile, and
a set is yielded only when it differs from the previous one.

Cancellation. py-consul blocks (requests), and a thread blocked in a socket
read cannot be interrupted. Each call therefore runs in its own daemon thread
(:func:`call_in_daemon_thread`): cancelling the awaiting task returns at once;
the abandoned thread ends when its request does (at most ``wait`` plus
``wait/16`` for a blocking query) and never holds up loop or interpreter exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

import consul
from consul.exceptions import ACLDisabled, ACLPermissionDenied, BadRequest, ClientError, NotFound

from voxmesh.discovery.base import InstanceInfo, consul_service_name
from voxmesh.errors import SettingsError, VoxmeshError

__all__ = [
    "SHUTDOWN_TIMEOUT_S",
    "ConsulApi",
    "ConsulError",
    "ConsulRegistrar",
    "ConsulUnavailable",
    "ConsulWatcher",
    "PyConsulApi",
    "ServiceDefinition",
    "TokenBucket",
    "backoff_delay",
    "call_consul",
    "call_in_daemon_thread",
    "format_go_duration",
    "instance_from_entry",
    "next_index",
    "parse_go_duration",
    "service_definition",
]

log = logging.getLogger(__name__)
T = TypeVar("T")
Entry = Mapping[str, Any]

DRAINING_REASON = "voxmesh: draining, no new streams"
_STANDARD_META = (
    "model",
    "pool",
    "capacity_class",
    "gpu_type",
    "region",
    "max_streams",
    "metrics_port",
    "instance_id",
    "draining",
)
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


class ConsulError(VoxmeshError):
    """Consul refused a request (4xx): sending it again unchanged will not help."""


class ConsulUnavailable(ConsulError):
    """Consul could not be reached or failed (transport error, 5xx): worth retrying."""


def parse_go_duration(text: str) -> float:
    """Seconds in a Go duration string such as ``"5s"``, ``"1m30s"`` or ``"250ms"``."""
    parts = _DURATION.findall(text)
    if text == "0":
        return 0.0
    if not text or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a Go duration: {text!r}")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def format_go_duration(seconds: float) -> str:
    """A Go duration string for ``seconds`` (whole seconds, else milliseconds)."""
    return f"{int(seconds)}s" if float(seconds).is_integer() else f"{round(seconds * 1000)}ms"


async def call_in_daemon_thread(fn: Callable[[], T]) -> T:
    """Runs blocking ``fn`` in a new daemon thread and awaits its result.

    Cancelling the caller returns at once; the thread finishes on its own and
    its result is dropped.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def run() -> None:
        try:
            result = fn()
        except Exception as exc:  # handed over to the awaiting task
            _post(loop, _fail, future, exc)
        else:
            _post(loop, _succeed, future, result)

    threading.Thread(target=run, name="voxmesh-consul-call", daemon=True).start()
    return await future


def _post(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
        loop.call_soon_threadsafe(callback, *args)


def _succeed(future: asyncio.Future[T], result: T) -> None:
    if not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future[Any], error: Exception) -> None:
    if not future.done():
        future.set_exception(error)


async def call_consul(fn: Callable[[], T]) -> T:
    """Runs a py-consul call off the loop; errors become :class:`ConsulError` types."""
    try:
        return await call_in_daemon_thread(fn)
    except (BadRequest, ClientError, ACLDisabled, ACLPermissionDenied, NotFound) as exc:
        raise ConsulError(str(exc)) from exc
    except (consul.ConsulException, OSError) as exc:  # OSError covers requests' errors
        raise ConsulUnavailable(f"{type(exc).__name__}: {exc}") from exc


def next_index(previous: int, returned: int) -> int:
    """The index for the next blocking query (features/blocking.mdx).

    A returned index lower than the previous one resets the loop to 0 (a
    non-blocking query); otherwise it is used, but never below 1.
    """
    if returned < previous:
        return 0
    return max(returned, 1)


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with equal jitter: in ``[d/2, d]`` for ``d = min(cap, base*2^(n-1))``."""
    ceiling = min(cap, base * 2.0 ** max(attempt - 1, 0))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


class TokenBucket:
    """Rate limit for a blocking-query loop: ``burst`` quick calls, then one per ``every`` s."""

    def __init__(
        self, burst: int, every: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._burst, self._every, self._clock = float(burst), every, clock
        self._tokens, self._last = float(burst), clock()

    def reserve(self) -> float:
        """Takes a token; returns how long to wait before using it (0 when one was ready)."""
        now = self._clock()
        if self._every > 0:
            self._tokens = min(self._burst, self._tokens + (now - self._last) / self._every)
        else:
            self._tokens = self._burst
        self._last = now
        self._tokens -= 1
        return 0.0 if self._tokens >= 0 else -self._tokens * self._every


@dataclass(frozen=True)
class ServiceDefinition:
    """The body of one ``PUT /v1/agent/service/register``."""

    name: str
    service_id: str
    address: str
    port: int
    tags: tuple[str, ...]
    meta: Mapping[str, str]
    check: Mapping[str, object]


class ConsulApi(Protocol):
    """The Consul calls discovery needs. Errors raise :class:`ConsulError` types."""

    async def register_service(self, service: ServiceDefinition) -> None:
        """``PUT /v1/agent/service/register``."""

    async def deregister_service(self, service_id: str) -> None:
        """``PUT /v1/agent/service/deregister/:id``; an unknown ID (agent 404) is no error."""

    async def set_maintenance(self, service_id: str, enable: bool, reason: str) -> bool:
        """``PUT /v1/agent/service/maintenance/:id``; False if the agent does not know it."""

    async def has_service(self, service_id: str) -> bool:
        """``GET /v1/agent/service/:id`` answered 200 (not 404)."""

    async def health_service(self, name: str, index: int, wait: str) -> tuple[int, list[Entry]]:
        """``GET /v1/health/service/:name?passing`` (blocking when ``index`` > 0)."""


class PyConsulApi:
    """:class:`ConsulApi` over py-consul; one client per instance of this class."""

    def __init__(self, client: consul.Consul) -> None:
        self._consul = client

    @classmethod
    def connect(
        cls, host: str = "127.0.0.1", port: int = 8500, scheme: str = "http"
    ) -> PyConsulApi:
        """A client for the agent at ``scheme://host:port``."""
        return cls(consul.Consul(host=host, port=port, scheme=scheme))

    async def register_service(self, service: ServiceDefinition) -> None:
        """See :meth:`ConsulApi.register_service`."""
        await call_consul(
            lambda: self._consul.agent.service.register(
                service.name,
                service_id=service.service_id,
                address=service.address,
                port=service.port,
                tags=list(service.tags),
                meta=dict(service.meta),
                check=dict(service.check),
            )
        )

    async def deregister_service(self, service_id: str) -> None:
        """See :meth:`ConsulApi.deregister_service`."""
        await call_consul(lambda: self._consul.agent.service.deregister(service_id))

    async def set_maintenance(self, service_id: str, enable: bool, reason: str) -> bool:
        """See :meth:`ConsulApi.set_maintenance`."""
        flag = "true" if enable else "false"
        maintenance = self._consul.agent.service.maintenance
        return bool(await call_consul(lambda: maintenance(service_id, flag, reason)))

    async def has_service(self, service_id: str) -> bool:
        """See :meth:`ConsulApi.has_service`."""
        found = await call_consul(lambda: self._consul.agent.service_definition(service_id))
        return found is not None

    async def health_service(self, name: str, index: int, wait: str) -> tuple[int, list[Entry]]:
        """See :meth:`ConsulApi.health_service`."""
        raw_index, entries = await call_consul(
            lambda: self._consul.health.service(name, index=index or None, wait=wait, passing=True)
        )
        return int(raw_index), list(entries or [])


def service_definition(
    info: InstanceInfo, *, check_interval: str, check_timeout: str, deregister_after: str
) -> ServiceDefinition:
    """The registration of ``info``: tags, ``Meta`` and the gRPC health check."""
    meta = {
        **info.meta,
        "model": info.model,
        "pool": info.pool,
        "capacity_class": info.capacity_class,
        "gpu_type": info.gpu_type,
        "region": info.region,
        "max_streams": str(info.max_streams),
        "metrics_port": str(info.metrics_port),
        "instance_id": info.instance_id,
        "draining": "true" if info.draining else "false",
    }
    check = {
        "GRPC": info.target,
        "GRPCUseTLS": False,
        "Interval": check_interval,
        "Timeout": check_timeout,
        "DeregisterCriticalServiceAfter": deregister_after,
    }
    tags = ("voxmesh", f"pool={info.pool}", f"model={info.model}", info.capacity_class)
    name = consul_service_name(info.pool)
    return ServiceDefinition(name, info.instance_id, info.address, info.port, tags, meta, check)


def instance_from_entry(entry: Entry, pool: str) -> InstanceInfo | None:
    """The :class:`InstanceInfo` in a health entry, or None if it lacks an address or port.

    ``Service.Address`` falls back to ``Node.Address``; missing ``Meta`` keys
    take the :class:`InstanceInfo` defaults.
    """
    service, node = entry.get("Service") or {}, entry.get("Node") or {}
    meta = {str(k): str(v) for k, v in (service.get("Meta") or {}).items()}
    address = service.get("Address") or node.get("Address") or ""
    port, instance_id = service.get("Port"), service.get("ID") or meta.get("instance_id")
    if not address or not isinstance(port, int) or port <= 0 or not instance_id:
        log.warning("skipping Consul entry without address/port/ID: %s", service.get("ID"))
        return None
    extra: dict[str, Any] = {
        k: meta[k] for k in ("capacity_class", "gpu_type", "region") if k in meta
    }
    for key in ("max_streams", "metrics_port"):
        with contextlib.suppress(KeyError, ValueError):
            extra[key] = int(meta[key])
    return InstanceInfo(
        instance_id=instance_id,
        pool=meta.get("pool", pool),
        model=meta.get("model", ""),
        address=address,
        port=port,
        draining=meta.get("draining") == "true",
        meta={k: v for k, v in meta.items() if k not in _STANDARD_META},
        **extra,
    )


def _healthy(entries: Sequence[Entry], pool: str) -> list[InstanceInfo]:
    found = (instance_from_entry(entry, pool) for entry in entries)
    return sorted(
        (i for i in found if i is not None and not i.draining), key=lambda i: i.instance_id
    )


def _duration_setting(name: str, value: str, minimum: float) -> str:
    try:
        seconds = parse_go_duration(value)
    except ValueError as exc:
        raise SettingsError(f"{name}={value!r} is not a Go duration such as '5s'") from exc
    if seconds < minimum:
        raise SettingsError(f"{name}={value!r} must be at least {format_go_duration(minimum)}")
    return value


REAP_MARGIN_S = 30.0
"""How much longer than a drain a critical check must be allowed before the agent
reaps: the drain ends with a deregistration, which may need a retry."""


def _reap_timeout(deregister_after: str, drain_timeout: float) -> str:
    """``deregister_after``, or longer when a drain keeps the check critical that long."""
    floor = drain_timeout + REAP_MARGIN_S
    if drain_timeout <= 0 or parse_go_duration(deregister_after) >= floor:
        return deregister_after
    raised = format_go_duration(math.ceil(floor))
    log.info(
        "deregister_after=%s is shorter than a drain (%gs): Consul reaps critical "
        "services after %s instead",
        deregister_after,
        drain_timeout,
        raised,
    )
    return raised


SHUTDOWN_TIMEOUT_S = 3.0
"""Longest wait for the agent when an instance is marked draining and when it
deregisters, so that a hung agent cannot hold a shutdown past the scheduler's kill
timeout (py-consul waits 30 s per call). A call that takes longer counts as one the
agent did not answer."""


class ConsulRegistrar:
    """Registers one instance in Consul and keeps it registered (see the module docstring)."""

    def __init__(
        self,
        api: ConsulApi,
        *,
        check_interval: str = "5s",
        check_timeout: str = "2s",
        deregister_after: str = "1m",
        drain_timeout: float = 0.0,
        resync_interval: float = 30.0,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        shutdown_timeout: float = SHUTDOWN_TIMEOUT_S,
        rng: random.Random | None = None,
    ) -> None:
        self._api = api
        self._shutdown_timeout = shutdown_timeout
        self._check_interval = _duration_setting("check_interval", check_interval, 0.001)
        self._check_timeout = _duration_setting("check_timeout", check_timeout, 0.001)
        self._deregister_after = _reap_timeout(
            _duration_setting("deregister_after", deregister_after, 60.0), drain_timeout
        )
        self._resync, self._backoff = resync_interval, (backoff_base, backoff_max)
        self._rng = rng or random.Random()
        self._info: InstanceInfo | None = None
        self._synced = False
        self._failed = asyncio.Event()  # a call outside the keeper could not reach Consul
        self._lock = asyncio.Lock()
        self._keeper: asyncio.Task[None] | None = None

    async def register(self, info: InstanceInfo) -> None:
        """Registers ``info``; if Consul is unreachable the keeper task retries.

        Raises :class:`ConsulError` if Consul rejects the registration.
        """
        async with self._lock:
            self._info = info
            try:
                await self._publish()
            except ConsulUnavailable as exc:
                log.warning("registering %s failed, will retry: %s", info.instance_id, exc)
                self._failed.set()
            if self._keeper is None:
                self._keeper = asyncio.create_task(self._keep(), name="consul-registrar-keeper")

    async def set_draining(self) -> None:
        """Maintenance mode on (drops out of ``?passing``) and ``Meta.draining=true``.

        Waits at most ``shutdown_timeout`` for the agent (a keeper call in flight
        included); past it, as on a transport error, the keeper goes on retrying.
        """
        info = self._info
        if info is None or info.draining:
            return
        # Outside the lock, so that the keeper publishes it should this call not get
        # through; a publication of the old info in flight does not count as in sync.
        self._info, self._synced = replace(info, draining=True), False
        try:
            async with asyncio.timeout(self._shutdown_timeout), self._lock:
                if self._info is not None:  # not deregistered meanwhile
                    await self._publish()
        except (ConsulUnavailable, TimeoutError) as exc:
            log.warning(
                "marking %s draining failed, will retry: %s",
                info.instance_id,
                exc if isinstance(exc, ConsulError) else self._no_answer(),
            )
            self._failed.set()

    async def deregister(self) -> None:
        """Stops the keeper and removes the instance. Idempotent.

        Waits at most ``shutdown_timeout`` for the agent; past it, as on any error,
        the agent reaps the instance once its check has failed ``deregister_after``.
        """
        keeper, self._keeper = self._keeper, None
        info, self._info = self._info, None
        if keeper is not None:
            # Before taking the lock: a keeper waiting on a hung agent holds it.
            keeper.cancel()
            # Unlike awaiting the task, this never swallows our own cancellation.
            await asyncio.wait([keeper])
        if info is None:
            return
        try:
            async with asyncio.timeout(self._shutdown_timeout), self._lock:
                await self._api.deregister_service(info.instance_id)
        except (ConsulError, TimeoutError) as exc:
            log.warning(
                "deregistering %s failed; Consul reaps it %s after its check fails: %s",
                info.instance_id,
                self._deregister_after,
                exc if isinstance(exc, ConsulError) else self._no_answer(),
            )

    def _no_answer(self) -> str:
        return f"no answer within {self._shutdown_timeout:g} s"

    async def _publish(self) -> None:
        """Registers the current info (and maintenance mode if draining); lock held.

        In sync afterwards only if the info did not change meanwhile.
        """
        assert self._info is not None
        info, self._synced = self._info, False
        await self._api.register_service(
            service_definition(
                info,
                check_interval=self._check_interval,
                check_timeout=self._check_timeout,
                deregister_after=self._deregister_after,
            )
        )
        if info.draining and not await self._api.set_maintenance(
            info.instance_id, True, DRAINING_REASON
        ):
            raise ConsulUnavailable(f"agent forgot {info.instance_id} during registration")
        self._synced = self._info is info

    async def _keep(self) -> None:
        """Re-registers when the agent forgot the instance or an earlier call failed.

        In sync it checks every ``resync_interval``; out of sync (a failed call, its
        own or ``register``'s or ``set_draining``'s) it retries on the backoff schedule,
        the first retry after ``backoff_base`` or less.
        """
        failures = 0
        while True:
            if failures or not self._synced:
                await asyncio.sleep(self._retry_delay(max(failures, 1)))
            elif await self._failure_within(self._resync):
                continue  # a call failed meanwhile: retry after the backoff
            try:
                async with self._lock:
                    if self._info is None:
                        return
                    if self._synced and await self._api.has_service(self._info.instance_id):
                        failures = 0
                        continue
                    if self._synced:
                        log.warning(
                            "Consul agent forgot %s; registering again", self._info.instance_id
                        )
                    await self._publish()
                failures = 0
            except ConsulError as exc:
                failures += 1
                log.warning("Consul registration check failed (%d in a row): %s", failures, exc)

    async def _failure_within(self, seconds: float) -> bool:
        """Waits ``seconds``; True (at once) when a call outside the keeper failed."""
        self._failed.clear()
        try:
            await asyncio.wait_for(self._failed.wait(), seconds)
        except TimeoutError:
            return False
        return True

    def _retry_delay(self, failures: int) -> float:
        return backoff_delay(failures, *self._backoff, self._rng)


class ConsulWatcher:
    """Follows the passing instances of one pool (see the module docstring)."""

    def __init__(
        self,
        api: ConsulApi,
        pool: str,
        *,
        wait: str = "30s",
        rate_every: float = 5.0,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api, self._pool = api, pool
        self._wait = _duration_setting("wait", wait, 0.001)
        self._rate_every, self._clock = rate_every, clock
        self._backoff = (backoff_base, backoff_max)
        self._rng = rng or random.Random()

    async def watch(self) -> AsyncIterator[list[InstanceInfo]]:
        """Yields the healthy, non-draining set at once and again on every change."""
        name, index, failures = consul_service_name(self._pool), 0, 0
        last: list[InstanceInfo] | None = None
        bucket = TokenBucket(2, self._rate_every, self._clock)
        while True:
            delay = bucket.reserve()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                returned, entries = await self._api.health_service(name, index, self._wait)
            except ConsulError as exc:
                failures += 1
                log.warning(
                    "watching %s failed (%d in a row), keeping the last set: %s",
                    name,
                    failures,
                    exc,
                )
                await asyncio.sleep(backoff_delay(failures, *self._backoff, self._rng))
                continue
            if failures:
                log.info("watching %s recovered after %d failures", name, failures)
            failures, index = 0, next_index(index, returned)
            current = _healthy(entries, self._pool)
            if current != last:
                last = current
                yield list(current)
