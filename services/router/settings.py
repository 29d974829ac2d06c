"""The router's settings: one frozen dataclass, built once in the entry point.

Every field can be set by a flag (``--queue-max-wait-s``) or an environment
variable (``VOXMESH_ROUTER_QUEUE_MAX_WAIT_S``); see :func:`voxmesh.settings.load`.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from voxmesh.errors import SettingsError
from voxmesh.rpc.tls import ServerTls
from voxmesh.settings import load, pairs, setting

__all__ = ["DATA_PATHS", "DEFAULT_DATAPLANE_BIN", "ENV_PREFIX", "RouterSettings", "load_settings"]

ENV_PREFIX = "VOXMESH_ROUTER"
MAX_FAILOVER_CONTEXT_S = 29.0
"""Longest ``failover_context_s``: an instance takes a lead-in of at most 29.5 s."""

AUTO_POLICIES = ("priority", "language")
DISCOVERY_BACKENDS = ("file", "consul")
DATA_PATHS = ("python", "native")
DEFAULT_DATAPLANE_BIN = str(Path(__file__).resolve().parents[2] / ".tools/bin/voxmesh-dataplane")
"""Where ``make dataplane`` puts the native data path: ``.tools/bin`` under the repo root."""


@dataclass(frozen=True)
class RouterSettings:
    """Settings of the voxmesh router."""

    host: str = setting("127.0.0.1", "interface the gRPC server binds (0.0.0.0 in a cluster)")
    """Interface the gRPC server binds."""
    port: int = setting(50051, "gRPC port of the public endpoint (0 picks a free one)")
    """gRPC port of the public endpoint; 0 picks a free one."""
    metrics_port: int = setting(9101, "Prometheus HTTP port (0 picks a free one, -1 disables)")
    """Prometheus HTTP port; 0 picks a free one, -1 disables it."""
    tls_cert_file: str = setting("", "PEM certificate chain: serve the public endpoint over TLS")
    """PEM certificate chain of the public endpoint; with ``tls_key_file`` it serves TLS
    only. The files are re-read when they change (rotation without a restart)."""
    tls_key_file: str = setting("", "PEM private key of tls_cert_file")
    """PEM private key of ``tls_cert_file``."""
    tls_client_ca_file: str = setting("", "PEM CA bundle: require client certificates (mTLS)")
    """PEM CA bundle; set, clients must present a certificate that chains to it (mutual
    TLS). Instances, the autoscaler and Consul are reached in plaintext: see docs/router.md."""
    data_path: str = setting("native", "what relays the streams: native (dataplane/) or python")
    """What relays the streams. ``native`` (the default): the Go data path (``dataplane/``,
    the ``dataplane_bin`` process this one starts) serves the public endpoint with the TLS
    settings above and relays the streams; this process decides where each goes, over a
    private Unix socket (see docs/router.md, "The native data path"). ``python``: this
    process serves the public endpoint and relays every stream itself (no Go build
    needed; about a third of the streams per core)."""
    dataplane_bin: str = setting(
        DEFAULT_DATAPLANE_BIN, "the native data path's executable (data_path=native)"
    )
    """The native data path's executable, built by ``make dataplane``."""
    control_batch_wait_s: float = setting(
        0.002,
        "after the native data path sends this process a batch of stream events, how long "
        "(s) it gathers the next (0: each at once)",
    )
    """How long the native data path gathers its streams' events for this process after
    sending a batch (``--control-batch-wait``): an event after a quiet spell goes at once,
    and in a burst of new streams each batch carries many, so this process reads one
    message for many streams rather than one each. A stream's set-up waits this much at
    most per event; 0 sends every event at once (about twice this process's CPU per new
    stream in bursts of 500 a second: docs/router.md)."""
    instance_id: str = setting("", "id in the router's telemetry (default router-<hostname>)")
    """Identifier of this router in its telemetry; ``router-<hostname>`` when empty."""
    region: str = setting("", "preferred region of instances (empty: no preference)")
    """Region preferred when choosing instances; others take the spill-over."""

    discovery: str = setting("file", "discovery backend: file or consul")
    """Discovery backend: ``file`` (single machine) or ``consul``."""
    registry_dir: str = setting(".run/registry", "directory of the file registry")
    """Directory of the file registry (``discovery=file``)."""
    registry_ttl_s: float = setting(10.0, "file registry entries older than this are stale")
    """Age after which a file registry entry without heartbeat counts as gone."""
    registry_poll_s: float = setting(0.5, "how often the file registry is re-read")
    """Poll interval of the file registry."""
    consul_address: str = setting("http://127.0.0.1:8500", "Consul agent HTTP address")
    """HTTP address of the Consul agent (``discovery=consul``)."""

    pools: tuple[str, ...] = setting(("asr_small", "asr_large"), "pools the router serves")
    """Pools the router serves; one admission queue and one watch each."""
    models: tuple[str, ...] = setting(
        ("tiny.en=asr_small", "base=asr_large"), "model=pool aliases besides discovered ones"
    )
    """``model=pool`` names accepted even while no instance of the pool runs."""
    auto_policy: str = setting("priority", "policy for model 'auto': priority or language")
    """How ``auto`` (or an empty model) picks a pool: ``priority`` or ``language``."""
    auto_realtime_pool: str = setting("asr_small", "pool of realtime streams under 'auto'")
    """Pool of realtime work under the ``priority`` policy (and language fallback)."""
    auto_batch_pool: str = setting("asr_large", "pool of batch streams under 'auto'")
    """Pool of batch work under the ``priority`` policy (and language fallback)."""
    auto_language_pools: tuple[str, ...] = setting(
        ("en=asr_small", "*=asr_large"), "language=pool rules of the language policy"
    )
    """``language=pool`` rules of the ``language`` policy; ``*`` matches any language."""
    gpu_preference: tuple[str, ...] = setting((), "GPU types in order of preference (others last)")
    """GPU types in order of preference; unlisted types take the spill-over."""

    queue_max_streams: int = setting(64, "most streams waiting per pool")
    """Most streams waiting in one pool's admission queue; beyond, rejected at once."""
    queue_max_bytes: int = setting(1 << 20, "audio bytes buffered per waiting stream")
    """Audio bytes buffered per waiting stream; beyond, the client is not read."""
    queue_max_wait_s: float = setting(10.0, "longest wait in the queue before rejection")
    """Longest wait for an instance before ``RESOURCE_EXHAUSTED``."""
    queue_retry_after_s: float = setting(2.0, "retry hint sent with rejections")
    """Delay suggested to rejected clients (``RetryInfo``)."""

    max_streams: int = setting(0, "most streams this router serves at once (0: no limit)")
    """The router's own admission limit (queued streams included); beyond, new streams get
    ``RESOURCE_EXHAUSTED`` so an overloaded router sheds load instead of slowing every
    stream. One core relays about 250-300 real-time streams of 100 ms chunks
    (``bench/router_overhead.py``); 0 disables the limit."""
    relay_buffer_bytes: int = setting(64 << 10, "unsent audio bytes per relayed stream")
    """Audio bytes read from a client but not yet sent to its instance (2 s of 16 kHz
    LINEAR16); beyond, reading pauses, so an overloaded instance or router slows the client
    instead of growing a backlog."""
    replay_max_bytes: int = setting(16 << 20, "audio kept per stream for failover replay")
    """Audio kept per stream for replay on failover; a stream past it cannot fail over."""
    max_chunk_bytes: int = setting(1 << 20, "largest audio chunk accepted (as the instances)")
    """Largest audio chunk; larger ones fail with ``RESOURCE_EXHAUSTED`` (the ASR default)."""
    idle_timeout_s: float = setting(
        30.0,
        "longest wait (s) for a client's next message while no instance waits for it "
        "(its config; more audio after a failover), and for a client to take a result; "
        "more is OUT_OF_RANGE",
    )
    """How long a stream may wait for its client while the router alone holds it: for its
    config, and, after a failover that left every byte with its final, for more audio or
    the half-close; and how long a result may wait for the client to take it (a client
    that keeps its stream open but stopped reading). Beyond, OUT_OF_RANGE, as an instance
    answers a client that stalls (its ``idle_timeout``): a client that stalls or vanished
    without a reset must not hold a router stream and its instance's (nor hold up a
    drain) forever."""
    max_failovers: int = setting(3, "most failovers of one stream")
    """Most times one stream moves to another instance before it fails with UNAVAILABLE."""
    failover_context_s: float = setting(
        15.0, "earlier finals' audio replayed in front on failover, as context"
    )
    """How far back the final utterances a stream's replay starts with reach (context only,
    as the instances' own ``context``): the first utterance after a failover is then
    decoded behind the same audio as on the instance that failed. Costs this much audio
    per stream in memory (32 KB a second at 16 kHz); 0 replays from the last final only."""

    telemetry_interval_s: float = setting(0.5, "interval of instance telemetry subscriptions")
    """Interval asked of each instance's telemetry stream (the router's own telemetry
    defaults to 1 s, or what its subscriber asks)."""
    drain_timeout_s: float = setting(30.0, "time active streams get to finish on SIGTERM")
    """On SIGTERM, how long active streams may run before they are cancelled."""
    last_resort: bool = setting(
        False, "send a stream to a draining instance when no accepting one has room"
    )
    """Off (the default), a draining instance gets no new stream: its active streams finish
    there and new ones queue. On, when no accepting instance of a pool has room, a new stream
    goes to a draining instance whose drain has at least ``last_resort_min_drain_s`` left
    instead of waiting in the queue (and fails over if it outlives the drain). Meant for
    preemptible pools with a long notice: see nomad/README.md and docs/autoscaling.md."""
    last_resort_min_drain_s: float = setting(
        30.0, "drain time an instance must have left to get a last-resort stream"
    )
    """With ``last_resort``: the drain an instance must still have, by its telemetry (the
    instance applies its own limit too)."""
    log_level: str = setting("INFO", "log level")
    """Log level of the entry point."""

    @property
    def router_id(self) -> str:
        """The id this router reports in its telemetry."""
        return self.instance_id or f"router-{socket.gethostname()}"

    def model_aliases(self) -> dict[str, str]:
        """``models`` as a mapping model -> pool."""
        return pairs("models", self.models)

    def language_pools(self) -> dict[str, str]:
        """``auto_language_pools`` as a mapping language -> pool."""
        return pairs("auto_language_pools", self.auto_language_pools)

    @property
    def tls(self) -> ServerTls | None:
        """The public endpoint's TLS files, checked (None: plaintext)."""
        return ServerTls.from_settings(
            self.tls_cert_file, self.tls_key_file, self.tls_client_ca_file
        )

    def validate(self) -> None:
        """Raises :class:`SettingsError` naming the first invalid setting."""
        _ = self.tls
        if self.discovery not in DISCOVERY_BACKENDS:
            raise SettingsError(f"setting discovery={self.discovery!r}: expected file or consul")
        if self.data_path not in DATA_PATHS:
            raise SettingsError(f"setting data_path={self.data_path!r}: expected python or native")
        if self.data_path == "native" and not _executable(self.dataplane_bin):
            raise SettingsError(
                f"setting dataplane_bin={self.dataplane_bin!r}: no executable there, and "
                "data_path=native runs the native data path from it: build it with "
                "`make dataplane`"
            )
        if self.auto_policy not in AUTO_POLICIES:
            raise SettingsError(
                f"setting auto_policy={self.auto_policy!r}: expected priority or language"
            )
        if not self.pools:
            raise SettingsError("setting pools=(): at least one pool is needed")
        targets = {
            "auto_realtime_pool": self.auto_realtime_pool,
            "auto_batch_pool": self.auto_batch_pool,
        }
        targets.update({f"models[{k}]": v for k, v in self.model_aliases().items()})
        targets.update({f"auto_language_pools[{k}]": v for k, v in self.language_pools().items()})
        for name, pool in targets.items():
            if pool not in self.pools:
                raise SettingsError(f"setting {name}={pool!r}: not one of pools {self.pools}")
        positive = {
            "queue_max_bytes": self.queue_max_bytes,
            "relay_buffer_bytes": self.relay_buffer_bytes,
            "max_chunk_bytes": self.max_chunk_bytes,
            "telemetry_interval_s": self.telemetry_interval_s,
            "queue_max_wait_s": self.queue_max_wait_s,
            "idle_timeout_s": self.idle_timeout_s,
        }
        for name, value in positive.items():
            if value <= 0:
                raise SettingsError(f"setting {name}={value!r}: must be positive")
        non_negative = {
            "queue_max_streams": self.queue_max_streams,
            "max_streams": self.max_streams,
            "replay_max_bytes": self.replay_max_bytes,
            "max_failovers": self.max_failovers,
            "failover_context_s": self.failover_context_s,
            "queue_retry_after_s": self.queue_retry_after_s,
            "drain_timeout_s": self.drain_timeout_s,
            "last_resort_min_drain_s": self.last_resort_min_drain_s,
            "control_batch_wait_s": self.control_batch_wait_s,
        }
        for name, value in non_negative.items():
            if value < 0:
                raise SettingsError(f"setting {name}={value!r}: must not be negative")
        if self.telemetry_interval_s < 0.1:
            raise SettingsError(
                f"setting telemetry_interval_s={self.telemetry_interval_s!r}: at least 0.1"
            )
        if self.failover_context_s > MAX_FAILOVER_CONTEXT_S:
            # Instances refuse a lead-in longer than Whisper's window: every failover
            # would fail with INVALID_ARGUMENT.
            raise SettingsError(
                f"setting failover_context_s={self.failover_context_s!r}: at most "
                f"{MAX_FAILOVER_CONTEXT_S:g} (a lead-in must fit Whisper's 30 s window)"
            )


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def load_settings(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> RouterSettings:
    """Builds the settings from flags and environment (flags win)."""
    return load(
        RouterSettings,
        prefix=ENV_PREFIX,
        argv=argv,
        env=env,
        description="voxmesh router: one endpoint in front of the ASR pools",
    )
