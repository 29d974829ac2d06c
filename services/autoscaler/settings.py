"""The autoscaler's settings: one frozen dataclass, built once in the entry point.

Every field can be set by a flag (``--scale-down-window``) or an environment variable
(``VOXMESH_AUTOSCALER_SCALE_DOWN_WINDOW``); see :func:`voxmesh.settings.load`. Durations are
in seconds. Per-pool values are ``pool=value`` lists (``--on-demand-max asr_small=4``); a
pool without an entry gets the policy's default.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from services.autoscaler.policy import GroupLimits, PoolPolicy
from voxmesh.errors import SettingsError
from voxmesh.rpc.tls import ClientTls
from voxmesh.settings import load, pairs, setting

__all__ = ["ENV_PREFIX", "AutoscalerSettings", "load_settings"]

ENV_PREFIX = "VOXMESH_AUTOSCALER"

_CHOICES = {
    "target": ("local", "nomad"),
    "signals": ("telemetry", "prometheus"),
    "discovery": ("file", "consul"),
    "leader": ("auto", "file", "consul", "none"),
}


@dataclass(frozen=True)
class AutoscalerSettings:
    """Settings of the voxmesh autoscaler."""

    host: str = setting("127.0.0.1", "interface the gRPC server binds (0.0.0.0 in a cluster)")
    """Interface the gRPC control API binds."""
    port: int = setting(50061, "gRPC port of the control API (0 picks a free one)")
    """gRPC port of the control API; 0 picks a free one."""
    metrics_port: int = setting(9102, "Prometheus HTTP port (0 picks a free one, -1 disables)")
    """Prometheus HTTP port; 0 picks a free one, -1 disables it."""
    instance_id: str = setting("", "replica id (default autoscaler-<hostname>-<pid>)")
    """This replica's id: the leader lock's holder name and the status's replica id."""
    log_level: str = setting("INFO", "log level")
    """Log level of the entry point."""
    drain_timeout: float = setting(30.0, "seconds in-flight work gets on SIGTERM")
    """On SIGTERM: how long the decision in flight and open RPCs get; with the local target,
    also each instance's drain timeout (its streams' time to finish)."""

    target: str = setting("local", "scale target: local (processes here) or nomad")
    """``local`` starts instances as processes on this machine; ``nomad`` scales Nomad jobs."""
    dry_run: bool = setting(False, "compute and record decisions but never apply them")
    """Compute and record decisions without applying them."""
    pools: tuple[str, ...] = setting(("asr_small", "asr_large"), "pools to manage")
    """The pools managed, in status order."""
    interval: float = setting(5.0, "seconds between evaluations")
    """Seconds between two evaluations of every pool (the interval docs/autoscaling.md and the
    simulator assume; the local mesh uses 1 s)."""
    cooldown: float = setting(30.0, "after a change settled, seconds before a scale-down")
    """After the target settled a change, how long scale-downs wait (scale-ups never wait)."""
    scaling_timeout: float = setting(300.0, "longest wait for a change to settle")
    """A change not settled after this long stops blocking scale-downs (it is logged)."""
    history: int = setting(100, "decision records kept in memory")
    """Decision records kept for GetStatus and WatchDecisions replays."""

    signals: str = setting("telemetry", "signal source: telemetry (gRPC) or prometheus")
    """``telemetry`` subscribes to every instance and router; ``prometheus`` queries PromQL."""
    discovery: str = setting("file", "discovery backend: file or consul")
    """How instances (and, with Consul, routers) are found."""
    registry_dir: str = setting(".run/registry", "directory of the file registry")
    """Directory of the file registry (``discovery=file``; the local target's instances too)."""
    registry_ttl: float = setting(10.0, "file registry entries older than this are stale")
    """Age after which a file registry entry without heartbeat counts as gone."""
    consul_addr: str = setting("http://127.0.0.1:8500", "Consul agent HTTP address")
    """HTTP address of the Consul agent (discovery and the leader lock)."""
    routers: tuple[str, ...] = setting(
        (), "router gRPC addresses (empty: 127.0.0.1:50051, or discovered with consul)"
    )
    """Routers whose telemetry carries the admission queues. When empty: the
    ``voxmesh-router`` Consul service with ``discovery=consul``, else the local router
    ``127.0.0.1:50051``."""
    router_tls: bool = setting(False, "reach the routers over TLS (system CA roots)")
    """The routers serve TLS (their ``tls_cert_file`` is set): their telemetry is read
    over TLS. Implied by any ``router_tls_*_file``."""
    router_tls_ca_file: str = setting("", "PEM CA bundle to verify the routers' certificates")
    """CA bundle the routers' certificates are verified with (empty: the system roots)."""
    router_tls_cert_file: str = setting("", "PEM client certificate for routers requiring mTLS")
    """Client certificate chain, for routers that require one (``tls_client_ca_file``)."""
    router_tls_key_file: str = setting("", "PEM private key of router_tls_cert_file")
    """Private key of ``router_tls_cert_file``."""
    telemetry_interval: float = setting(0.5, "interval asked of telemetry streams")
    """Interval asked of every telemetry subscription (at least 0.1 s)."""
    prometheus_url: str = setting("http://127.0.0.1:9090", "Prometheus HTTP API base URL")
    """Base URL of the Prometheus server (``signals=prometheus``)."""

    leader: str = setting("auto", "leader lock: auto, file, consul or none")
    """``auto``: a Consul lock with ``discovery=consul``, else a file lock."""
    leader_key: str = setting("voxmesh/autoscaler/leader", "Consul KV key of the leader lock")
    """Consul KV key of the leader lock."""
    leader_file: str = setting(".run/autoscaler.leader", "file of the local leader lock")
    """File locked by the leader in local mode."""
    leader_ttl: float = setting(15.0, "Consul session TTL of the leader lock")
    """TTL of the leader's Consul session (10 s to 86400 s)."""
    leader_retry: float = setting(5.0, "seconds between a standby's tries for the lock")
    """How often a standby tries to take the lock."""

    nomad_addr: str = setting("http://127.0.0.1:4646", "Nomad HTTP API address")
    """Nomad HTTP API address (``target=nomad``); the token comes from ``NOMAD_TOKEN``."""
    nomad_ca_cert: str = setting("", "CA bundle for Nomad's TLS certificate (empty: system)")
    """CA bundle that signs Nomad's certificate; empty uses the system store."""
    nomad_pending_deadline: float = setting(
        300.0, "an allocation pending longer counts as a placement failure"
    )
    """Nomad allocations pending longer than this count as a failed placement."""

    local_asr_args: tuple[str, ...] = setting((), "extra flags of every local instance")
    """Extra flags passed to every instance the local target starts (``--max-streams=2``)."""
    local_log_dir: str = setting(".run/logs", "where the local target writes instance logs")
    """Directory of the local instances' logs."""
    local_preemptible: bool = setting(False, "the local target also runs preemptible groups")
    """Give every pool a preemptible group too (instances marked preemptible); off, the local
    mesh treats everything as on-demand."""
    local_ready_timeout: float = setting(120.0, "longest start-up of a local instance")
    """A local instance not ready after this long counts as a failed start."""
    local_max_instances: int = setting(
        0, "most instances of each local capacity group (0: this machine's CPU count)"
    )
    """On one machine more CPU-bound instances than cores only slow each other down (and
    a rising real-time factor would ask for more): the local target stops there."""

    on_demand_min: tuple[str, ...] = setting((), "pool=count fewest on-demand instances")
    """Per pool, the on-demand baseline; 0 lets the pool scale to zero."""
    on_demand_max: tuple[str, ...] = setting((), "pool=count most on-demand instances")
    """Per pool, the most on-demand instances."""
    preemptible_max: tuple[str, ...] = setting((), "pool=count most preemptible instances")
    """Per pool, the most preemptible instances (0 disables the group)."""
    max_streams: tuple[str, ...] = setting(
        ("asr_small=3", "asr_large=2"), "pool=streams per instance while none reports it"
    )
    """Per pool, the per-instance stream limit assumed while no instance reports its own."""
    target_utilisation: float = setting(0.9, "share of the slots the policy plans to fill")
    """Share of the slots the policy plans to fill."""
    burst_sigmas: float = setting(3.0, "spare slots as a multiple of sqrt(demand)")
    """Spare slots as a multiple of the square root of demand."""
    rise_quantile: float = setting(0.95, "quantile of measured demand rises the spare covers")
    """Spare slots also cover this quantile of the rises of demand seen within one lead time."""
    rise_history_s: float = setting(3600.0, "history the measured rises come from (s; 0: off)")
    """How much history the measured rises come from; 0 disables the measurement."""
    trend_window: float = setting(120.0, "demand history for the growth estimate (s)")
    """Demand history used to estimate the growth rate."""
    trend_confidence_sigmas: float = setting(1.0, "growth anticipated beyond this many sigmas")
    """Growth is anticipated only beyond this many standard errors of its estimate."""
    gpu_utilisation_limit: float = setting(0.9, "an instance busier than this GPU share is full")
    """An instance whose GPU is busier than this counts as full, whatever its streams."""
    gpu_memory_limit: float = setting(0.9, "an instance with fuller GPU memory is full")
    """An instance whose GPU memory is fuller than this counts as full."""
    real_time_factor_limit: float = setting(0.9, "an instance above this real-time factor is full")
    """An instance whose real-time factor is above this counts as full (it barely keeps up)."""
    tolerance: float = setting(0.05, "relative band in which a recommendation is ignored")
    """Relative band around the current size in which recommendations are ignored."""
    scale_up_cooldown: float = setting(10.0, "wait between trend-driven scale-ups")
    """After a scale-up, a scale-up asked only by the anticipated growth waits this long."""
    scale_down_window: float = setting(200.0, "scale-down stabilisation window (s)")
    """A group shrinks to the largest recommendation of this window."""
    scale_down_step: int = setting(2, "most instances one decision removes from a group")
    """Most instances one decision removes from a group."""
    stale_after: float = setting(15.0, "signals older than this make the policy hold")
    """Signals older than this make the policy hold (never scale down on missing data)."""
    lead_time_on_demand: float = setting(68.0, "request to SERVING on on-demand capacity")
    """Seconds from requesting an on-demand instance to it serving."""
    lead_time_preemptible: float = setting(98.0, "request to SERVING on preemptible capacity")
    """Seconds from requesting a preemptible instance to it serving."""
    placement_deadline: float = setting(240.0, "a starting instance older counts as failed")
    """A starting instance older than this counts as a failed placement."""

    @property
    def replica_id(self) -> str:
        """This replica's id."""
        return self.instance_id or f"autoscaler-{socket.gethostname()}-{os.getpid()}"

    @property
    def local_group_max(self) -> int:
        """Most instances of each local capacity group."""
        return self.local_max_instances or os.cpu_count() or 1

    @property
    def router_client_tls(self) -> ClientTls | None:
        """How the routers' telemetry is reached: None for plaintext."""
        files = (self.router_tls_ca_file, self.router_tls_cert_file, self.router_tls_key_file)
        if not (self.router_tls or any(files)):
            return None
        ca, cert, key = (Path(f) if f else None for f in files)
        return ClientTls(ca_file=ca, cert_file=cert, key_file=key)

    @property
    def router_targets(self) -> tuple[str, ...]:
        """The routers to follow by address; empty when Consul discovers them."""
        if self.routers or self.discovery == "consul":
            return self.routers
        return ("127.0.0.1:50051",)

    @property
    def leader_backend(self) -> str:
        """The leader lock in use: ``file``, ``consul`` or ``none``."""
        if self.leader != "auto":
            return self.leader
        return "consul" if self.discovery == "consul" else "file"

    def pool_policy(self, pool: str) -> PoolPolicy:
        """The scaling policy of ``pool`` from these settings."""
        defaults = PoolPolicy()
        od_min = _per_pool("on_demand_min", self.on_demand_min, pool, defaults.on_demand.min_count)
        od_max = _per_pool("on_demand_max", self.on_demand_max, pool, defaults.on_demand.max_count)
        pe_max = _per_pool(
            "preemptible_max", self.preemptible_max, pool, defaults.preemptible.max_count
        )
        return PoolPolicy(
            on_demand=GroupLimits(
                min_count=od_min,
                max_count=od_max,
                lead_time_s=self.lead_time_on_demand,
                placement_deadline_s=self.placement_deadline,
            ),
            preemptible=GroupLimits(
                min_count=0,
                max_count=pe_max,
                lead_time_s=self.lead_time_preemptible,
                placement_deadline_s=self.placement_deadline,
            ),
            allow_scale_to_zero=od_min == 0,
            target_utilisation=self.target_utilisation,
            burst_sigmas=self.burst_sigmas,
            rise_quantile=self.rise_quantile,
            rise_history_s=self.rise_history_s,
            trend_window_s=self.trend_window,
            trend_confidence_sigmas=self.trend_confidence_sigmas,
            gpu_utilisation_limit=self.gpu_utilisation_limit,
            gpu_memory_limit=self.gpu_memory_limit,
            real_time_factor_limit=self.real_time_factor_limit,
            tolerance=self.tolerance,
            scale_up_cooldown_s=self.scale_up_cooldown,
            scale_down_window_s=self.scale_down_window,
            scale_down_step=self.scale_down_step,
            stale_after_s=self.stale_after,
        )

    def fallback_max_streams(self, pool: str) -> int:
        """Streams per instance of ``pool`` assumed while no instance reports its limit."""
        return _per_pool("max_streams", self.max_streams, pool, 3)

    def validate(self) -> None:
        """Raises :class:`SettingsError` naming the first invalid setting."""
        for name, choices in _CHOICES.items():
            value = getattr(self, name)
            if value not in choices:
                raise SettingsError(f"setting {name}={value!r}: expected one of {choices}")
        if not self.pools:
            raise SettingsError("setting pools=(): at least one pool is needed")
        for name in ("interval", "drain_timeout", "local_ready_timeout", "leader_retry"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"setting {name}={getattr(self, name)!r}: must be positive")
        for name in ("cooldown", "scaling_timeout", "nomad_pending_deadline"):
            if getattr(self, name) < 0:
                raise SettingsError(f"setting {name}={getattr(self, name)!r}: must not be negative")
        if self.telemetry_interval < 0.1:
            raise SettingsError(
                f"setting telemetry_interval={self.telemetry_interval!r}: at least 0.1"
            )
        if self.history < 1:
            raise SettingsError(f"setting history={self.history!r}: at least 1")
        if self.local_max_instances < 0:
            raise SettingsError(
                f"setting local_max_instances={self.local_max_instances!r}: 0 (CPU count) or more"
            )
        if bool(self.router_tls_cert_file) != bool(self.router_tls_key_file):
            raise SettingsError("settings router_tls_cert_file and router_tls_key_file go together")
        for name in ("router_tls_ca_file", "router_tls_cert_file", "router_tls_key_file"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise SettingsError(f"setting {name}={path!r}: no such file")
        for target in self.routers:
            host, _, port = target.rpartition(":")
            if not host or not port.isdigit():
                raise SettingsError(f"setting routers: {target!r} is not host:port")
        for name in ("on_demand_min", "on_demand_max", "preemptible_max"):
            unknown = set(pairs(name, getattr(self, name), "pool=value")) - set(self.pools)
            if unknown:
                raise SettingsError(
                    f"setting {name}: {sorted(unknown)} not among pools {self.pools}"
                )
        for pool in self.pools:
            self.pool_policy(pool)  # raises SettingsError naming the bad bound
            if self.fallback_max_streams(pool) < 1:
                raise SettingsError(f"setting max_streams[{pool}]: must be at least 1")


def _per_pool(name: str, items: Sequence[str], pool: str, default: int) -> int:
    raw = pairs(name, items, "pool=value").get(pool)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"setting {name}[{pool}]={raw!r}: expected an integer") from None


def load_settings(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> AutoscalerSettings:
    """Builds the settings from flags and environment (flags win)."""
    return load(
        AutoscalerSettings,
        prefix=ENV_PREFIX,
        argv=argv,
        env=env,
        description="voxmesh autoscaler: sizes the ASR pools from live load",
    )
