"""grpc.aio server bootstrap shared by every voxmesh service.

A :class:`ServiceServer` owns the gRPC server, the standard health service,
server reflection and the Prometheus HTTP endpoint. Its shutdown follows the
order every service uses: health NOT_SERVING first (so load balancers and
Consul stop sending work), then the caller drains, then the server stops
with a grace period.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server

from voxmesh.errors import SettingsError
from voxmesh.rpc.address import host_port
from voxmesh.rpc.tls import ServerTls, server_credentials

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "ServerOptions",
    "ServiceServer",
    "bind_error",
    "run_service",
    "wait_for_signal",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 20 * 1024 * 1024
"""Largest gRPC message a voxmesh service accepts by default (the router's limit)."""
_GRPC_BIND_FAILED = "in use, or not an address of this machine"
"""grpcio says no more than "Failed to bind" (the reason goes to its own log)."""


@dataclass(frozen=True)
class ServerOptions:
    """Where and how a service listens."""

    host: str = "127.0.0.1"
    """Interface to bind; ``0.0.0.0`` in a cluster."""
    port: int = 0
    """gRPC port; 0 picks a free one (the bound port is ``ServiceServer.port``)."""
    metrics_port: int | None = 0
    """Prometheus HTTP port; 0 picks a free one, None disables it."""
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    """Largest gRPC message accepted (bounds unary Recognize requests)."""
    tls: ServerTls | None = None
    """TLS for the gRPC port (None: plaintext); the metrics port stays plain HTTP."""
    unix_socket: str = ""
    """A Unix socket path to serve gRPC on instead of ``host:port``, plaintext (only
    this machine's processes reach it; its directory decides which); the metrics port
    still binds ``host``. ``ServiceServer.port`` is then 0."""


class ServiceServer:
    """A gRPC server with health, reflection and metrics."""

    def __init__(
        self,
        options: ServerOptions,
        registry: CollectorRegistry,
        interceptors: Iterable[grpc.aio.ServerInterceptor] = (),
    ) -> None:
        self._options = options
        self._registry = registry
        self._server = grpc.aio.server(
            interceptors=list(interceptors),
            options=[
                ("grpc.max_receive_message_length", options.max_message_bytes),
                ("grpc.max_send_message_length", options.max_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
        )
        self.health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        self._service_names: list[str] = [
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
        ]
        self._metrics_httpd: Any = None
        self.port = 0
        self.metrics_port = 0
        self._stopped = False

    @property
    def grpc_server(self) -> grpc.aio.Server:
        """The underlying server, for ``add_XServicer_to_server``."""
        return self._server

    def add_service(self, add: Callable[[grpc.aio.Server], None], full_name: str) -> None:
        """Adds a servicer (``add`` registers it) and lists it for reflection and health."""
        add(self._server)
        self._service_names.append(full_name)

    async def start(self) -> None:
        """Binds and starts; health starts NOT_SERVING until :meth:`set_serving`.

        Raises :class:`SettingsError` naming the setting (``port``, ``metrics_port``) and
        the address when a port cannot be bound (in use, or not an address of this host).
        """
        reflection.enable_server_reflection(
            [*self._service_names, reflection.SERVICE_NAME], self._server
        )
        self.port = self._bind_grpc()
        if self._options.metrics_port is not None:
            self._start_metrics(self._options.metrics_port)
        await self._set_all(health_pb2.HealthCheckResponse.NOT_SERVING)
        try:
            await self._server.start()
        except BaseException:
            self._stop_metrics()
            raise
        unix = self._options.unix_socket
        logger.info(
            "listening on %s (%s, metrics %s)",
            f"unix:{unix}" if unix else f"{self._options.host}:{self.port}",
            "plaintext" if unix else _transport(self._options.tls),
            self.metrics_port or "off",
        )

    def _bind_grpc(self) -> int:
        """Binds the gRPC port; a port that cannot be bound is a :class:`SettingsError`.

        grpcio raises ``RuntimeError("Failed to bind ...")`` for a busy port (older
        versions returned 0): both become one error naming the setting and the address.
        """
        if self._options.unix_socket:
            address = f"unix:{self._options.unix_socket}"
            try:
                bound = self._server.add_insecure_port(address)
            except RuntimeError as err:
                raise SettingsError(f"cannot listen on {address}") from err
            if bound == 0:
                raise SettingsError(f"cannot listen on {address}")
            return 0
        host, port = self._options.host, self._options.port
        address = host_port(host, port)
        try:
            if self._options.tls is None:
                bound = self._server.add_insecure_port(address)
            else:
                bound = self._server.add_secure_port(address, server_credentials(self._options.tls))
        except RuntimeError as err:
            raise bind_error("port", port, address, _GRPC_BIND_FAILED) from err
        if bound == 0:
            raise bind_error("port", port, address, _GRPC_BIND_FAILED)
        return int(bound)

    def _start_metrics(self, port: int) -> None:
        """Starts the Prometheus HTTP endpoint; a busy port is a :class:`SettingsError`."""
        address = host_port(self._options.host, port)
        try:
            httpd, _thread = start_http_server(
                port, addr=self._options.host.strip("[]"), registry=self._registry
            )
        except OSError as err:
            raise bind_error("metrics_port", port, address, err.strerror or str(err)) from err
        self._metrics_httpd = httpd
        self.metrics_port = int(httpd.server_port)

    def _stop_metrics(self) -> None:
        httpd, self._metrics_httpd = self._metrics_httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()

    async def set_serving(self) -> None:
        """Reports SERVING for the whole server and every service."""
        await self._set_all(health_pb2.HealthCheckResponse.SERVING)

    async def set_not_serving(self) -> None:
        """Reports NOT_SERVING (drain starts); Watch callers see it at once."""
        await self._set_all(health_pb2.HealthCheckResponse.NOT_SERVING)

    async def _set_all(self, status: int) -> None:
        for name in ["", *self._service_names]:
            await self.health.set(name, status)

    async def stop(self, grace: float) -> None:
        """Stops the server (idempotent): RPCs still running get ``grace`` seconds."""
        if self._stopped:
            return
        self._stopped = True
        await self.health.enter_graceful_shutdown()
        await self._server.stop(grace)
        self._stop_metrics()

    async def wait_for_termination(self) -> None:
        """Returns when the server has stopped."""
        await self._server.wait_for_termination()


class _Logged(Protocol):
    @property
    def log_level(self) -> str: ...


S = TypeVar("S", bound=_Logged)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
"""The format of every service's log lines."""


def run_service(load: Callable[[], S], serve: Callable[[S], Coroutine[Any, Any, int]]) -> int:
    """A service's ``main``: its settings from ``load``, logging at their level, then
    ``serve`` until it returns the exit code. A bad setting, or one found only at
    start-up (a port already in use), prints ``error: ...`` on stderr and exits 2."""
    try:
        settings = load()
    except SettingsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format=LOG_FORMAT)
    try:
        return asyncio.run(serve(settings))
    except SettingsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def bind_error(setting: str, port: int, address: str, reason: str) -> SettingsError:
    """The error of a port that cannot be bound: one line naming the setting."""
    return SettingsError(f"setting {setting}={port}: cannot listen on {address}: {reason}")


def _transport(tls: ServerTls | None) -> str:
    if tls is None:
        return "plaintext"
    return "TLS, client certificates required" if tls.client_ca_file else "TLS"


async def wait_for_signal(
    signals: Iterable[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
) -> signal.Signals:
    """Returns the first of ``signals`` the process receives (handlers removed after)."""
    loop = asyncio.get_running_loop()
    received: asyncio.Future[signal.Signals] = loop.create_future()
    sigs = list(signals)

    def deliver(sig: signal.Signals) -> None:
        if not received.done():
            received.set_result(sig)

    for sig in sigs:
        loop.add_signal_handler(sig, deliver, sig)
    try:
        return await received
    finally:
        for sig in sigs:
            loop.remove_signal_handler(sig)
