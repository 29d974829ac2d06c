"""A real gRPC server that only serves grpc.health.v1: what Consul's gRPC check probes."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

__all__ = ["HealthServer", "health_server"]


class HealthServer:
    """The server, its health servicer and the port it listens on."""

    def __init__(self, server: grpc.aio.Server, health: health_aio.HealthServicer, port: int):
        self.server, self.health, self.port = server, health, port

    async def set(self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType) -> None:
        """Sets the overall ("") service status the check sees."""
        await self.health.set("", status)


@contextlib.asynccontextmanager
async def health_server() -> AsyncIterator[HealthServer]:
    """A started health-only server on a free local port, stopped on exit."""
    server = grpc.aio.server()
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield HealthServer(server, health, port)
    finally:
        await server.stop(0)
