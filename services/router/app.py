"""Wires the router together: discovery, membership, balancer, admission, servicers, server.

Shutdown order (SIGTERM): health NOT_SERVING, refuse new streams, let the
active ones finish (up to ``drain_timeout_s``), fail what still waits in the
queues, stop the server (cancelling what is left), stop the watches and
close the channels.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry

from services.router.active import ActiveStreams
from services.router.admission import Admission, QueueLimits
from services.router.balancer import PowerOfTwoBalancer, Preference
from services.router.membership import Member, Membership
from services.router.metrics import RouterMetrics
from services.router.relay import RelayLimits
from services.router.routing import PoolResolver
from services.router.servicer import RouterRecognizer, RouterTelemetry, snapshot_builder
from services.router.settings import RouterSettings
from voxmesh.discovery import Watcher
from voxmesh.rpc.server import ServerOptions, ServiceServer
from voxmesh.stt.v1 import stt_pb2, stt_pb2_grpc

__all__ = ["RouterApp", "discovery_watchers"]

logger = logging.getLogger(__name__)


def discovery_watchers(settings: RouterSettings) -> Callable[[str], Watcher]:
    """The watcher factory of the configured discovery backend."""
    if settings.discovery == "consul":
        from voxmesh.discovery.consul import ConsulWatcher, PyConsulApi

        url = urlsplit(settings.consul_address)
        api = PyConsulApi.connect(
            host=url.hostname or "127.0.0.1", port=url.port or 8500, scheme=url.scheme or "http"
        )
        return lambda pool: ConsulWatcher(api, pool)
    from voxmesh.discovery.file import FileWatcher

    return lambda pool: FileWatcher(
        settings.registry_dir,
        pool,
        ttl=settings.registry_ttl_s,
        poll_interval=settings.registry_poll_s,
    )


class RouterApp:
    """The router process: ``await start()``, then ``await shutdown()`` (idempotent)."""

    def __init__(
        self,
        settings: RouterSettings,
        *,
        watcher_for: Callable[[str], Watcher] | None = None,
        registry: CollectorRegistry | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.metrics = RouterMetrics(self.registry)
        pools = list(settings.pools)
        self.metrics.start_at_zero(pools)
        self.membership = Membership(
            pools,
            watcher_for or discovery_watchers(settings),
            self.metrics,
            settings.telemetry_interval_s,
            on_change=self._capacity_changed,
            clock=clock,
            last_resort_min_drain_s=(
                settings.last_resort_min_drain_s if settings.last_resort else None
            ),
        )
        balancer = PowerOfTwoBalancer(
            Preference(region=settings.region, gpu_types=settings.gpu_preference),
            rng or random.Random(),
        )
        self.admission: Admission[Member] = Admission(
            pools=pools,
            candidates=self.membership.candidates,
            balancer=balancer,
            limits=QueueLimits(
                max_streams=settings.queue_max_streams,
                max_wait_s=settings.queue_max_wait_s,
                retry_after_s=settings.queue_retry_after_s,
            ),
            metrics=self.metrics,
            clock=clock,
        )
        resolver = PoolResolver(
            pools=pools,
            aliases=settings.model_aliases(),
            policy=settings.auto_policy,
            realtime_pool=settings.auto_realtime_pool,
            batch_pool=settings.auto_batch_pool,
            language_pools=settings.language_pools(),
        )
        self.streams = ActiveStreams(
            self.metrics,
            max_streams=settings.max_streams,
            retry_after_s=settings.queue_retry_after_s,
        )
        """The router's streams in progress, whichever data path relays them."""
        self.recognizer = RouterRecognizer(
            resolver=resolver,
            membership=self.membership,
            admission=self.admission,
            limits=RelayLimits(
                queue_max_bytes=settings.queue_max_bytes,
                relay_buffer_bytes=settings.relay_buffer_bytes,
                replay_max_bytes=settings.replay_max_bytes,
                max_chunk_bytes=settings.max_chunk_bytes,
                max_failovers=settings.max_failovers,
                failover_context_s=settings.failover_context_s,
                idle_timeout_s=settings.idle_timeout_s,
            ),
            metrics=self.metrics,
            streams=self.streams,
        )
        self.telemetry_snapshot = snapshot_builder(
            settings.router_id, pools, self.streams, self.membership, self.admission
        )
        """Builds the router's current telemetry snapshot."""
        telemetry = RouterTelemetry(self.telemetry_snapshot)
        metrics_port = None if settings.metrics_port < 0 else settings.metrics_port
        self.server = ServiceServer(
            ServerOptions(
                host=settings.host,
                port=settings.port,
                metrics_port=metrics_port,
                tls=settings.tls,
            ),
            self.registry,
        )
        services = stt_pb2.DESCRIPTOR.services_by_name
        self.server.add_service(
            lambda s: stt_pb2_grpc.add_RecognizerServiceServicer_to_server(self.recognizer, s),
            services["RecognizerService"].full_name,
        )
        self.server.add_service(
            lambda s: stt_pb2_grpc.add_TelemetryServiceServicer_to_server(telemetry, s),
            services["TelemetryService"].full_name,
        )
        self._shutdown: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The bound gRPC port."""
        return self.server.port

    @property
    def target(self) -> str:
        """``host:port`` of the public endpoint."""
        return f"{self.settings.host}:{self.port}"

    async def start(self) -> None:
        """Starts discovery and the server, then reports SERVING."""
        self.membership.start()
        await self.server.start()
        await self.server.set_serving()
        logger.info("router %s serving pools %s", self.target, ", ".join(self.settings.pools))

    async def shutdown(self) -> None:
        """Drains and stops (idempotent; concurrent callers wait for the same shutdown)."""
        if self._shutdown is None:
            self._shutdown = asyncio.create_task(self._drain_and_stop())
        await asyncio.shield(self._shutdown)

    async def _drain_and_stop(self) -> None:
        await self.server.set_not_serving()
        self.recognizer.begin_drain()
        if not await self.recognizer.wait_idle(self.settings.drain_timeout_s):
            logger.warning("drain timeout: cancelling %d streams", self.recognizer.active_streams)
        self.admission.close()
        await self.server.stop(0)
        await self.membership.shutdown()
        logger.info("router stopped")

    def _capacity_changed(self, pool: str) -> None:
        self.admission.notify(pool)
