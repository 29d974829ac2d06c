"""Wires the router together: discovery, membership, balancer, admission, servicers, server.

With ``data_path = python`` the gRPC server serves the public endpoint. With
``native`` it serves a Unix socket in a private directory instead (Recognize,
TelemetryService, health, reflection and the control plane's DataPlaneService),
and the native data path, a child process (:mod:`services.router.dataplane`),
serves the public endpoint: started once the socket serves, its ``PORT`` is the
router's. Should it exit while the router runs, :meth:`RouterApp.wait_failed`
returns and the entry point stops the router with a non-zero exit.

Shutdown order (SIGTERM): health NOT_SERVING, refuse new streams, let the
active ones finish (up to ``drain_timeout_s``), fail what still waits in the
queues, end the telemetry watches (up to ``WATCH_END_TIMEOUT_S``), stop the
native data path (SIGTERM: it cancels what is left and exits; SIGKILL should it
still run after ``DATAPLANE_STOP_TIMEOUT_S``),
stop the server (cancelling what is left), stop the discovery watch and close
the channels.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from services.router.active import ActiveStreams
from services.router.admission import Admission, QueueLimits
from services.router.balancer import PowerOfTwoBalancer, Preference
from services.router.connect import CONNECT_MAX_MESSAGE_BYTES
from services.router.control import DataPlaneService
from services.router.dataplane import DataPlaneProcess, dataplane_argv
from services.router.membership import Member, Membership
from services.router.metrics import RouterMetrics
from services.router.parts import RouterParts
from services.router.relay import RelayLimits
from services.router.routing import PoolResolver
from services.router.servicer import RouterRecognizer, RouterTelemetry, snapshot_builder
from services.router.settings import RouterSettings
from voxmesh import tasks
from voxmesh.discovery import Watcher
from voxmesh.router.v1 import dataplane_pb2, dataplane_pb2_grpc
from voxmesh.rpc.address import host_port
from voxmesh.rpc.server import DEFAULT_MAX_MESSAGE_BYTES, ServerOptions, ServiceServer
from voxmesh.stt.v1 import stt_pb2, stt_pb2_grpc

__all__ = [
    "DATAPLANE_START_TIMEOUT_S",
    "DATAPLANE_STOP_TIMEOUT_S",
    "WATCH_END_TIMEOUT_S",
    "RouterApp",
    "discovery_watchers",
]

logger = logging.getLogger(__name__)

DATAPLANE_START_TIMEOUT_S = 10.0
"""Longest wait for the native data path's ``PORT`` line at start."""
DATAPLANE_STOP_TIMEOUT_S = 10.0
"""Longest wait for the native data path to exit after SIGTERM before SIGKILL (its
streams have had the drain by then)."""
WATCH_END_TIMEOUT_S = 1.0
"""Longest wait, once the drain is over, for the telemetry watches to send their last
snapshot and status."""


