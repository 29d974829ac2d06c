"""TLS on the public endpoint, with real gRPC: the router serves only TLS when configured,
requires client certificates with a client CA, and picks up a rotated certificate for new
connections without a restart. Third-party check: grpcurl over TLS, through reflection."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from services.autoscaler.settings import AutoscalerSettings
from services.autoscaler.signals.telemetry import StaticWatcher, TelemetrySource
from tests.conditions import wait_until_async
from tests.integration.router_harness import Mesh, mesh
from tests.integration.test_reflection_grpcurl import GRPCURL
from tests.tls_certs import Authority, Pair
from voxmesh.client.client import RecognizerClient
from voxmesh.rpc.server import ServerOptions, ServiceServer
from voxmesh.rpc.tls import ClientTls, ServerTls


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Authority | Pair]:
    directory = tmp_path_factory.mktemp("pki")
    ca = Authority(directory, "ca")
    next_ca = Authority(directory, "next-ca")
    rogue_ca = Authority(directory, "rogue-ca")
    return {
        "ca": ca,
        "next_ca": next_ca,
        "server": ca.issue("server"),
        "next_server": next_ca.issue("next-server"),
        "client": ca.issue("client", client=True),
        "rogue_client": rogue_ca.issue("rogue-client", client=True),
    }


def _pair(pki: dict[str, Authority | Pair], name: str) -> Pair:
    pair = pki[name]
    assert isinstance(pair, Pair)
    return pair


def _ca(pki: dict[str, Authority | Pair], name: str) -> Path:
    ca = pki[name]
    assert isinstance(ca, Authority)
    return ca.cert


@pytest.fixture
async def server(
    pki: dict[str, Authority | Pair], tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[ServiceServer]:
    """A server with health only, on copies of the server pair (so tests may rotate them)."""
    server_pair = _pair(pki, "server")
    cert, key = tmp_path / "tls.pem", tmp_path / "tls.key"
    shutil.copyfile(server_pair.cert, cert)
    shutil.copyfile(server_pair.key, key)
    client_ca = _ca(pki, "ca") if getattr(request, "param", "") == "mtls" else None
    srv = ServiceServer(
        ServerOptions(metrics_port=None, tls=ServerTls(cert, key, client_ca)), CollectorRegistry()
    )
    await srv.start()
    await srv.set_serving()
    try:
        yield srv
    finally:
        await srv.stop(0)


async def _check(port: int, credentials: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    """Health.Check over a new channel: OK or the failure's status."""
    target = f"localhost:{port}"
    if credentials is None:
        channel = grpc.aio.insecure_channel(target)
    else:
        channel = grpc.aio.secure_channel(target, credentials)
    async with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            answer = await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
        except grpc.aio.AioRpcError as err:
            return err.code()
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    return grpc.StatusCode.OK


async def test_tls_endpoint_serves_tls_clients_only(
    server: ServiceServer, pki: dict[str, Authority | Pair]
) -> None:
    trusted = ClientTls(ca_file=_ca(pki, "ca")).credentials()
    assert await _check(server.port, trusted) is grpc.StatusCode.OK
    assert await _check(server.port, None) is grpc.StatusCode.UNAVAILABLE
    untrusted = ClientTls(ca_file=_ca(pki, "next_ca")).credentials()
    assert await _check(server.port, untrusted) is grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("server", ["mtls"], indirect=True)
async def test_client_ca_requires_a_client_certificate_from_that_ca(
    server: ServiceServer, pki: dict[str, Authority | Pair]
) -> None:
    ca = _ca(pki, "ca")
    client, rogue = _pair(pki, "client"), _pair(pki, "rogue_client")
    anonymous = ClientTls(ca_file=ca).credentials()
    assert await _check(server.port, anonymous) is grpc.StatusCode.UNAVAILABLE
    wrong = ClientTls(ca_file=ca, cert_file=rogue.cert, key_file=rogue.key).credentials()
    assert await _check(server.port, wrong) is grpc.StatusCode.UNAVAILABLE
    right = ClientTls(ca_file=ca, cert_file=client.cert, key_file=client.key).credentials()
    assert await _check(server.port, right) is grpc.StatusCode.OK


