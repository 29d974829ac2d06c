"""A test double of the Nomad HTTP API: NOT Nomad, an in-process stand-in for tests.

:class:`NomadDouble` serves a subset of the Nomad **v1.6** HTTP API (as
documented in ``website/content/api-docs`` at v1.6.5 and as the v1.6 server
code answers) on ``127.0.0.1`` with a port chosen by the OS, backed by a small
in-memory cluster and scheduler:

- ``GET/PUT/POST /v1/jobs`` (list, register ``{"Job": {...}}``), ``GET/PUT/POST
  /v1/job/:id``; jobs are canonicalised like the ``api`` package does (service
  jobs get the default ``update`` strategy, ``scaling.min`` defaults to the
  count, durations are nanoseconds).
- ``GET /v1/job/:id/scale`` (``TaskGroups`` map, ``Placed``/``Running``/
  ``Healthy`` counted from non-terminal allocations, newest-first scaling
  events, last 20 kept) and ``PUT/POST /v1/job/:id/scale`` with the server's
  validations and messages, ``Error`` a bool, ``Count`` optional (event only),
  bounds checked against the ``scaling`` block, 400 while a deployment of the
  job is active; every count change is a new job version and an evaluation
  ``TriggeredBy: "scaling"``.
- ``DELETE /v1/job/:id`` (``nomad job stop``): the job stays, ``Stop: true``, as a
  new version; ``?purge=true`` deletes it. A stopped job's allocations all stop,
  none is placed (a scale of it is accepted, as Nomad's ``Job.Scale`` does, and
  places nothing), its active deployment is cancelled, and the scale status
  reports ``JobStopped``.
- ``GET /v1/job/:id/allocations``, ``/evaluations``, ``/deployment``,
  ``GET /v1/evaluation/:id``, ``GET /v1/nodes``, ``GET /v1/node/:id``,
  ``PUT/POST /v1/node/:id/drain`` and ``/eligibility``.
- Errors are plain text with Nomad's codes and messages; reads carry
  ``X-Nomad-Index``, ``X-Nomad-KnownLeader`` and ``X-Nomad-LastContact`` and
  block on ``?index=&wait=`` (default 5 min, at most 5 min as the server bounds
  it, plus up to wait/16 jitter), writes carry ``X-Nomad-Index``.

The scheduler places allocations on ready, eligible, non-draining nodes of the
job's node pool and datacenters, checks constraints on ``${node.*}`` and
``${meta.*}``, devices by name and ``${device.*}`` constraints (units such as
``16 GiB`` understood), and CPU, memory and free device instances. When a
group does not fit, the evaluation completes with ``FailedTGAllocs`` (Nomad's
``AllocMetric``: ``ConstraintFiltered {"missing devices": n}`` or
``DimensionExhausted {"devices: no devices match request": n}``) and a blocked
evaluation (``TriggeredBy: "queued-allocs"``) is created; it is re-run when
capacity appears (node added, made eligible, drain cancelled, allocations
stopped), reblocked if it still fails, and an older blocked evaluation of the
same job is cancelled. A successful newer evaluation leaves an older blocked
one ``blocked`` but untracked, as Nomad does. Allocations start ``pending``
and run after a per-node start delay; deployments complete once every
allocation of the version has been running for ``min_healthy_time`` and fail
at ``progress_deadline``; an allocation outside a deployment gets its health
after the group's ``migrate.min_healthy_time``, as the client's health hook
sets it. A drain follows Nomad's drainer (``nomad/drainer``): per task group
of a service job it marks for migration at most as many allocations as keep
``count - migrate.max_parallel`` healthy ones, the rest once replacements are
healthy, and every one left when the drain's deadline passes (at once for a
force drain, never for a drain without deadline). Time is real, or a
:class:`ManualClock` moved by :meth:`NomadDouble.advance`; what falls due
between two ticks (a drain's deadline) is applied at the later one.

Left out: ACLs, namespaces other than ``default``, regions, job versions and
reverts, periodic/parameterized/system/batch specifics, canaries and auto-revert,
``?prefix``/``?filter``/paging, networks and ports, affinities and spreads,
preemption, reschedule policies, client restarts and failures, and the
allocation endpoints. Evaluations are processed at once (a client never sees
one ``pending``). As with Nomad's drainer, a drain's ``node-drain``
evaluations are not in the drain's answer (``EvalIDs`` null).
"""

from __future__ import annotations

import copy
import fnmatch
import json
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["ManualClock", "NomadDouble", "NomadError", "blocking_wait", "gpu_service_job"]

Json = dict[str, Any]

NS = 1_000_000_000
MAX_SCALING_EVENTS = 20
"""``structs.JobTrackedScalingEvents``."""
DEFAULT_WAIT_S = 300.0
"""``structs.DefaultBlockingRPCQueryTime``."""
MAX_WAIT_S = 300.0
"""``structs.MaxBlockingRPCQueryTime``: the server cuts longer waits to 5 min (the API
docs say 10 min; the RPC bound the server applies is what a client sees)."""
_ZERO_TIME = "0001-01-01T00:00:00Z"
"""Go's zero ``time.Time`` in JSON."""
_TERMINAL_EVAL = {"complete", "failed", "canceled"}
"""``Evaluation.TerminalStatus``: every other status (pending, blocked) is still open."""
_ACTIVE_DEPLOYMENT = {"running", "paused", "pending", "blocked", "unblocking", "initializing"}
_TERMINAL_CLIENT = {"complete", "failed", "lost"}
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "kib": 1024,
    "mb": 1000**2,
    "mib": 1024**2,
    "gb": 1000**3,
    "gib": 1024**3,
    "tb": 1000**4,
    "tib": 1024**4,
}


class NomadError(Exception):
    """An error answer: plain-text ``message`` with HTTP ``code`` (Nomad's ``CodedError``)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ManualClock:
    """A clock that moves only when told to; start it at the wall time so times look real."""

    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else start

    def __call__(self) -> float:
        """The current time in epoch seconds."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Moves the clock forward (use :meth:`NomadDouble.advance` to also run timers)."""
        self._now += seconds


def gpu_service_job(
    job_id: str,
    *,
    group: str = "asr",
    count: int = 1,
    node_pool: str = "default",
    scaling: tuple[int, int] | None = (0, 10),
    gpu_memory: str = "8 GiB",
    min_healthy_s: float = 10.0,
    progress_deadline_s: float = 600.0,
) -> Json:
    """An API job (as ``nomad job run`` sends it) with one task needing one NVIDIA GPU."""
    device = {
        "Name": "nvidia/gpu",
        "Count": 1,
        "Constraints": [
            {"LTarget": "${device.attr.memory}", "RTarget": gpu_memory, "Operand": ">="}
        ],
    }
    task_group: Json = {
        "Name": group,
        "Count": count,
        "Tasks": [
            {
                "Name": "server",
                "Driver": "docker",
                "Resources": {"CPU": 1000, "MemoryMB": 2048, "Devices": [device]},
                "KillTimeout": 45 * NS,
            }
        ],
    }
    if scaling is not None:
        task_group["Scaling"] = {"Min": scaling[0], "Max": scaling[1], "Enabled": True}
    return {
        "ID": job_id,
        "Type": "service",
        "NodePool": node_pool,
        "Update": {
            "MaxParallel": 1,
            "MinHealthyTime": int(min_healthy_s * NS),
            "HealthyDeadline": int(min(300.0, progress_deadline_s) * NS),
            "ProgressDeadline": int(progress_deadline_s * NS),
        },
        "TaskGroups": [task_group],
    }


def parse_go_duration(text: str) -> float:
    """Go's ``time.ParseDuration`` in seconds (``300ms``, ``1m30s``, ``-1s``, ``0``)."""
    sign, body = (-1.0, text[1:]) if text[:1] == "-" else (1.0, text.removeprefix("+"))
    if body == "0":
        return 0.0
    parts = re.findall(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)", body)
    if not parts or "".join(n + u for n, u in parts) != body:
        raise ValueError(text)
    return sign * sum(float(n) * _GO_UNITS[u] for n, u in parts)


