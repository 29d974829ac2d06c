"""Wires the autoscaler together: signals, target, leader lock, loop, gRPC API, metrics.

Shutdown order (SIGTERM): health NOT_SERVING; the loop finishes the evaluation in
flight and releases the leader lock (a standby takes over at once); the signal source
stops; the local target drains the instances it started; the server stops, giving open
RPCs the drain timeout.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry

from services.autoscaler.loop import EvaluationLoop, LoopConfig, PoolSpec
from services.autoscaler.metrics import AutoscalerMetrics
from services.autoscaler.records import DecisionLog
from services.autoscaler.service import AutoscalerServicer
from services.autoscaler.settings import AutoscalerSettings
from services.autoscaler.signals.base import SignalSource
from services.autoscaler.targets.base import CapacityClass, ScaleTarget
from services.autoscaler.targets.local import LocalGroup, LocalTarget, spawn_service
from voxmesh.autoscaler.v1 import autoscaler_pb2, autoscaler_pb2_grpc
from voxmesh.discovery import Watcher
from voxmesh.leader import LeaderLock
from voxmesh.rpc.server import ServerOptions, ServiceServer

__all__ = ["AutoscalerApp", "make_lock", "make_source", "make_target"]

logger = logging.getLogger(__name__)


def make_source(settings: AutoscalerSettings, clock: Callable[[], float]) -> SignalSource:
    """The configured signal source."""
    if settings.signals == "prometheus":
        from services.autoscaler.signals.prometheus import PrometheusSource

        return PrometheusSource(
            settings.prometheus_url, settings.pools, interval_s=settings.interval, clock=clock
        )
    from services.autoscaler.signals.telemetry import StaticWatcher, TelemetrySource

    instances: Callable[[str], Watcher]
    routers: Watcher
    if settings.discovery == "consul":
        from voxmesh.discovery.consul import ConsulWatcher, PyConsulApi
        from voxmesh.discovery.consul_address import parse_consul_address

        agent = parse_consul_address("consul_addr", settings.consul_addr)
        api = PyConsulApi.connect(agent.host, agent.port, agent.scheme)
        instances = lambda pool: ConsulWatcher(api, pool)  # noqa: E731
        routers = (
            StaticWatcher(settings.router_targets)
            if settings.router_targets
            else ConsulWatcher(api, "router")
        )
    else:
        from voxmesh.discovery.file import FileWatcher

        instances = lambda pool: FileWatcher(  # noqa: E731
            settings.registry_dir, pool, ttl=settings.registry_ttl
        )
        routers = StaticWatcher(settings.router_targets)
    return TelemetrySource(
        settings.pools,
        instances,
        routers,
        interval_s=settings.telemetry_interval,
        clock=clock,
        router_tls=settings.router_client_tls,
    )


def make_target(
    settings: AutoscalerSettings, source: SignalSource, metrics: AutoscalerMetrics
) -> ScaleTarget:
    """The configured scale target."""
    if settings.target == "nomad":
        from services.autoscaler.targets.nomad import NomadTarget, NomadTargetConfig, default_groups
        from services.autoscaler.targets.nomad_api import PythonNomadApi

        api = PythonNomadApi(settings.nomad_addr, verify=settings.nomad_ca_cert or True)
        config = NomadTargetConfig(
            groups=default_groups(settings.pools),
            pending_deadline_s=settings.nomad_pending_deadline,
        )
        return NomadTarget(api, config)
    classes = [CapacityClass.ON_DEMAND]
    if settings.local_preemptible:
        classes.append(CapacityClass.PREEMPTIBLE)
    groups = [
        LocalGroup(pool, cls, args=settings.local_asr_args, max_count=settings.local_group_max)
        for pool in settings.pools
        for cls in classes
    ]
    return LocalTarget(
        groups,
        spawn_service(settings.registry_dir, settings.local_log_dir, settings.drain_timeout),
        drain_timeout_s=settings.drain_timeout,
        ready_timeout_s=settings.local_ready_timeout,
        load=source.instance_streams,
        on_started=lambda pool, s: metrics.instance_startup.labels(pool).observe(s),
    )


class _SoleReplica:
    """A :class:`~voxmesh.leader.LeaderLock` that is always held (``leader=none``)."""

    def __init__(self) -> None:
        self._released = asyncio.Event()
        self.is_leader = False

    async def acquire(self) -> bool:
        self.is_leader = True
        self._released.clear()
        return True

    async def hold(self) -> None:
        await self._released.wait()

    async def release(self) -> None:
        self.is_leader = False
        self._released.set()


def make_lock(settings: AutoscalerSettings) -> LeaderLock:
    """The configured leader lock."""
    backend = settings.leader_backend
    if backend == "consul":
        from voxmesh.discovery.consul_address import parse_consul_address
        from voxmesh.leader import ConsulLeaderLock, PyConsulSessionApi

        agent = parse_consul_address("consul_addr", settings.consul_addr)
        return ConsulLeaderLock(
            PyConsulSessionApi.connect(agent.host, agent.port, agent.scheme),
            settings.leader_key,
            holder=settings.replica_id,
            ttl=settings.leader_ttl,
        )
    if backend == "file":
        from voxmesh.leader import FileLeaderLock

        return FileLeaderLock(settings.leader_file)
    return _SoleReplica()


class AutoscalerApp:
    """The autoscaler process: ``await start()``, then ``await shutdown()`` (idempotent)."""

    def __init__(
        self,
        settings: AutoscalerSettings,
        *,
        registry: CollectorRegistry | None = None,
        source: SignalSource | None = None,
        target: ScaleTarget | None = None,
        lock: LeaderLock | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = AutoscalerMetrics(registry)
        self.source = source or make_source(settings, clock)
        self.target = target or make_target(settings, self.source, self.metrics)
        pools = tuple(
            PoolSpec(pool, settings.pool_policy(pool), settings.fallback_max_streams(pool))
            for pool in settings.pools
        )
        self.loop = EvaluationLoop(
            LoopConfig(
                pools=pools,
                interval_s=settings.interval,
                cooldown_s=settings.cooldown,
                scaling_timeout_s=settings.scaling_timeout,
                leader_retry_s=settings.leader_retry,
                dry_run=settings.dry_run,
            ),
            self.source,
            self.target,
            lock or make_lock(settings),
            metrics=self.metrics,
            log=DecisionLog(settings.history),
            clock=clock,
            rng=rng,
        )
        self.server = ServiceServer(
            ServerOptions(
                host=settings.host,
                port=settings.port,
                metrics_port=None if settings.metrics_port < 0 else settings.metrics_port,
            ),
            self.metrics.registry,
        )
        servicer = AutoscalerServicer(
            self.loop, replica_id=settings.replica_id, target=settings.target
        )
        self.server.add_service(
            lambda s: autoscaler_pb2_grpc.add_AutoscalerServiceServicer_to_server(servicer, s),
            autoscaler_pb2.DESCRIPTOR.services_by_name["AutoscalerService"].full_name,
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._shutdown: asyncio.Task[None] | None = None

    @property
    def ready(self) -> dict[str, Any]:
        """The ready record printed for launchers (``VOXMESH_READY``)."""
        return {
            "replica_id": self.settings.replica_id,
            "port": self.server.port,
            "metrics_port": self.server.metrics_port,
            "target": self.settings.target,
            "dry_run": self.settings.dry_run,
        }

    async def start(self) -> None:
        """Starts the server, the signal source and the loop (which campaigns for the lock)."""
        await self.server.start()
        self._tasks = [
            asyncio.create_task(self.source.run(), name="autoscaler-signals"),
            asyncio.create_task(self.loop.run(), name="autoscaler-loop"),
        ]
        for task in self._tasks:
            task.add_done_callback(_report_crash)
        await self.server.set_serving()
        logger.info(
            "autoscaler %s: target %s, pools %s%s",
            self.settings.replica_id,
            self.settings.target,
            ", ".join(self.settings.pools),
            " (dry run)" if self.settings.dry_run else "",
        )

    async def shutdown(self) -> None:
        """Stops everything in order (see the module docstring); idempotent."""
        if self._shutdown is None:
            self._shutdown = asyncio.create_task(self._stop())
        await asyncio.shield(self._shutdown)

    async def abort(self) -> None:
        """Kills the local target's instances and stops the server now (a second signal)."""
        if isinstance(self.target, LocalTarget):
            await self.target.kill_all()
        await self.server.stop(0)

    async def _stop(self) -> None:
        # One deadline for the loop, the tasks and the server, not drain_timeout each:
        # three in a row outlasted the scheduler's kill timeout (Nomad: 45 s), which
        # then killed the autoscaler before it released the leader lock.
        deadline = time.monotonic() + self.settings.drain_timeout

        def left() -> float:
            return max(0.0, deadline - time.monotonic())

        await self.server.set_not_serving()
        await self.loop.shutdown(left())
        await self.source.shutdown()
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=left())
            for task in late:
                logger.warning("%s did not stop in time: cancelled", task.get_name())
                task.cancel()
            if late:
                await asyncio.wait(late)
        if isinstance(self.target, LocalTarget):
            await self.target.shutdown()  # drains the instances it started, its own bound
        await self.server.stop(left())


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("%s crashed", task.get_name(), exc_info=task.exception())