async def test_rotated_certificate_serves_new_connections_and_old_ones_carry_on(
    server: ServiceServer, pki: dict[str, Authority | Pair], tmp_path: Path
) -> None:
    old_trust = ClientTls(ca_file=_ca(pki, "ca")).credentials()
    new_trust = ClientTls(ca_file=_ca(pki, "next_ca")).credentials()
    async with grpc.aio.secure_channel(f"localhost:{server.port}", old_trust) as kept:
        stub = health_pb2_grpc.HealthStub(kept)
        await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)

        rotated = _pair(pki, "next_server")
        for source, target in ((rotated.key, "tls.key"), (rotated.cert, "tls.pem")):
            staged = tmp_path / f"{target}.new"
            shutil.copyfile(source, staged)
            later = os.stat(tmp_path / target).st_mtime + 10
            os.utime(staged, (later, later))
            os.replace(staged, tmp_path / target)  # as deployment tools write: atomically

        assert await _check(server.port, new_trust) is grpc.StatusCode.OK
        assert await _check(server.port, old_trust) is grpc.StatusCode.UNAVAILABLE
        answer = await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


@contextlib.asynccontextmanager
async def _mtls_mesh(pki: dict[str, Authority | Pair]) -> AsyncIterator[Mesh]:
    """A router serving mutual TLS (the server pair, clients of the CA) and one fake
    instance, small-1."""
    server_pair = _pair(pki, "server")
    async with mesh(
        host="localhost",
        tls_cert_file=str(server_pair.cert),
        tls_key_file=str(server_pair.key),
        tls_client_ca_file=str(_ca(pki, "ca")),
    ) as the_mesh:
        await the_mesh.add("small-1")
        yield the_mesh


async def test_router_over_mutual_tls_with_the_client_and_grpcurl(
    pki: dict[str, Authority | Pair],
) -> None:
    ca, client = _ca(pki, "ca"), _pair(pki, "client")
    async with _mtls_mesh(pki) as the_mesh:
        tls = ClientTls(ca_file=ca, cert_file=client.cert, key_file=client.key)
        async with RecognizerClient(the_mesh.router.target, tls=tls) as client_api:
            snapshot = await client_api.telemetry()
        assert [row.instance_id for row in snapshot.instances] == ["small-1"]

        grpcurl = str(GRPCURL) if GRPCURL.exists() else shutil.which("grpcurl")
        if grpcurl is None:
            pytest.fail("grpcurl is not installed: run `make install`")
        target = the_mesh.router.target
        client_flags = ["-cert", str(client.cert), "-key", str(client.key)]
        code, out, err = await _run(grpcurl, "-cacert", str(ca), *client_flags, target, "list")
        assert code == 0, err
        assert "voxmesh.stt.v1.RecognizerService" in out.split()
        code, out, err = await _run(
            grpcurl, "-connect-timeout", "3", "-cacert", str(ca), target, "list"
        )
        assert code != 0  # the handshake fails: no client certificate
        assert "Failed to dial" in err
        assert "RecognizerService" not in out


async def test_the_autoscaler_reads_a_tls_router(pki: dict[str, Authority | Pair]) -> None:
    """It subscribed to routers in plaintext only: with TLS on the router, it heard
    nothing from it, held every pool and never scaled from zero."""
    ca, client = _ca(pki, "ca"), _pair(pki, "client")
    async with _mtls_mesh(pki) as the_mesh:
        settings = AutoscalerSettings(
            routers=(the_mesh.router.target,),
            router_tls_ca_file=str(ca),
            router_tls_cert_file=str(client.cert),
            router_tls_key_file=str(client.key),
        )
        source = TelemetrySource(
            ["asr_small"],
            the_mesh.discovery.watcher,
            StaticWatcher(settings.router_targets),
            interval_s=0.1,
            router_tls=settings.router_client_tls,
        )
        running = asyncio.create_task(source.run())
        try:
            await wait_until_async(lambda: not source.read("asr_small").missing, timeout=10)
        finally:
            await source.shutdown()
            await asyncio.wait_for(running, 5)
        assert AutoscalerSettings(routers=(the_mesh.router.target,)).router_client_tls is None


async def _run(*argv: str) -> tuple[int, str, str]:
    """Runs a command without blocking the loop the router serves on."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