def blocking_wait(query: dict[str, str]) -> float:
    """Seconds a blocking query waits before jitter (``QueryOptions.TimeToBlock``).

    ``?wait`` unset, empty or not positive means 5 min, and longer waits are cut to
    5 min (``nomad/rpc.go blockingRPC``); a value that is not a Go duration is a 400
    (``parseWait`` skips an empty one).
    """
    try:
        wait = parse_go_duration(query["wait"]) if query.get("wait") else 0.0
    except ValueError:
        raise NomadError(400, "Invalid wait time") from None
    return min(wait, MAX_WAIT_S) if wait > 0 else DEFAULT_WAIT_S


def _size(text: str) -> float | None:
    match = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", text)
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        return None
    return float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


def _compare(left: str | None, operand: str, right: str) -> bool:
    """Nomad's constraint operands on strings, numbers and sizes with units."""
    if operand in ("", "=", "==", "is"):
        return left == right
    if operand in ("!=", "not"):
        return left != right
    if operand == "regexp":
        return left is not None and re.search(right, left) is not None
    if operand == "is_set":
        return left is not None
    if operand == "is_not_set":
        return left is None
    if left is None or operand not in ("<", "<=", ">", ">="):
        return False
    lhs, rhs = _size(left), _size(right)
    if lhs is None or rhs is None:
        return _ordered(left, operand, right)
    return _ordered(lhs, operand, rhs)


def _ordered(a: Any, operand: str, b: Any) -> bool:
    if operand == "<":
        return bool(a < b)
    if operand == "<=":
        return bool(a <= b)
    if operand == ">":
        return bool(a > b)
    return bool(a >= b)


def _go_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class _GpuGroup:
    vendor: str
    type: str
    name: str
    memory_mib: int
    instances: list[str]

    def attribute(self, target: str) -> str | None:
        values = {
            "${device.vendor}": self.vendor,
            "${device.type}": self.type,
            "${device.model}": self.name,
            "${device.attr.memory}": f"{self.memory_mib} MiB",
        }
        return values.get(target)

    def matches(self, request: Json) -> bool:
        parts = str(request.get("Name", "")).split("/")
        wanted = {1: (None, parts[0], None), 2: (parts[0], parts[-1], None)}.get(
            len(parts), (parts[0], parts[1], "/".join(parts[2:]))
        )
        if wanted[0] not in (None, self.vendor) or wanted[1] != self.type:
            return False
        if wanted[2] not in (None, self.name):
            return False
        return all(
            _compare(self.attribute(c["LTarget"]), c.get("Operand", "="), c["RTarget"])
            for c in request.get("Constraints") or []
        )

    def to_json(self) -> Json:
        return {
            "Vendor": self.vendor,
            "Type": self.type,
            "Name": self.name,
            "Attributes": {"memory": {"Int": self.memory_mib, "Unit": "MiB"}},
            "Instances": [
                {"ID": i, "Healthy": True, "HealthDescription": "", "Locality": None}
                for i in self.instances
            ],
        }


