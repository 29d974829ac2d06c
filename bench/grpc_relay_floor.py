"""The least a grpc.aio proxy can do per message: a reference point for the router.

A bidirectional relay with nothing else in it: every call on any method is
opened on the backend with the same method, the client's request stream is
handed to that call as it is, and the backend's responses are yielded back; the
messages stay raw bytes (no protobuf parsing), there is no routing, admission,
audio buffering, failover or metrics. Whatever CPU this costs per message is
the floor of any proxy built on grpc.aio in Python, the router included.

    python -m bench.grpc_relay_floor --backend 127.0.0.1:50051 [--port 0]

Prints ``PORT <n>`` once serving; stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator
from typing import Any

import grpc


class _Relay(grpc.GenericRpcHandler):
    """Relays every streaming call to the same method on ``channel``."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any]:
        method = handler_call_details.method
        channel = self._channel

        async def relay(
            requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
        ) -> AsyncIterator[bytes]:
            upstream: grpc.aio.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(
                method
            )
            async for response in upstream(requests):
                yield response

        return grpc.stream_stream_rpc_method_handler(relay)


async def serve(backend: str, port: int) -> None:
    """Serves until SIGTERM or SIGINT."""
    async with grpc.aio.insecure_channel(backend) as channel:
        server = grpc.aio.server(handlers=[_Relay(channel)])
        bound = server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        print(f"PORT {bound}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await server.stop(grace=1.0)


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", required=True, help="host:port of the backend")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(serve(args.backend, args.port))


if __name__ == "__main__":
    main()
