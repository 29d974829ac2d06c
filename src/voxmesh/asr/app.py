"""Entry point of an ASR instance (asr_small, asr_large): wiring only.

Start-up: load and warm the model, start the server (health NOT_SERVING),
report SERVING, register for discovery, print one ``VOXMESH_READY {json}``
line for launchers. Shutdown on SIGTERM/SIGINT, in this order: stop taking
streams (DRAINING, health NOT_SERVING), let the active streams finish (up to
``drain_timeout``) while discovery marks the instance draining, deregister,
stop the server, exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry

from voxmesh.asr.decoder import WhisperDecoder, WhisperOptions
from voxmesh.asr.instance import AsrInstance, InstanceIdentity
from voxmesh.asr.metrics import AsrMetrics
from voxmesh.asr.models import resolve_model
from voxmesh.asr.scheduler import SchedulerOptions
from voxmesh.asr.servicer import RecognizerServicer, TelemetryServicer
from voxmesh.asr.session import SessionOptions
from voxmesh.asr.settings import AsrSettings
from voxmesh.asr.vad import EndpointerOptions
from voxmesh.discovery import InstanceInfo, Registrar
from voxmesh.mesh.process import announce_ready
from voxmesh.rpc.server import (
    DEFAULT_MAX_MESSAGE_BYTES,
    ServerOptions,
    ServiceServer,
    run_service,
    wait_for_signal,
)
from voxmesh.settings import load
from voxmesh.stt.v1 import stt_pb2, stt_pb2_grpc
from voxmesh.telemetry import GpuSampler

__all__ = ["drain", "main", "make_registrar", "serve"]

logger = logging.getLogger(__name__)


class _NoRegistrar:
    """Discovery off (an instance addressed directly)."""

    async def register(self, info: InstanceInfo) -> None:
        del info

    async def set_draining(self) -> None:
        return None

    async def deregister(self) -> None:
        return None


def make_registrar(settings: AsrSettings) -> Registrar:
    """The discovery backend the settings name."""
    if settings.discovery == "file":
        from voxmesh.discovery.file import FileRegistrar

        return FileRegistrar(settings.registry_dir)
    if settings.discovery == "consul":
        from voxmesh.discovery.consul import ConsulRegistrar, PyConsulApi
        from voxmesh.discovery.consul_address import parse_consul_address

        agent = parse_consul_address("consul_addr", settings.consul_addr)
        return ConsulRegistrar(
            PyConsulApi.connect(agent.host, agent.port, agent.scheme),
            check_interval=settings.consul_check_interval,
            deregister_after=settings.consul_deregister_after,
            drain_timeout=settings.drain_timeout,
        )
    return _NoRegistrar()


async def serve(
    settings: AsrSettings,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[dict[str, Any]], None] | None = None,
) -> int:
    """Runs an instance until ``stop`` is set or a signal arrives; returns the exit code.

    ``on_ready`` receives the ready record (also printed as ``VOXMESH_READY``).
    """
    registrar = make_registrar(settings)  # a bad discovery setting fails before the model loads
    model_dir = resolve_model(settings.model)
    decoder = WhisperDecoder(
        model_dir,
        settings.model,
        WhisperOptions(
            device=settings.device,
            compute_type=settings.compute_type,
            cpu_threads=settings.cpu_threads,
            beam_size=settings.beam_size,
            final_beam_size=settings.final_beam_size,
        ),
    )
    warm = await asyncio.to_thread(decoder.warm_up)
    gpu = GpuSampler()
    identity = InstanceIdentity(
        instance_id=settings.resolved_instance_id(),
        pool=settings.pool,
        model=settings.model,
        capacity_class=settings.capacity_class,
        region=settings.region,
        gpu_type=settings.gpu_type or gpu.gpu_type(),
    )
    metrics = AsrMetrics.create(CollectorRegistry())
    instance = AsrInstance(
        identity,
        decoder,
        SchedulerOptions(
            max_batch=settings.max_batch or (8 if decoder.device == "cuda" else 1),
            max_wait=settings.max_batch_wait_ms / 1000,
            prioritise=settings.prioritise,
        ),
        SessionOptions(
            endpointer=EndpointerOptions(min_silence=settings.min_silence),
            interim_interval=settings.interim_interval,
            speculative_pause=settings.speculative_pause,
            speculative_pause_idle=settings.speculative_pause_idle,
            adaptive=settings.adaptive_interims,
            max_utterance=settings.max_utterance,
            max_stream=settings.max_stream_seconds,
        ),
        max_streams=settings.max_streams,
        retry_after=settings.retry_after,
        metrics=metrics,
        gpu=gpu,
        last_resort_min_drain=settings.last_resort_min_drain,
    )
    server = ServiceServer(
        ServerOptions(
            host=settings.host,
            port=settings.port,
            metrics_port=None if settings.metrics_port < 0 else settings.metrics_port,
            # Whatever a router forwards (up to its own limit) reaches the handler,
            # whose size check answers INVALID_ARGUMENT: gRPC's own refusal is a
            # RESOURCE_EXHAUSTED without a retry hint.
            max_message_bytes=max(settings.max_unary_bytes, DEFAULT_MAX_MESSAGE_BYTES) + (1 << 20),
        ),
        metrics.registry,
    )
    stopping = asyncio.Event()
    recognizer = RecognizerServicer(
        instance,
        max_chunk_bytes=settings.max_chunk_bytes,
        max_unary_bytes=settings.max_unary_bytes,
        max_unary_seconds=settings.max_unary_seconds,
        idle_timeout=settings.idle_timeout,
    )
    server.add_service(
        lambda s: stt_pb2_grpc.add_RecognizerServiceServicer_to_server(recognizer, s),
        stt_pb2.DESCRIPTOR.services_by_name["RecognizerService"].full_name,
    )
    telemetry = TelemetryServicer(instance, stopping)
    server.add_service(
        lambda s: stt_pb2_grpc.add_TelemetryServiceServicer_to_server(telemetry, s),
        stt_pb2.DESCRIPTOR.services_by_name["TelemetryService"].full_name,
    )
    await server.start()
    instance.start()
    await server.set_serving()
    info = InstanceInfo(
        instance_id=identity.instance_id,
        pool=identity.pool,
        model=identity.model,
        address=settings.advertise_host or settings.host,
        port=server.port,
        capacity_class=identity.capacity_class,
        gpu_type=identity.gpu_type,
        region=identity.region,
        max_streams=settings.max_streams,
        metrics_port=server.metrics_port,
    )
    await registrar.register(info)
    ready = {
        "instance_id": identity.instance_id,
        "pool": identity.pool,
        "model": identity.model,
        "port": server.port,
        "metrics_port": server.metrics_port,
        "device": decoder.device,
        "compute_type": decoder.compute_type,
        "warmup_seconds": round(warm, 3),
    }
    announce_ready(ready)
    if on_ready is not None:
        on_ready(ready)
    logger.info("serving %s (%s) on port %d", identity.pool, identity.model, server.port)
    try:
        if stop is None:
            sig = await wait_for_signal()
            logger.info("received %s: draining", sig.name)
        else:
            await stop.wait()
    finally:
        # Each step is taken whatever the discovery backend does: a registry that
        # cannot be written must not cut the streams short or skip the rest.
        instance.begin_drain(settings.drain_timeout)
        await server.set_not_serving()
        drained = await drain(instance.wait_idle, registrar, settings.drain_timeout)
        if not drained:
            logger.warning("drain timeout: %d streams still active are cancelled", instance.active)
        await _despite_errors("deregistering the instance", registrar.deregister())
        stopping.set()
        await server.stop(grace=1.0)
        await instance.shutdown()
    return 0


async def drain(
    wait_idle: Callable[[float], Awaitable[bool]], registrar: Registrar, timeout: float
) -> bool:
    """Gives the active streams ``timeout`` s from now to finish (``wait_idle``) while
    discovery marks the instance draining beside them, so a slow registry takes none
    of the drain; returns once both are done, True if every stream finished. (The
    Consul registrar waits a few seconds at most for its agent.)"""
    marking = asyncio.create_task(
        _despite_errors("marking the instance draining", registrar.set_draining())
    )
    try:
        return await wait_idle(timeout)
    finally:
        await marking


async def _despite_errors(what: str, step: Awaitable[None]) -> None:
    """Awaits one step of the drain; an error is logged, not raised."""
    try:
        await step
    except Exception:
        logger.exception("%s failed; draining on", what)


def main(
    defaults: Mapping[str, Any],
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    """Parses settings (``defaults`` < env < flags) and serves."""
    return run_service(
        lambda: load(
            AsrSettings,
            prefix="VOXMESH_ASR",
            defaults=defaults,
            argv=sys.argv[1:] if argv is None else argv,
            env=os.environ if env is None else env,
        ),
        serve,
    )