@dataclass
class _Node:
    id: str
    name: str
    pool: str
    node_class: str
    datacenter: str
    meta: dict[str, str]
    cpu_mhz: int
    memory_mb: int
    gpus: list[_GpuGroup]
    start_delay_s: float
    create_index: int
    modify_index: int
    status: str = "ready"
    eligibility: str = "eligible"
    drain: Json | None = None
    last_drain: Json | None = None
    force_at: float | None = None
    """When the drain migrates every allocation left (its deadline); None: never."""

    def target(self, name: str) -> str | None:
        if name.startswith("${meta.") and name.endswith("}"):
            return self.meta.get(name[7:-1])
        return {
            "${node.unique.id}": self.id,
            "${node.unique.name}": self.name,
            "${node.class}": self.node_class,
            "${node.pool}": self.pool,
            "${node.datacenter}": self.datacenter,
        }.get(name)

    def schedulable(self) -> bool:
        return self.status == "ready" and self.eligibility == "eligible" and self.drain is None

    def stub(self) -> Json:
        return {
            "Address": "127.0.0.1",
            "ID": self.id,
            "Datacenter": self.datacenter,
            "Name": self.name,
            "NodeClass": self.node_class,
            "NodePool": self.pool,
            "Version": "1.6.5",
            "Drain": self.drain is not None,
            "SchedulingEligibility": self.eligibility,
            "Status": self.status,
            "StatusDescription": "",
            "Drivers": {"docker": {"Detected": True, "Healthy": True}},
            "LastDrain": self.last_drain,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }

    def to_json(self) -> Json:
        return {
            "ID": self.id,
            "SecretID": "",
            "Name": self.name,
            "Datacenter": self.datacenter,
            "HTTPAddr": "127.0.0.1:4646",
            "NodeClass": self.node_class,
            "NodePool": self.pool,
            "Meta": dict(self.meta),
            "Attributes": {"nomad.version": "1.6.5", "kernel.name": "linux"},
            "NodeResources": {
                "Cpu": {"CpuShares": self.cpu_mhz},
                "Memory": {"MemoryMB": self.memory_mb},
                "Devices": [g.to_json() for g in self.gpus] or None,
            },
            "DrainStrategy": self.drain,
            "SchedulingEligibility": self.eligibility,
            "Status": self.status,
            "StatusDescription": "",
            "LastDrain": self.last_drain,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


@dataclass
class _Alloc:
    id: str
    eval_id: str
    job_id: str
    group: str
    index: int
    node_id: str
    node_name: str
    job_version: int
    cpu: int
    memory: int
    devices: dict[int, list[str]]
    created: float
    create_index: int
    modify_index: int
    start_at: float
    desired: str = "run"
    desired_description: str = ""
    client: str = "pending"
    started_at: float | None = None
    stop_at: float | None = None
    migrate: bool = False
    deployment_id: str = ""
    healthy: bool | None = None
    modified: float = 0.0
    job_create_index: int = 0
    """``CreateIndex`` of the job (as registered then) the allocation belongs to."""

    def live(self) -> bool:
        """Not terminal (``Allocation.TerminalStatus`` is false)."""
        return self.desired == "run" and self.client not in _TERMINAL_CLIENT

    def holds_resources(self) -> bool:
        return self.client not in _TERMINAL_CLIENT

    def stub(self, job_type: str) -> Json:
        state = {"pending": "pending", "running": "running"}.get(self.client, "dead")
        return {
            "ID": self.id,
            "EvalID": self.eval_id,
            "Name": f"{self.job_id}.{self.group}[{self.index}]",
            "Namespace": "default",
            "NodeID": self.node_id,
            "NodeName": self.node_name,
            "JobID": self.job_id,
            "JobType": job_type,
            "JobVersion": self.job_version,
            "TaskGroup": self.group,
            "DesiredStatus": self.desired,
            "DesiredDescription": self.desired_description,
            "ClientStatus": self.client,
            "ClientDescription": "",
            "DesiredTransition": {"Migrate": True if self.migrate else None},
            "TaskStates": {"server": {"State": state, "Failed": False, "Restarts": 0}},
            "DeploymentStatus": (
                None
                if self.healthy is None
                else {
                    "Healthy": self.healthy,
                    "Canary": False,
                    "Timestamp": _go_time(self.modified),
                }
            ),
            "FollowupEvalID": "",
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
            "CreateTime": int(self.created * NS),
            "ModifyTime": int(self.modified * NS),
        }


@dataclass
class _State:
    """The cluster's state; guarded by :attr:`NomadDouble._cond`."""

    index: int = 1
    tables: dict[str, int] = field(default_factory=dict)
    pools: set[str] = field(default_factory=lambda: {"default", "all"})
    jobs: dict[str, Json] = field(default_factory=dict)
    events: dict[str, dict[str, list[Json]]] = field(default_factory=dict)
    events_index: dict[str, int] = field(default_factory=dict)
    evals: dict[str, Json] = field(default_factory=dict)
    blocked: dict[str, str] = field(default_factory=dict)
    deployments: dict[str, Json] = field(default_factory=dict)
    allocs: dict[str, _Alloc] = field(default_factory=dict)
    nodes: dict[str, _Node] = field(default_factory=dict)


class NomadDouble:
    """A Nomad v1.6 HTTP API test double; see the module docstring for what it covers.

    Use as a context manager, or :meth:`start` and :meth:`close`. ``url`` is its address.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] | None = None,
        start_delay_s: float = 0.0,
        stop_delay_s: float = 0.0,
    ) -> None:
        self._clock: Callable[[], float] = clock or time.time
        self._start_delay_s = start_delay_s
        self._stop_delay_s = stop_delay_s
        self._cond = threading.Condition()
        self._state = _State()
        self._closed = False
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> NomadDouble:
        """Starts serving on 127.0.0.1 with an OS-chosen port."""
        handler = type("_Handler", (_Handler,), {"double": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Stops serving and releases blocked queries. Idempotent."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> NomadDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        if self._server is None:
            raise RuntimeError("the Nomad double is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # --------------------------------------------------------- test-side controls

    def advance(self, seconds: float) -> None:
        """Moves a :class:`ManualClock` forward and runs whatever became due."""
        if not isinstance(self._clock, ManualClock):
            raise TypeError("advance() needs a ManualClock")
        with self._cond:
            self._clock.advance(seconds)
            self._tick()

    def add_node_pool(self, name: str) -> None:
        """Creates a node pool (nodes create theirs on registration)."""
        with self._cond:
            self._state.pools.add(name)

    def add_node(
        self,
        name: str,
        *,
        pool: str = "default",
        gpus: int = 1,
        gpu_memory_mib: int = 16384,
        gpu_model: str = "Tesla T4",
        node_class: str = "",
        datacenter: str = "dc1",
        meta: dict[str, str] | None = None,
        cpu_mhz: int = 16000,
        memory_mb: int = 65536,
        start_delay_s: float | None = None,
    ) -> str:
        """Registers a ready, eligible client node and returns its ID.

        ``start_delay_s`` (default: the double's) is how long allocations stay
        ``pending`` on it; ``math.inf`` keeps them pending for ever.
        """
        with self._cond:
            st = self._state
            index = self._bump("nodes")
            group = _GpuGroup(
                "nvidia",
                "gpu",
                gpu_model,
                gpu_memory_mib,
                [f"GPU-{uuid.uuid4()}" for _ in range(gpus)],
            )
            node = _Node(
                id=str(uuid.uuid4()),
                name=name,
                pool=pool,
                node_class=node_class,
                datacenter=datacenter,
                meta=dict(meta or {}),
                cpu_mhz=cpu_mhz,
                memory_mb=memory_mb,
                gpus=[group] if gpus else [],
                start_delay_s=self._start_delay_s if start_delay_s is None else start_delay_s,
                create_index=index,
                modify_index=index,
            )
            st.nodes[node.id] = node
            st.pools.add(pool)
            self._unblock()
            self._cond.notify_all()
            return node.id

    def register_job(self, job: Json) -> Json:
        """Registers (or updates) a job given as API JSON; the answer of ``PUT /v1/jobs``."""
        with self._cond:
            return self._register(copy.deepcopy(job))

    # ------------------------------------------------------------ HTTP dispatch

    def handle(self, method: str, path: str, query: dict[str, str], body: bytes) -> tuple[Any, int]:
        """Answers one request: (JSON, ``X-Nomad-Index``); raises :class:`NomadError`."""
        parts = path.strip("/").split("/")
        if parts[:1] != ["v1"] or len(parts) < 2:
            raise NomadError(404, "404 page not found")
        resource, rest = parts[1], "/".join(parts[2:])
        if resource == "jobs" and not rest:
            if method == "GET":
                return self._read(query, self._jobs_list)
            return self._write(method, lambda: self._register_body(body, ""))
        if resource == "job" and rest:
            return self._job_request(method, rest, query, body)
        if resource == "evaluation" and rest:
            return self._read(query, lambda: self._evaluation(rest), method)
        if resource == "nodes" and not rest:
            return self._read(query, self._nodes_list, method)
        if resource == "node" and rest.endswith("/drain"):
            node_id = rest.removesuffix("/drain")
            return self._write(method, lambda: self._drain(node_id, _decode(body)))
        if resource == "node" and rest.endswith("/eligibility"):
            node_id = rest.removesuffix("/eligibility")
            return self._write(method, lambda: self._eligibility(node_id, _decode(body)))
        if resource == "node" and rest:
            return self._read(query, lambda: self._node(rest), method)
        raise NomadError(404, "404 page not found")

    def _job_request(
        self, method: str, rest: str, query: dict[str, str], body: bytes
    ) -> tuple[Any, int]:
        if rest.endswith("/allocations"):
            job_id = rest.removesuffix("/allocations")
            try:
                every = _parse_bool(query.get("all", ""))
            except ValueError:  # the agent ignores ParseBool's error: false
                every = False
            return self._read(query, lambda: self._job_allocations(job_id, every), method)
        if rest.endswith("/evaluations"):
            job_id = rest.removesuffix("/evaluations")
            return self._read(query, lambda: self._job_evaluations(job_id), method)
        if rest.endswith("/deployment"):
            job_id = rest.removesuffix("/deployment")
            return self._read(query, lambda: self._job_deployment(job_id), method)
        if rest.endswith("/scale"):
            job_id = rest.removesuffix("/scale")
            if method == "GET":
                return self._read(query, lambda: self._scale_status(job_id))
            return self._write(method, lambda: self._scale(job_id, body))
        if method == "GET":
            return self._read(query, lambda: self._job(rest))
        if method == "DELETE":
            return self._write(method, lambda: self._deregister(rest, query), ("DELETE",))
        return self._write(method, lambda: self._register_body(body, rest))

    def _read(
        self, query: dict[str, str], run: Callable[[], tuple[Any, int]], method: str = "GET"
    ) -> tuple[Any, int]:
        """A blocking query: waits while the result's index is not above ``?index``."""
        if method != "GET":
            raise NomadError(405, "Invalid method")
        wait = blocking_wait(query)
        try:
            min_index = int(query.get("index") or "0")  # parseIndex skips an empty one
            if min_index < 0:
                raise ValueError(min_index)
        except ValueError:
            raise NomadError(400, "Invalid index") from None
        deadline = time.monotonic() + wait + random.uniform(0, wait / 16)
        with self._cond:
            while True:
                self._tick()
                result, index = run()
                remaining = deadline - time.monotonic()
                if min_index == 0 or index > min_index or remaining <= 0 or self._closed:
                    return result, index
                due = self._next_due()
                if due is not None and not isinstance(self._clock, ManualClock):
                    remaining = min(remaining, max(due - self._clock(), 0.001))
                self._cond.wait(remaining)

    def _write(
        self, method: str, run: Callable[[], Json], methods: tuple[str, ...] = ("PUT", "POST")
    ) -> tuple[Json, int]:
        if method not in methods:
            raise NomadError(405, "Invalid method")
        with self._cond:
            self._tick()
            answer = run()
            self._cond.notify_all()
            return answer, int(answer.get("Index", self._state.index))

    # ------------------------------------------------------------------- reads

    def _jobs_list(self) -> tuple[list[Json], int]:
        stubs = [
            {
                k: self._job_json(j)[k]
                for k in (
                    "ID",
                    "Name",
                    "Type",
                    "Priority",
                    "Status",
                    "Stop",
                    "NodePool",
                    "Version",
                    "SubmitTime",
                    "CreateIndex",
                    "ModifyIndex",
                    "JobModifyIndex",
                )
            }
            for j in sorted(self._state.jobs.values(), key=lambda j: j["ID"])
        ]
        return stubs, self._table("jobs")

    def _job(self, job_id: str) -> tuple[Json, int]:
        job = self._state.jobs.get(job_id)
        if job is None:
            raise NomadError(404, "job not found")
        return self._job_json(job), job["ModifyIndex"]

    def _job_json(self, job: Json) -> Json:
        out = copy.deepcopy(job)
        out["Status"] = self._job_status(job["ID"])
        return out

    def _job_status(self, job_id: str) -> str:
        """Nomad's ``getJobStatus`` for a service job: ``running`` while an allocation
        is not terminal; else ``pending`` while an evaluation is not terminal (pending
        or blocked: a job waiting for room); else ``dead``, and ``pending`` for a job
        with neither allocations nor evaluations yet."""
        allocs = [a for a in self._state.allocs.values() if a.job_id == job_id]
        if any(a.live() for a in allocs):
            return "running"
        evals = [e for e in self._state.evals.values() if e["JobID"] == job_id]
        if any(e["Status"] not in _TERMINAL_EVAL for e in evals):
            return "pending"
        return "dead" if evals or allocs else "pending"

    def _scale_status(self, job_id: str) -> tuple[Json, int]:
        job = self._state.jobs.get(job_id)
        if job is None:
            raise NomadError(404, "job not found")
        groups: dict[str, Json] = {
            tg["Name"]: {
                "Desired": tg["Count"],
                "Placed": 0,
                "Running": 0,
                "Healthy": 0,
                "Unhealthy": 0,
                "Events": copy.deepcopy(self._state.events.get(job_id, {}).get(tg["Name"])),
            }
            for tg in job["TaskGroups"]
        }
        index = max(job["ModifyIndex"], self._state.events_index.get(job_id, 0))
        for alloc in self._job_allocs(job_id):
            if not alloc.live() or alloc.group not in groups:
                continue
            status = groups[alloc.group]
            status["Placed"] += 1
            status["Running"] += alloc.client == "running"
            status["Healthy"] += alloc.healthy is True
            status["Unhealthy"] += alloc.healthy is False
            index = max(index, alloc.modify_index)
        answer = {
            "JobID": job_id,
            "Namespace": "default",
            "JobCreateIndex": job["CreateIndex"],
            "JobModifyIndex": job["ModifyIndex"],
            "JobStopped": job["Stop"],
            "TaskGroups": groups,
        }
        return answer, index

    def _job_allocations(self, job_id: str, every: bool) -> tuple[list[Json], int]:
        """``AllocsByJob``: without ``?all``, only the allocations of the job registered
        now under that ID, not those of an earlier, purged job of the same ID (the
        scheduler sees them all)."""
        job = self._state.jobs.get(job_id)
        job_type = (job or {}).get("Type", "service")
        allocs = [
            a
            for a in self._job_allocs(job_id)
            if every or job is None or a.job_create_index == job["CreateIndex"]
        ]
        return [a.stub(job_type) for a in allocs], self._table("allocs")

    def _job_evaluations(self, job_id: str) -> tuple[list[Json], int]:
        evals = [copy.deepcopy(e) for e in self._state.evals.values() if e["JobID"] == job_id]
        return evals, self._table("evals")

    def _job_deployment(self, job_id: str) -> tuple[Json | None, int]:
        latest = self._latest_deployment(job_id)
        public = (
            {k: copy.deepcopy(v) for k, v in latest.items() if not k.startswith("_")}
            if latest
            else None
        )
        return public, self._table("deployment")

    def _evaluation(self, eval_id: str) -> tuple[Json, int]:
        evaluation = self._state.evals.get(eval_id)
        if evaluation is None:
            raise NomadError(404, "eval not found")
        return copy.deepcopy(evaluation), evaluation["ModifyIndex"]

    def _nodes_list(self) -> tuple[list[Json], int]:
        nodes = sorted(self._state.nodes.values(), key=lambda n: n.id)
        return [n.stub() for n in nodes], self._table("nodes")

    def _node(self, node_id: str) -> tuple[Json, int]:
        node = self._state.nodes.get(node_id)
        if node is None:
            raise NomadError(404, "node not found")
        return node.to_json(), node.modify_index

    # ------------------------------------------------------------------ writes

    def _register_body(self, body: bytes, job_id: str) -> Json:
        request = _decode(body)
        job = request.get("Job")
        if not isinstance(job, dict):
            raise NomadError(400, "Job must be specified")
        if not job.get("ID"):
            raise NomadError(400, "Job ID hasn't been provided")
        if job_id and job["ID"] != job_id:
            raise NomadError(400, "Job ID does not match name")
        return self._register(job)

    def _register(self, job: Json) -> Json:
        st = self._state
        job = _canonicalize(job)
        if job["NodePool"] not in st.pools:
            raise NomadError(
                500, f'job "{job["ID"]}" is in nonexistent node pool "{job["NodePool"]}"'
            )
        existing = st.jobs.get(job["ID"])
        spec_changed = existing is None or _spec(existing) != _spec(job)
        if existing is not None:
            for tg in job["TaskGroups"]:
                old = _group(existing, tg["Name"])
                if tg.get("Scaling") and old and old.get("Scaling"):
                    tg["Scaling"]["ID"] = old["Scaling"]["ID"]
        if existing is not None and not spec_changed:
            evaluation = self._new_eval(job["ID"], "job-register", existing["JobModifyIndex"])
            self._process(evaluation)
            return _register_answer(evaluation, existing["JobModifyIndex"], st.index)
        index = self._bump("jobs")
        job.update(
            Version=0 if existing is None else existing["Version"] + 1,
            CreateIndex=index if existing is None else existing["CreateIndex"],
            ModifyIndex=index,
            JobModifyIndex=index,
            SubmitTime=int(self._clock() * NS),
        )
        for tg in job["TaskGroups"]:
            if tg.get("Scaling"):
                tg["Scaling"].update(CreateIndex=index, ModifyIndex=index)
                tg["Scaling"]["Target"] = {
                    "Namespace": "default",
                    "Job": job["ID"],
                    "Group": tg["Name"],
                }
        st.jobs[job["ID"]] = job
        evaluation = self._new_eval(job["ID"], "job-register", index)
        self._process(evaluation, new_version=True)
        return _register_answer(evaluation, index, st.index)

    def _deregister(self, job_id: str, query: dict[str, str]) -> Json:
        """``nomad job stop``: a new version with ``Stop: true`` (``?purge``: the job goes).

        Like ``Job.Deregister``, an unknown job is no error (an empty answer, index 0).
        """
        st = self._state
        raw = query.get("purge", "")
        try:
            purge = _parse_bool(raw) if raw else False
        except ValueError:
            raise NomadError(  # [recalled] command/agent/job_endpoint.go jobDelete
                400,
                f'Failed to parse value of "purge" ({raw}) as a bool: '
                f'strconv.ParseBool: parsing "{raw}": invalid syntax',
            ) from None
        job = st.jobs.get(job_id)
        if job is None:
            return _deregister_answer("", 0, 0, 0)
        index = self._bump("jobs")
        job.update(
            Stop=True,
            Version=job["Version"] + 1,
            ModifyIndex=index,
            JobModifyIndex=index,
            SubmitTime=int(self._clock() * NS),
        )
        evaluation = self._new_eval(job_id, "job-deregister", index)
        evaluation["Type"] = "service"  # Job.Deregister's, whatever the job's type
        if purge:
            del st.jobs[job_id]
            st.events.pop(job_id, None)
            self._stop_job(evaluation, job)
        else:
            self._process(evaluation, new_version=True)
        return _deregister_answer(evaluation["ID"], evaluation["CreateIndex"], index, st.index)

    def _scale(self, job_id: str, body: bytes) -> Json:
        st = self._state
        request = _decode_scaling_request(body)
        target = request.get("Target") or {}
        if target.get("Job") and target["Job"] != job_id:
            raise NomadError(400, "job ID in payload did not match URL")
        if target.get("Namespace") and target["Namespace"] != "default":
            raise NomadError(400, "namespace in payload did not match header")
        group_name = target.get("Group", "")
        if not group_name:
            raise NomadError(400, "missing task group name for scaling action")
        count = request.get("Count")
        if count is not None:
            if count < 0:
                raise NomadError(400, "scaling action count can't be negative")
            if request.get("Error"):
                raise NomadError(400, "scaling action should not contain count if error is true")
        job = st.jobs.get(job_id)
        if job is None:
            raise NomadError(404, f'job "{job_id}" not found')
        if job["Type"] == "system":
            raise NomadError(400, 'cannot scale jobs of type "system"')
        group = _group(job, group_name)
        if group is None:
            raise NomadError(
                400, f'task group "{group_name}" specified for scaling does not exist in job'
            )
        now = self._clock()
        event: Json = {
            "Time": int(now * NS),
            "Count": count,
            "PreviousCount": group["Count"],
            "Message": request.get("Message", ""),
            "Error": bool(request.get("Error", False)),
            "Meta": request.get("Meta"),
            "EvalID": None,
            "CreateIndex": 0,
        }
        answer: Json = {"EvalID": "", "EvalCreateIndex": 0, "JobModifyIndex": job["ModifyIndex"]}
        if count is not None:
            scaling = group.get("Scaling")
            if scaling:
                if count < scaling["Min"]:
                    raise NomadError(
                        400,
                        "group count was less than scaling policy minimum: "
                        f"{count} < {scaling['Min']}",
                    )
                if scaling["Max"] < count:
                    raise NomadError(
                        400,
                        "group count was greater than scaling policy maximum: "
                        f"{count} > {scaling['Max']}",
                    )
            deployment = self._latest_deployment(job_id)
            if (
                deployment is not None
                and deployment["Status"] in _ACTIVE_DEPLOYMENT
                and deployment["JobCreateIndex"] == job["CreateIndex"]
            ):
                raise NomadError(400, "job scaling blocked due to active deployment")
            index = self._bump("jobs")
            group["Count"] = count
            job.update(
                Version=job["Version"] + 1,
                ModifyIndex=index,
                JobModifyIndex=index,
                SubmitTime=int(now * NS),
            )
            evaluation = self._new_eval(job_id, "scaling", index)
            answer.update(
                EvalID=evaluation["ID"],
                EvalCreateIndex=evaluation["CreateIndex"],
                JobModifyIndex=index,
            )
            event["EvalID"] = evaluation["ID"]
            self._process(evaluation, new_version=True)
        event_index = self._bump("scaling_event")
        event["CreateIndex"] = event_index
        events = st.events.setdefault(job_id, {}).setdefault(group_name, [])
        events.insert(0, event)
        del events[MAX_SCALING_EVENTS:]
        st.events_index[job_id] = event_index
        answer.update(Index=event_index, KnownLeader=False, LastContact=0, Warnings="")
        return answer

    def _drain(self, node_id: str, request: Json) -> Json:
        st = self._state
        node = st.nodes.get(node_id)
        if node is None:
            raise NomadError(500, "node not found")
        spec = request.get("DrainSpec")
        now = self._clock()
        index = self._bump("nodes")
        node.modify_index = index
        if spec is None:
            node.drain, node.force_at = None, None
            if node.last_drain:
                node.last_drain.update(Status="canceled", UpdatedAt=_go_time(now))
            if request.get("MarkEligible") and node.eligibility == "ineligible":
                node.eligibility = "eligible"
                self._unblock()
        else:
            deadline_ns = int(spec.get("Deadline") or 0)
            # Node.UpdateDrain sets ForceDeadline only for a positive Deadline: a force
            # drain (< 0) and one without deadline (0) keep Go's zero time. An update
            # of a running drain keeps its StartedAt.
            started = node.drain["StartedAt"] if node.drain else _go_time(now)
            node.drain = {
                "Deadline": deadline_ns,
                "IgnoreSystemJobs": bool(spec.get("IgnoreSystemJobs", False)),
                "ForceDeadline": (
                    _go_time(now + deadline_ns / NS) if deadline_ns > 0 else _ZERO_TIME
                ),
                "StartedAt": started,
            }
            node.last_drain = {
                "StartedAt": _go_time(now),
                "UpdatedAt": _go_time(now),
                "Status": "draining",
                "AccessorID": "",
                "Meta": request.get("Meta"),
            }
            node.force_at = (
                now if deadline_ns < 0 else (now + deadline_ns / NS if deadline_ns else None)
            )
            node.eligibility = "ineligible"
            self._drain_allocs()  # Nomad's drainer does this after answering
            self._finish_drains()
        return {
            "EvalCreateIndex": 0,  # the drainer creates its evaluations after answering
            "EvalIDs": None,
            "Index": index,
            "NodeModifyIndex": index,
        }

    def _eligibility(self, node_id: str, request: Json) -> Json:
        st = self._state
        eligibility = request.get("Eligibility", "")
        if eligibility not in ("eligible", "ineligible"):
            raise NomadError(500, f'invalid scheduling eligibility "{eligibility}"')
        node = st.nodes.get(node_id)
        if node is None:
            raise NomadError(500, "node not found")
        if node.drain is not None and eligibility == "eligible":
            raise NomadError(
                500, "can not set node's scheduling eligibility to eligible while it is draining"
            )
        if node.eligibility != eligibility:
            node.modify_index = self._bump("nodes")
            node.eligibility = eligibility
            if eligibility == "eligible":
                self._unblock()
        # The documented answer (api-docs/nodes.mdx), as for a drain. (The stored
        # Node.UpdateEligibility source reads as if it left NodeModifyIndex at 0 and
        # listed node-update evaluations; voxmesh reads neither field.)
        return {
            "EvalCreateIndex": 0,
            "EvalIDs": None,
            "Index": st.index,
            "NodeModifyIndex": node.modify_index,
        }

    # --------------------------------------------------------------- scheduler

    def _new_eval(
        self, job_id: str, trigger: str, job_modify_index: int, status: str = "pending"
    ) -> Json:
        job = self._state.jobs[job_id]
        index = self._bump("evals")
        now = int(self._clock() * NS)
        evaluation: Json = {
            "ID": str(uuid.uuid4()),
            "Namespace": "default",
            "Priority": job["Priority"],
            "Type": job["Type"],
            "TriggeredBy": trigger,
            "JobID": job_id,
            "JobModifyIndex": job_modify_index,
            "Status": status,
            "StatusDescription": "",
            "NextEval": "",
            "PreviousEval": "",
            "BlockedEval": "",
            "FailedTGAllocs": None,
            "ClassEligibility": None,
            "EscapedComputedClass": False,
            "QueuedAllocations": None,
            "SnapshotIndex": 0,
            "CreateIndex": index,
            "ModifyIndex": index,
            "CreateTime": now,
            "ModifyTime": now,
        }
        self._state.evals[evaluation["ID"]] = evaluation
        return evaluation

    def _process(self, evaluation: Json, *, new_version: bool = False) -> None:
        """Runs the scheduler for the evaluation's job (synchronously)."""
        st = self._state
        job = st.jobs[evaluation["JobID"]]
        if job["Stop"]:
            self._stop_job(evaluation, job)
            return
        if new_version:
            self._start_deployment(job)
        deployment = self._latest_deployment(job["ID"])
        active_id = deployment["ID"] if deployment and deployment["Status"] == "running" else ""
        failed: dict[str, Json] = {}
        queued: dict[str, int] = {}
        for tg in job["TaskGroups"]:
            live = sorted(
                (a for a in self._job_allocs(job["ID"]) if a.live() and a.group == tg["Name"]),
                key=lambda a: a.index,
            )
            for alloc in live:
                if alloc.migrate:
                    self._stop(alloc, "alloc is being migrated")
                elif alloc.job_version != job["Version"]:
                    alloc.job_version = job["Version"]
                    if active_id and tg.get("Update"):
                        alloc.deployment_id, alloc.healthy = active_id, None
                    alloc.modify_index = self._bump("allocs")
            live = [a for a in live if a.live()]
            for alloc in live[tg["Count"] :][::-1]:
                self._stop(alloc, "alloc not needed due to job update")
            used = {a.index for a in live[: tg["Count"]]}
            missing = [i for i in range(len(live) + tg["Count"]) if i not in used][
                : max(tg["Count"] - len(live), 0)
            ]
            queued[tg["Name"]] = 0
            for alloc_index in missing:
                metric = self._place(job, tg, alloc_index, evaluation["ID"], active_id)
                if metric is None:
                    continue
                queued[tg["Name"]] += 1
                if tg["Name"] in failed:
                    failed[tg["Name"]]["CoalescedFailures"] += 1
                else:
                    failed[tg["Name"]] = metric
        self._finish(evaluation, job, failed, queued)

    def _stop_job(self, evaluation: Json, job: Json) -> None:
        """The reconciler on a stopped (or purged) job: every allocation stops, none is
        placed, and an active deployment is cancelled (``Cancelled because job is stopped``)."""
        deployment = self._latest_deployment(job["ID"])
        if deployment is not None and deployment["Status"] in _ACTIVE_DEPLOYMENT:
            deployment.update(
                Status="cancelled",
                StatusDescription="Cancelled because job is stopped",
                ModifyIndex=self._bump("deployment"),
                ModifyTime=int(self._clock() * NS),
            )
        for alloc in list(self._job_allocs(job["ID"])):
            if alloc.live():
                self._stop(alloc, "alloc not needed due to job update")
        self._finish(evaluation, job, {}, {tg["Name"]: 0 for tg in job["TaskGroups"]})

    def _finish(
        self, evaluation: Json, job: Json, failed: dict[str, Json], queued: dict[str, int]
    ) -> None:
        st = self._state
        now = int(self._clock() * NS)
        evaluation.update(
            FailedTGAllocs=failed or None,
            QueuedAllocations=queued,
            SnapshotIndex=st.index,
            ModifyTime=now,
        )
        tracked = st.blocked.get(job["ID"])
        if evaluation["Status"] == "blocked":  # an unblocked evaluation re-run
            if not failed:
                evaluation.update(Status="complete", StatusDescription="")
                st.blocked.pop(job["ID"], None)
            evaluation["ModifyIndex"] = self._bump("evals")
            return
        if not failed:
            evaluation.update(Status="complete", ModifyIndex=self._bump("evals"))
            st.blocked.pop(job["ID"], None)  # untracked, left "blocked" in the state
            return
        # GenericScheduler.process creates the blocked evaluation first (createBlockedEval);
        # setStatus marks this one complete last, so its ModifyIndex is the higher one.
        blocked = self._new_eval(
            job["ID"], "queued-allocs", evaluation["JobModifyIndex"], "blocked"
        )
        blocked.update(
            StatusDescription="created to place remaining allocations",
            PreviousEval=evaluation["ID"],
            FailedTGAllocs=copy.deepcopy(failed),
            ClassEligibility={},
            QueuedAllocations=dict(queued),
            SnapshotIndex=st.index,
        )
        evaluation.update(
            Status="complete", BlockedEval=blocked["ID"], ModifyIndex=self._bump("evals")
        )
        st.blocked[job["ID"]] = blocked["ID"]
        if tracked and tracked in st.evals and st.evals[tracked]["Status"] == "blocked":
            st.evals[tracked].update(
                Status="canceled",
                StatusDescription=f'existing blocked evaluation exists for job "{job["ID"]}"',
                ModifyIndex=self._bump("evals"),
                ModifyTime=now,
            )

    def _place(
        self, job: Json, tg: Json, alloc_index: int, eval_id: str, deployment_id: str
    ) -> Json | None:
        """Places one allocation; returns the failure's ``AllocMetric``, or None when placed."""
        st = self._state
        tasks = tg.get("Tasks") or []
        cpu = sum(int((t.get("Resources") or {}).get("CPU") or 100) for t in tasks)
        memory = sum(int((t.get("Resources") or {}).get("MemoryMB") or 300) for t in tasks)
        requests = [d for t in tasks for d in (t.get("Resources") or {}).get("Devices") or []]
        constraints = (job.get("Constraints") or []) + (tg.get("Constraints") or [])
        in_pool = [
            n
            for n in st.nodes.values()
            if job["NodePool"] in ("all", n.pool)
            and any(fnmatch.fnmatchcase(n.datacenter, dc) for dc in job["Datacenters"])
        ]
        ready = sorted((n for n in in_pool if n.schedulable()), key=lambda n: n.name)
        metric: Json = {
            "NodesEvaluated": 0,
            "NodesFiltered": 0,
            "NodesInPool": len(in_pool),
            "NodesAvailable": {},
            "ClassFiltered": None,
            "ConstraintFiltered": None,
            "NodesExhausted": 0,
            "ClassExhausted": None,
            "DimensionExhausted": None,
            "QuotaExhausted": None,
            "ResourcesExhausted": None,
            "Scores": None,
            "ScoreMetaData": None,
            "AllocationTime": 0,
            "CoalescedFailures": 0,
        }
        for node in ready:
            metric["NodesAvailable"][node.datacenter] = (
                metric["NodesAvailable"].get(node.datacenter, 0) + 1
            )
        best: tuple[int, _Node, dict[int, list[str]]] | None = None
        for node in ready:
            metric["NodesEvaluated"] += 1
            unmet = next(
                (
                    c
                    for c in constraints
                    if not _compare(node.target(c["LTarget"]), c.get("Operand", "="), c["RTarget"])
                ),
                None,
            )
            feasible_devices = all(any(g.matches(r) for g in node.gpus) for r in requests)
            if unmet is not None or not feasible_devices:
                reason = (
                    f"{unmet['LTarget']} {unmet.get('Operand', '=')} {unmet['RTarget']}"
                    if unmet is not None
                    else "missing devices"
                )
                metric["NodesFiltered"] += 1
                _count(metric, "ConstraintFiltered", reason)
                if node.node_class:
                    _count(metric, "ClassFiltered", node.node_class)
                continue
            holding = [
                a for a in st.allocs.values() if a.node_id == node.id and a.holds_resources()
            ]
            offer = self._devices(node, requests, holding)
            exhausted = ""
            if sum(a.cpu for a in holding) + cpu > node.cpu_mhz:
                exhausted = "cpu"
            elif sum(a.memory for a in holding) + memory > node.memory_mb:
                exhausted = "memory"
            elif offer is None:
                exhausted = "devices: no devices match request"
            if exhausted or offer is None:
                metric["NodesExhausted"] += 1
                _count(metric, "DimensionExhausted", exhausted)
                if node.node_class:
                    _count(metric, "ClassExhausted", node.node_class)
                continue
            free = sum(len(g.instances) for g in node.gpus) - sum(
                len(ids) for ids in offer.values()
            )
            if best is None or free < best[0]:  # binpack: the fullest node that fits
                best = (free, node, offer)
        if best is None:
            return metric
        _, node, offer = best
        now = self._clock()
        index = self._bump("allocs")
        alloc = _Alloc(
            id=str(uuid.uuid4()),
            eval_id=eval_id,
            job_id=job["ID"],
            group=tg["Name"],
            index=alloc_index,
            node_id=node.id,
            node_name=node.name,
            job_version=job["Version"],
            cpu=cpu,
            memory=memory,
            devices=offer,
            created=now,
            modified=now,
            create_index=index,
            modify_index=index,
            start_at=now + node.start_delay_s,
            deployment_id=deployment_id if tg.get("Update") else "",
            job_create_index=job["CreateIndex"],
        )
        st.allocs[alloc.id] = alloc
        return None

    @staticmethod
    def _devices(
        node: _Node, requests: list[Json], holding: list[_Alloc]
    ) -> dict[int, list[str]] | None:
        """Free device instances for every request (by device group), or None."""
        taken = {i for a in holding for ids in a.devices.values() for i in ids}
        offer: dict[int, list[str]] = {}
        for request in requests:
            for number, group in enumerate(node.gpus):
                free = [
                    i for i in group.instances if i not in taken and i not in offer.get(number, [])
                ]
                if group.matches(request) and len(free) >= int(request.get("Count", 1)):
                    offer.setdefault(number, []).extend(free[: int(request.get("Count", 1))])
                    break
            else:
                return None
        return offer

    def _start_deployment(self, job: Json) -> None:
        """A new job version of a service job starts a deployment (none for a total of 0)."""
        st = self._state
        previous = self._latest_deployment(job["ID"])
        now = self._clock()
        if previous is not None and previous["Status"] in _ACTIVE_DEPLOYMENT:
            previous.update(
                Status="cancelled",
                StatusDescription="Cancelled due to newer version of job",
                ModifyIndex=self._bump("deployment"),
            )
        groups = [
            tg
            for tg in job["TaskGroups"]
            if tg.get("Update") and tg["Update"].get("MaxParallel", 0) > 0
        ]
        if job["Type"] != "service" or sum(tg["Count"] for tg in groups) == 0:
            return
        index = self._bump("deployment")
        deployment: Json = {
            "ID": str(uuid.uuid4()),
            "Namespace": "default",
            "JobID": job["ID"],
            "JobVersion": job["Version"],
            "JobModifyIndex": job["JobModifyIndex"],
            "JobSpecModifyIndex": job["JobModifyIndex"],
            "JobCreateIndex": job["CreateIndex"],
            "IsMultiregion": False,
            "TaskGroups": {
                tg["Name"]: {
                    "AutoRevert": False,
                    "AutoPromote": False,
                    "ProgressDeadline": tg["Update"]["ProgressDeadline"],
                    "RequireProgressBy": _go_time(now + tg["Update"]["ProgressDeadline"] / NS),
                    "Promoted": False,
                    "PlacedCanaries": None,
                    "DesiredCanaries": 0,
                    "DesiredTotal": tg["Count"],
                    "PlacedAllocs": 0,
                    "HealthyAllocs": 0,
                    "UnhealthyAllocs": 0,
                }
                for tg in groups
            },
            "Status": "running",
            "StatusDescription": "Deployment is running",
            "EvalPriority": job["Priority"],
            "CreateIndex": index,
            "ModifyIndex": index,
            "CreateTime": int(now * NS),
            "ModifyTime": int(now * NS),
            "_progress_by": {
                tg["Name"]: now + tg["Update"]["ProgressDeadline"] / NS for tg in groups
            },
            "_min_healthy": {tg["Name"]: tg["Update"]["MinHealthyTime"] / NS for tg in groups},
        }
        st.deployments[deployment["ID"]] = deployment

    def _drain_allocs(self) -> bool:
        """Nomad's drainer: marks allocations of draining nodes for migration and runs a
        ``node-drain`` evaluation for each job it marked some of.

        Per task group (``drainer/watch_jobs.go handleTaskGroup``): as many as leave
        ``count - migrate.max_parallel`` live allocations with a health; only service
        jobs. On a node whose drain deadline has passed, every live one. Returns
        whether it marked any.
        """
        st = self._state
        now = self._clock()
        draining = {n.id: n for n in st.nodes.values() if n.drain is not None}
        any_marked = False
        jobs = sorted({a.job_id for a in st.allocs.values() if a.node_id in draining and a.live()})
        for job_id in jobs:
            job = st.jobs.get(job_id)
            if job is None:
                continue
            marked: list[_Alloc] = []
            for tg in job["TaskGroups"]:
                members = sorted(
                    (a for a in self._job_allocs(job_id) if a.group == tg["Name"]),
                    key=lambda a: a.create_index,
                )
                healthy = sum(a.live() and a.healthy is not None for a in members)
                drainable = [
                    a for a in members if a.node_id in draining and a.live() and not a.migrate
                ]
                forced = [a for a in drainable if _past(draining[a.node_id].force_at, now)]
                max_parallel = int((tg.get("Migrate") or {}).get("MaxParallel", 1))
                room = healthy - (tg["Count"] - max_parallel) if job["Type"] == "service" else 0
                rest = [a for a in drainable if a not in forced]
                marked += forced + rest[: max(room, 0)]
            for alloc in marked:
                alloc.migrate = True
                alloc.modify_index = self._bump("allocs")
            if marked:
                evaluation = self._new_eval(job_id, "node-drain", job["JobModifyIndex"])
                evaluation["NodeID"] = marked[0].node_id
                self._process(evaluation)
                any_marked = True
        return any_marked

    def _migrate_health_at(self, alloc: _Alloc) -> float | None:
        """When an allocation outside a deployment gets its health (the client's health
        hook with the group's ``migrate`` strategy), for service jobs; else None."""
        job = self._state.jobs.get(alloc.job_id)
        if job is None or job["Type"] != "service" or alloc.started_at is None:
            return None
        tg = _group(job, alloc.group) or {}
        migrate: Json = tg.get("Migrate") or _DEFAULT_MIGRATE
        return alloc.started_at + int(migrate["MinHealthyTime"]) / NS

    def _stop(self, alloc: _Alloc, why: str) -> None:
        alloc.desired, alloc.desired_description = "stop", why
        alloc.stop_at = self._clock() + self._stop_delay_s
        alloc.modify_index = self._bump("allocs")

    def _unblock(self) -> None:
        """Capacity appeared: re-runs every tracked blocked evaluation."""
        for job_id, eval_id in list(self._state.blocked.items()):
            evaluation = self._state.evals.get(eval_id)
            if evaluation is not None and job_id in self._state.jobs:
                self._process(evaluation)

    # ------------------------------------------------------------------- timers

    def _tick(self) -> None:
        """Applies every transition that is due (allocation start/stop, health, deployments)."""
        st = self._state
        now = self._clock()
        freed = False
        for alloc in st.allocs.values():
            if alloc.client == "pending" and alloc.desired == "run" and alloc.start_at <= now:
                alloc.client, alloc.started_at = "running", alloc.start_at
                alloc.modified = alloc.start_at
                alloc.modify_index = self._bump("allocs")
            if (
                alloc.stop_at is not None
                and alloc.stop_at <= now
                and alloc.client not in _TERMINAL_CLIENT
            ):
                alloc.client, alloc.modified = "complete", alloc.stop_at
                alloc.modify_index = self._bump("allocs")
                freed = True
            if alloc.healthy is None and not alloc.deployment_id and alloc.live():
                healthy_at = self._migrate_health_at(alloc)
                if healthy_at is not None and healthy_at <= now:
                    alloc.healthy, alloc.modified = True, healthy_at
                    alloc.modify_index = self._bump("allocs")
        for deployment in st.deployments.values():
            if deployment["Status"] == "running":
                self._watch_deployment(deployment, now)
        marked = self._drain_allocs()
        if freed:
            self._finish_drains()
            self._unblock()
        if freed or marked:
            self._cond.notify_all()

    def _watch_deployment(self, deployment: Json, now: float) -> None:
        done = True
        changed = False
        for name, state in deployment["TaskGroups"].items():
            members = [
                a
                for a in self._job_allocs(deployment["JobID"])
                if a.deployment_id == deployment["ID"] and a.group == name and a.live()
            ]
            for alloc in members:
                if alloc.healthy is not None or alloc.started_at is None:
                    continue
                since = max(alloc.started_at, deployment["CreateTime"] / NS)
                healthy_at = since + deployment["_min_healthy"][name]
                if healthy_at <= now:
                    alloc.healthy, alloc.modified = True, healthy_at
                    alloc.modify_index = self._bump("allocs")
                    progress_by = max(
                        deployment["_progress_by"][name],
                        healthy_at + state["ProgressDeadline"] / NS,
                    )
                    deployment["_progress_by"][name] = progress_by
                    state["RequireProgressBy"] = _go_time(progress_by)
            placed = len(members)
            healthy = sum(a.healthy is True for a in members)
            if (state["PlacedAllocs"], state["HealthyAllocs"]) != (placed, healthy):
                state.update(PlacedAllocs=placed, HealthyAllocs=healthy)
                changed = True
            if healthy < state["DesiredTotal"]:
                done = False
                if now > deployment["_progress_by"][name]:
                    deployment.update(
                        Status="failed", StatusDescription="Failed due to progress deadline"
                    )
                    changed = True
        if done:
            deployment.update(
                Status="successful", StatusDescription="Deployment completed successfully"
            )
            changed = True
        if changed:
            deployment.update(ModifyIndex=self._bump("deployment"), ModifyTime=int(now * NS))

    def _finish_drains(self) -> None:
        for node in self._state.nodes.values():
            if node.drain is None:
                continue
            if not any(
                a.node_id == node.id and a.holds_resources() for a in self._state.allocs.values()
            ):
                node.drain = None
                if node.last_drain:
                    node.last_drain.update(Status="complete", UpdatedAt=_go_time(self._clock()))
                node.modify_index = self._bump("nodes")

    def _next_due(self) -> float | None:
        times = [
            a.start_at
            for a in self._state.allocs.values()
            if a.client == "pending" and a.desired == "run"
        ]
        times += [
            a.stop_at
            for a in self._state.allocs.values()
            if a.stop_at and a.client not in _TERMINAL_CLIENT
        ]
        for alloc in self._state.allocs.values():
            if alloc.healthy is None and not alloc.deployment_id and alloc.live():
                healthy_at = self._migrate_health_at(alloc)
                if healthy_at is not None:
                    times.append(healthy_at)
            node = self._state.nodes.get(alloc.node_id)
            if node and node.force_at is not None and alloc.live() and not alloc.migrate:
                times.append(node.force_at)
        for d in self._state.deployments.values():
            if d["Status"] == "running":
                times += list(d["_progress_by"].values())
                times += [
                    max(a.started_at, d["CreateTime"] / NS) + d["_min_healthy"][a.group]
                    for a in self._job_allocs(d["JobID"])
                    if a.deployment_id == d["ID"] and a.started_at is not None and a.healthy is None
                ]
        return min(times, default=None)

    # ----------------------------------------------------------------- helpers

    def _bump(self, table: str) -> int:
        self._state.index += 1
        self._state.tables[table] = self._state.index
        return self._state.index

    def _table(self, name: str) -> int:
        return self._state.tables.get(name, 1)

    def _job_allocs(self, job_id: str) -> Iterator[_Alloc]:
        return (a for a in self._state.allocs.values() if a.job_id == job_id)

    def _latest_deployment(self, job_id: str) -> Json | None:
        mine = [d for d in self._state.deployments.values() if d["JobID"] == job_id]
        latest = max(mine, key=lambda d: d["CreateIndex"], default=None)
        if latest is None:
            return None
        return latest


def _count(metric: Json, key: str, what: str) -> None:
    metric[key] = metric[key] or {}
    metric[key][what] = metric[key].get(what, 0) + 1


def _group(job: Json, name: str) -> Json | None:
    return next((tg for tg in job["TaskGroups"] if tg["Name"] == name), None)


def _spec(job: Json) -> Json:
    """The parts of a job whose change makes a new version."""
    skip = {
        "Version",
        "CreateIndex",
        "ModifyIndex",
        "JobModifyIndex",
        "SubmitTime",
        "Status",
        "Stable",
    }
    spec = {k: copy.deepcopy(v) for k, v in job.items() if k not in skip}
    for tg in spec["TaskGroups"]:
        if tg.get("Scaling"):
            tg["Scaling"] = {
                k: v for k, v in tg["Scaling"].items() if k in ("Min", "Max", "Enabled", "Policy")
            }
    return json.loads(json.dumps(spec, sort_keys=True))  # type: ignore[no-any-return]


def _past(when: float | None, now: float) -> bool:
    return when is not None and when <= now


def _parse_bool(raw: str) -> bool:
    """Go's ``strconv.ParseBool``."""
    if raw in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if raw in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise ValueError(raw)


def _deregister_answer(eval_id: str, eval_index: int, job_modify_index: int, index: int) -> Json:
    """``structs.JobDeregisterResponse``."""
    return {
        "EvalID": eval_id,
        "EvalCreateIndex": eval_index,
        "JobModifyIndex": job_modify_index,
        "VolumeEvalID": "",
        "VolumeEvalIndex": 0,
        "Index": index,
        "KnownLeader": False,
        "LastContact": 0,
    }


def _register_answer(evaluation: Json, job_modify_index: int, index: int) -> Json:
    return {
        "EvalID": evaluation["ID"],
        "EvalCreateIndex": evaluation["CreateIndex"],
        "JobModifyIndex": job_modify_index,
        "Warnings": "",
        "Index": index,
        "KnownLeader": False,
        "LastContact": 0,
    }


_DEFAULT_UPDATE = {
    "Stagger": 30 * NS,
    "MaxParallel": 1,
    "HealthCheck": "checks",
    "MinHealthyTime": 10 * NS,
    "HealthyDeadline": 300 * NS,
    "ProgressDeadline": 600 * NS,
    "AutoRevert": False,
    "AutoPromote": False,
    "Canary": 0,
}
_DEFAULT_MIGRATE = {
    "MaxParallel": 1,
    "HealthCheck": "checks",
    "MinHealthyTime": 10 * NS,
    "HealthyDeadline": 300 * NS,
}


def _canonicalize(job: Json) -> Json:
    """``api.Job.Canonicalize`` for the fields the double uses."""
    job = copy.deepcopy(job)
    defaults: Json = {
        "Name": job["ID"],
        "Namespace": "default",
        "Region": "global",
        "Type": "service",
        "Priority": 50,
        "Datacenters": ["*"],
        "NodePool": "default",
        "Stop": False,
        "AllAtOnce": False,
        "Meta": None,
        "Constraints": None,
        "ParentID": "",
        "Periodic": None,
        "ParameterizedJob": None,
        "Dispatched": False,
        "Stable": False,
    }
    for key, value in defaults.items():
        if job.get(key) in (None, "", []):
            job[key] = copy.deepcopy(value)
    job_update = job.get("Update")
    if job_update is None and job["Type"] == "service":
        job_update = dict(_DEFAULT_UPDATE)
    job["Update"] = {k: (job_update or {}).get(k, 0) for k in ("Stagger", "MaxParallel")}
    for tg in job.get("TaskGroups") or []:
        if tg.get("Count") is None:
            tg["Count"] = 1
        if job["Type"] == "service":
            merged = {**_DEFAULT_UPDATE, **(job_update or {}), **(tg.get("Update") or {})}
            tg["Update"] = merged if merged["MaxParallel"] > 0 else None
            tg["Migrate"] = {**_DEFAULT_MIGRATE, **(tg.get("Migrate") or {})}
        scaling = tg.get("Scaling")
        if scaling:
            tg["Scaling"] = {
                "ID": scaling.get("ID") or str(uuid.uuid4()),
                "Type": "horizontal",
                "Target": {},
                "Policy": scaling.get("Policy") or {},
                "Min": tg["Count"] if scaling.get("Min") is None else int(scaling["Min"]),
                "Max": int(scaling["Max"]),
                "Enabled": True if scaling.get("Enabled") is None else bool(scaling["Enabled"]),
                "CreateIndex": 0,
                "ModifyIndex": 0,
            }
        else:
            tg["Scaling"] = None
    job["TaskGroups"] = job.get("TaskGroups") or []
    return job


def _decode(body: bytes) -> Json:
    if not body.strip():
        raise NomadError(400, "EOF")
    try:
        value = json.loads(body)
    except ValueError as exc:
        raise NomadError(400, f"invalid character in JSON body: {exc}") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise NomadError(
            400, f"json: cannot unmarshal {_json_type(value)} into Go value of type map"
        )
    return value


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, float):
        return f"number {value}"
    if isinstance(value, int):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _decode_scaling_request(body: bytes) -> Json:
    """Decodes ``api.ScalingRequest`` with Go's type rules (``Error`` is a bool)."""
    request = _decode(body)
    types: dict[str, tuple[type | tuple[type, ...], str]] = {
        "Count": (int, "int64"),
        "Target": (dict, "map[string]string"),
        "Error": (bool, "bool"),
        "Message": (str, "string"),
        "Meta": (dict, "map[string]interface {}"),
        "PolicyOverride": (bool, "bool"),
    }
    for key, (kind, go_type) in types.items():
        value = request.get(key)
        if value is None:
            continue
        wrong = not isinstance(value, kind) or (kind is int and isinstance(value, bool))
        if wrong:
            raise NomadError(
                400,
                f"json: cannot unmarshal {_json_type(value)} into Go struct field "
                f"ScalingRequest.{key} of type {go_type}",
            )
    for key, value in (request.get("Target") or {}).items():
        if not isinstance(value, str):
            raise NomadError(
                400,
                f"json: cannot unmarshal {_json_type(value)} into Go struct field "
                f"ScalingRequest.Target of type string",
            )
        request["Target"][key] = value
    return request


class _Handler(BaseHTTPRequestHandler):
    """Turns HTTP requests into :meth:`NomadDouble.handle` calls."""

    double: NomadDouble

    def _serve(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        try:
            result, index = self.double.handle(self.command, url.path, query, body)
        except NomadError as exc:
            self._send(exc.code, exc.message.encode(), "text/plain; charset=utf-8", {})
            return
        headers = {"X-Nomad-Index": str(index)}
        if self.command == "GET":
            headers.update({"X-Nomad-KnownLeader": "true", "X-Nomad-LastContact": "0"})
        self._send(200, json.dumps(result).encode(), "application/json", headers)

    def _send(self, code: int, payload: bytes, content_type: str, headers: dict[str, str]) -> None:
        self.send_response(code, HTTPStatus(code).phrase)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_PUT = do_POST = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: tests read the state, not access logs."""