def discovery_watchers(settings: RouterSettings) -> Callable[[str], Watcher]:
    """The watcher factory of the configured discovery backend."""
    if settings.discovery == "consul":
        from voxmesh.discovery.consul import ConsulWatcher, PyConsulApi
        from voxmesh.discovery.consul_address import parse_consul_address

        agent = parse_consul_address("consul_address", settings.consul_address)
        api = PyConsulApi.connect(agent.host, agent.port, agent.scheme)
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
        limits = RelayLimits.of(settings)
        parts = RouterParts(
            resolver=resolver,
            membership=self.membership,
            admission=self.admission,
            limits=limits,
            metrics=self.metrics,
            streams=self.streams,
        )
        self.recognizer = RouterRecognizer(parts)
        self.telemetry_snapshot = snapshot_builder(
            settings.router_id, pools, self.streams, self.membership, self.admission
        )
        """Builds the router's current telemetry snapshot."""
        self._telemetry = RouterTelemetry(self.telemetry_snapshot)
        metrics_port = None if settings.metrics_port < 0 else settings.metrics_port
        native = settings.data_path == "native"
        self._run_dir = tempfile.mkdtemp(prefix="voxmesh-router-") if native else ""
        self.control_socket = os.path.join(self._run_dir, "control.sock") if native else ""
        """The Unix socket the server serves with the native data path ("" otherwise)."""
        self.server = ServiceServer(
            ServerOptions(
                host=settings.host,
                port=settings.port,
                metrics_port=metrics_port,
                tls=None if native else settings.tls,
                unix_socket=self.control_socket,
                # The data path's Connect call carries client messages, and more.
                max_message_bytes=(
                    CONNECT_MAX_MESSAGE_BYTES if native else DEFAULT_MAX_MESSAGE_BYTES
                ),
            ),
            self.registry,
        )
        services = stt_pb2.DESCRIPTOR.services_by_name
        self.server.add_service(
            lambda s: stt_pb2_grpc.add_RecognizerServiceServicer_to_server(self.recognizer, s),
            services["RecognizerService"].full_name,
        )
        self.server.add_service(
            lambda s: stt_pb2_grpc.add_TelemetryServiceServicer_to_server(self._telemetry, s),
            services["TelemetryService"].full_name,
        )
        self.dataplane: DataPlaneProcess | None = None
        """The native data path's process (None with the Python data path)."""
        if native:
            control = DataPlaneService(parts)
            self.server.add_service(
                lambda s: dataplane_pb2_grpc.add_DataPlaneServiceServicer_to_server(control, s),
                dataplane_pb2.DESCRIPTOR.services_by_name["DataPlaneService"].full_name,
            )
            self.dataplane = DataPlaneProcess(
                dataplane_argv(
                    settings.dataplane_bin,
                    listen=host_port(settings.host, settings.port),
                    socket=self.control_socket,
                    tls=settings.tls,
                    idle_timeout_s=settings.idle_timeout_s,
                    control_batch_wait_s=settings.control_batch_wait_s,
                )
            )
        self._failed = asyncio.Event()
        self._watch: asyncio.Task[None] | None = None
        self._shutdown: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The bound port of the public endpoint (the native data path's with it)."""
        return self.dataplane.port if self.dataplane is not None else self.server.port

    @property
    def target(self) -> str:
        """``host:port`` of the public endpoint."""
        return f"{self.settings.host}:{self.port}"

    async def start(self) -> None:
        """Starts discovery, the server and the native data path, then reports SERVING.

        What started is stopped again should a later part fail to start."""
        try:
            self.membership.start()
            await self.server.start()
            if self.dataplane is not None:
                await self.dataplane.start(DATAPLANE_START_TIMEOUT_S)
                self._watch = asyncio.create_task(
                    self._watch_dataplane(self.dataplane), name="dataplane-watch"
                )
        except BaseException:
            await self._stop_parts()
            raise
        await self.server.set_serving()
        logger.info("router %s serving pools %s", self.target, ", ".join(self.settings.pools))

    async def wait_failed(self) -> None:
        """Returns once the router cannot serve any more: its native data path exited
        while it ran (never with the Python data path)."""
        await self._failed.wait()

    async def _watch_dataplane(self, dataplane: DataPlaneProcess) -> None:
        code = await dataplane.wait()
        logger.error(
            "the native data path (pid %d) exited with code %d while the router ran",
            dataplane.pid,
            code,
        )
        self._failed.set()

    async def shutdown(self) -> None:
        """Drains and stops (idempotent; concurrent callers wait for the same shutdown)."""
        if self._shutdown is None:
            self._shutdown = asyncio.create_task(self._drain_and_stop())
        await asyncio.shield(self._shutdown)

    async def _drain_and_stop(self) -> None:
        await self.server.set_not_serving()
        self.streams.begin_drain()
        if not await self.streams.wait_idle(self.settings.drain_timeout_s):
            logger.warning("drain timeout: cancelling %d streams", self.streams.active)
        self.admission.close()
        # Before the data path, which waits for them, and the server, which cancels them.
        await self._telemetry.end_watches(WATCH_END_TIMEOUT_S)
        await self._stop_parts()
        logger.info("router stopped")

    async def _stop_parts(self) -> None:
        """Stops the native data path, the server, the watches (idempotent)."""
        try:
            if self._watch is not None:
                await tasks.stop(self._watch)  # its exit is asked for now
            if self.dataplane is not None:
                await self.dataplane.stop(DATAPLANE_STOP_TIMEOUT_S)
            await self.server.stop(0)
            await self.membership.shutdown()
        finally:
            if self._run_dir:
                shutil.rmtree(self._run_dir, ignore_errors=True)

    def _capacity_changed(self, pool: str) -> None:
        self.admission.notify(pool)
