"""Settings of an ASR instance (asr_small and asr_large differ only in defaults)."""

from __future__ import annotations

import ipaddress
import socket
import uuid
from dataclasses import dataclass

from voxmesh.errors import SettingsError
from voxmesh.settings import setting

__all__ = ["AsrSettings"]


@dataclass(frozen=True)
class AsrSettings:
    """Everything an ASR instance is configured with (env VOXMESH_ASR_*, or flags)."""

    pool: str = setting("asr_small", "pool this instance serves (asr_small, asr_large)")
    model: str = setting("tiny.en", "model name (tiny.en, base) or CTranslate2 Whisper directory")
    instance_id: str = setting("", "unique instance id (default: <pool>-<host>-<random>)")
    host: str = setting("127.0.0.1", "interface to listen on")
    advertise_host: str = setting("", "address others reach this instance at (default: host)")
    port: int = setting(0, "gRPC port (0: any free port)")
    metrics_port: int = setting(0, "Prometheus metrics port (0: any free port, -1: off)")
    device: str = setting("cpu", "cpu, cuda or auto")
    compute_type: str = setting(
        "default", "CTranslate2 compute type (default: int8 CPU, float16 GPU)"
    )
    cpu_threads: int = setting(0, "CTranslate2 intra-op threads (0: its default)")
    beam_size: int = setting(1, "beam size of interim decodes (1: greedy)")
    final_beam_size: int = setting(
        5,
        "beam size of final decodes while no other decode work waits (greedy under load);"
        " 1: always greedy, lower latency on CPU (see docs/asr.md, Accuracy)",
    )
    max_streams: int = setting(
        3,
        "admission limit: concurrent streams (calibrate with bench/asr_density.py; the "
        "default is tiny.en's measured density on 2 CPU cores)",
    )
    max_batch: int = setting(
        0,
        "most decode jobs per model call (0: 1 on CPU, where a batch costs the sum of its "
        "jobs and holds the first one back; 8 on GPU)",
    )
    max_batch_wait_ms: float = setting(0.0, "wait for a fuller batch (ms); 0 on CPU, ~5 on GPU")
    interim_interval: float = setting(1.0, "seconds of new speech between interim decodes")
    adaptive_interims: bool = setting(
        True,
        "shed interim decodes under load (none while decodes wait for the model, rarer the "
        "busier it was, withdrawn if a pause begins first)",
    )
    prioritise: bool = setting(True, "decode realtime before batch and finals before interims")
    speculative_pause: float = setting(
        0.2,
        "pause (s) after which an utterance is decoded ahead; if the pause ends it, that "
        "decode is the final (the least silence a final is decoded with); 0.1 lowers one "
        "stream's final latency and costs density (see docs/asr.md)",
    )
    speculative_pause_idle: float = setting(
        0.1,
        "speculative_pause while the model is idle (no decode waits, busy under half of "
        "the last 5 s; with adaptive_interims), if shorter: lower final latency from spare "
        "model time",
    )
    min_silence: float = setting(0.45, "pause (s) that ends an utterance")
    max_utterance: float = setting(
        25.0, "longest utterance (s) before it is cut at a committed word"
    )
    max_stream_seconds: float = setting(14400.0, "longest stream (s); more is OUT_OF_RANGE")
    max_chunk_bytes: int = setting(
        1 << 20, "largest audio chunk (bytes); more is RESOURCE_EXHAUSTED"
    )
    max_unary_bytes: int = setting(16 << 20, "largest Recognize request audio (bytes)")
    idle_timeout: float = setting(
        30.0,
        "longest wait (s) for a stream's next message (its config, then audio); more is "
        "OUT_OF_RANGE: a client that stalls or vanished frees its slot; also the longest a "
        "result may wait for the client to read it before the stream ends",
    )
    max_unary_seconds: float = setting(600.0, "longest Recognize request audio (s)")
    retry_after: float = setting(2.0, "retry hint (s) sent with RESOURCE_EXHAUSTED")
    drain_timeout: float = setting(30.0, "seconds active streams get to finish on SIGTERM")
    last_resort_min_drain: float = setting(
        30.0,
        "while draining, a stream the router sends as a last resort (no accepting instance "
        "had room) is still taken while at least this many seconds of the drain are left",
    )
    discovery: str = setting("none", "none, file or consul")
    registry_dir: str = setting(".run/registry", "file discovery directory")
    consul_addr: str = setting("http://127.0.0.1:8500", "Consul agent HTTP address")
    consul_check_interval: str = setting("5s", "interval of the gRPC health check Consul runs")
    consul_deregister_after: str = setting(
        "1m", "Consul removes a crashed instance after this (at least drain_timeout + 30 s)"
    )
    capacity_class: str = setting("on-demand", "on-demand or preemptible")
    region: str = setting("local", "region reported to discovery")
    gpu_type: str = setting("", "GPU type reported to discovery (default: from NVML, or cpu)")
    log_level: str = setting("INFO", "logging level")

    def validate(self) -> None:
        """Raises SettingsError naming the bad setting."""
        positive = {
            "max_streams": self.max_streams,
            "max_chunk_bytes": self.max_chunk_bytes,
            "max_unary_bytes": self.max_unary_bytes,
            "beam_size": self.beam_size,
            "final_beam_size": self.final_beam_size,
        }
        for name, value in positive.items():
            if value < 1:
                raise SettingsError(f"setting {name}={value}: must be at least 1")
        if self.max_batch < 0:
            raise SettingsError(f"setting max_batch={self.max_batch}: must be 0 (auto) or more")
        seconds = {  # a stream is held to these: 0 would end every stream
            "max_stream_seconds": self.max_stream_seconds,
            "max_unary_seconds": self.max_unary_seconds,
        }
        for name, limit in seconds.items():
            if not limit > 0:
                raise SettingsError(f"setting {name}={limit}: must be > 0")
        not_negative = {
            "cpu_threads": self.cpu_threads,
            "max_batch_wait_ms": self.max_batch_wait_ms,
            "retry_after": self.retry_after,
            "drain_timeout": self.drain_timeout,
            "last_resort_min_drain": self.last_resort_min_drain,
        }
        for name, amount in not_negative.items():
            if not amount >= 0:
                raise SettingsError(f"setting {name}={amount}: must be >= 0")
        if self.discovery not in ("none", "file", "consul"):
            raise SettingsError(
                f"setting discovery={self.discovery!r}: expected none, file or consul"
            )
        if self.discovery != "none" and not self.advertise_host and _unspecified(self.host):
            raise SettingsError(
                f"setting advertise_host is required with host={self.host!r} and "
                f"discovery={self.discovery}: discovery must publish an address others can "
                "reach (Consul refuses an unspecified one)"
            )
        if self.capacity_class not in ("on-demand", "preemptible"):
            raise SettingsError(
                f"setting capacity_class={self.capacity_class!r}: expected on-demand or preemptible"
            )
        if self.idle_timeout <= 0:
            raise SettingsError(f"setting idle_timeout={self.idle_timeout}: must be > 0")
        for name in ("speculative_pause", "speculative_pause_idle"):
            if getattr(self, name) < 0:
                raise SettingsError(f"setting {name}={getattr(self, name)}: must be >= 0")
        if self.min_silence <= 0 or self.interim_interval <= 0 or not 1 <= self.max_utterance <= 29:
            raise SettingsError(
                "settings min_silence and interim_interval must be > 0 and max_utterance "
                f"1 to 29 s (got {self.min_silence}, {self.interim_interval}, "
                f"{self.max_utterance})"
            )

    def resolved_instance_id(self) -> str:
        """The configured id, or a generated one."""
        return self.instance_id or f"{self.pool}-{socket.gethostname()}-{uuid.uuid4().hex[:6]}"


def _unspecified(host: str) -> bool:
    """True for a wildcard listen address (``0.0.0.0``, ``::``, empty)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return not host
