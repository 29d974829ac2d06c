"""A test double of the Consul HTTP API: an in-process HTTP server, NOT a Consul agent.

It follows the Consul HTTP API documentation (``hashicorp/consul``
``website/content/api-docs``: ``agent/service.mdx``, ``agent/check.mdx``,
``health.mdx``, ``session.mdx``, ``kv.mdx``, ``features/blocking.mdx``; main
branch, endpoints unchanged since Consul 1.16) and, where the docs are silent,
the agent source (``agent/agent_endpoint.go``, ``agent/session_endpoint.go``,
``agent/consul/state/kvs.go``). Implemented, with the documented shapes:

* ``PUT /v1/agent/service/register`` (``Check``/``Checks``, generated check IDs
  ``service:<id>`` / ``service:<id>:<n>``, initial status ``critical``, status kept
  on re-registration, ``?replace-existing-checks``), ``/deregister/:id``,
  ``/maintenance/:id`` (check ``_service_maintenance:<id>``), ``GET /v1/agent/service/:id``;
* ``PUT /v1/agent/check/pass|warn|fail/:id`` and ``/update/:id`` (TTL checks only:
  a check without TTL is a 500), TTL expiry, ``DeregisterCriticalServiceAfter`` reaping;
* unknown service and check IDs on those writes answer as the API docs (and
  ../shared/reference/consul_nomad_api.md) describe: deregistering an unknown service
  is a no-op 200, a TTL update of an unknown check a 500; with ``acl_vetting=True``
  they answer 404 ``Unknown service ID "<id>". Ensure that the service ID is passed,
  not the service name.`` / ``Unknown check ID "<id>". Ensure that the check ID is
  passed, not the check name.`` instead, as the agent source reads
  (``vetServiceUpdateWithAuthorizer`` / ``vetCheckUpdateWithAuthorizer`` in
  ``agent/acl.go``, run with the allow-all authorizer when ACLs are off). Client code
  must take either;
* ``GET /v1/health/service/:name`` with ``passing``, ``tag``, a subset of ``filter``;
* the catalog reads (``catalog.mdx``): ``GET /v1/catalog/services`` (service name to
  the union of its instances' tags, sorted; ``[]`` when none) and
  ``GET /v1/catalog/service/:name`` (``ServiceNode`` entries), both blocking, with
  ``node-meta`` and the ``filter`` subset against the ``ServiceNode`` shape (``tag``
  too on the second). The services list blocks on the catalog index, which check
  status changes move as well as registrations (a return is no guarantee of change);
  that is what Prometheus's ``consul_sd_configs`` reads, with the health endpoint;
* sessions (``create`` with the ``LockDelay``/``Checks`` quirks, ``renew``,
  ``destroy``, ``info``; TTL and check invalidation) and KV (``acquire``,
  ``release``, ``cas``, ``flags``, ``recurse``, ``raw``, lock-delay);
* blocking queries (``index``/``wait``: a ``wait`` unset or not positive is 5 min,
  longer than 10 min is 10 min, plus wait/16 jitter; index never 0) and the
  ``X-Consul-*`` headers; errors are ``text/plain``.

gRPC checks are probed for real with ``grpc.health.v1.Health/Check`` on a
thread per check when ``grpc_probes`` is true; HTTP, TCP and script checks are
accepted but never run (they keep their initial status). Left out: ACLs,
namespaces/partitions, datacenters, catalog writes and the node and datacenter
lists, the ``consul`` service a server agent lists, Connect, prepared
queries, transactions, ``?keys``/``?separator``, consistency modes, agent
caching, check output rate limiting, the random stagger before a first probe,
and most of the bexpr ``filter`` language (only ``Sel == "v"``, ``!=``,
``contains``, ``"v" in Sel`` joined by ``and``; anything else answers 400).
Agent tunables that Consul's own tests override (minimum check interval,
reaper interval, minimum deregister timeout, session TTL minimum) are
constructor arguments. Test controls: :meth:`ConsulDouble.pause` (refused
connections, 500s, or a blackhole),
:meth:`~ConsulDouble.set_check_status`, :meth:`~ConsulDouble.kill_session`,
:meth:`~ConsulDouble.node_fail`, :meth:`~ConsulDouble.wipe` and friends.
"""

from __future__ import annotations

import base64
import contextlib
import json
import random
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = ["ConsulDouble", "RequestRecord", "blocking_wait", "parse_duration"]

Json = dict[str, Any]
Response = tuple[int, dict[str, str], bytes]
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_STATUSES = ("passing", "warning", "critical")
_META_KEY = re.compile(r"^[a-zA-Z0-9_-]+$")
_SERF = "serfHealth"
_MAX_LOCK_DELAY_NS = 60_000_000_000
"""``structs.MaxLockDelay``, enforced when a session is invalidated."""
_REPEATABLE = ("tag", "node-meta")
"""Query parameters that may be given several times."""
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def parse_duration(text: str) -> float:
    """Parses a Go duration (``"5s"``, ``"1m30s"``, ``"100ms"``) into seconds."""
    sign, body = (-1.0, text[1:]) if text.startswith("-") else (1.0, text.lstrip("+"))
    if body == "0":
        return 0.0
    parts = _DURATION.findall(body)
    if not body or "".join(n + u for n, u in parts) != body:
        raise ValueError(f'time: invalid duration "{text}"')
    return sign * sum(float(n) * _UNITS[u] for n, u in parts)


def blocking_wait(query: dict[str, str]) -> float:
    """Seconds a blocking query waits before jitter (``agent/consul/rpc.go blockingQuery``).

    ``?wait`` unset or not positive means the default, 5 min; longer than
    ``max_query_time`` (10 min) is cut to it; a value that is not a Go duration is a 400.
    """
    try:
        wait = parse_duration(query["wait"]) if query.get("wait") else 0.0
    except ValueError as exc:
        raise _HttpError(400, "Invalid wait time") from exc
    return min(wait, 600.0) if wait > 0 else 300.0


def _parse_bool(raw: str) -> bool:
    """Go's ``strconv.ParseBool``."""
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ValueError(raw)


def _norm(obj: Any) -> Json:
    """Keys folded like Consul's decoder: case-insensitive, snake_case accepted."""
    if not isinstance(obj, dict):
        raise _HttpError(400, "Request decode failed: body is not a JSON object")
    return {k.replace("_", "").lower(): v for k, v in obj.items()}


def _seconds(value: Any, name: str) -> float:
    """A duration field: a Go duration string or a number of nanoseconds."""
    try:
        return parse_duration(value) if isinstance(value, str) else float(value or 0) / 1e9
    except (TypeError, ValueError) as exc:
        raise _HttpError(400, f"Request decode failed: {name}: {exc}") from exc


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Dropped(Exception):
    """The connection is dropped without an answer (agent gone or restarted)."""


@dataclass(frozen=True)
class RequestRecord:
    """One request the double received."""

    method: str
    path: str
    query: dict[str, str]
    paused: bool
    headers: dict[str, str] = field(default_factory=dict)
    """The request headers (``X-Consul-Token`` among them)."""


@dataclass
class _Check:
    check_id: str
    name: str
    status: str
    service_id: str = ""
    service_name: str = ""
    output: str = ""
    notes: str = ""
    type: str = ""
    ttl: float = 0.0
    grpc: str = ""
    interval: float = 0.0
    timeout: float = 10.0
    deregister_after: float = 0.0
    definition: Json = field(default_factory=dict)
    critical_since: float | None = None
    ttl_deadline: float | None = None
    create_index: int = 0
    modify_index: int = 0
    prober: threading.Event | None = None


@dataclass
class _Service:
    id: str
    name: str
    tags: list[str]
    address: str
    port: int
    meta: dict[str, str]
    weights: Json
    create_index: int
    modify_index: int


@dataclass
class _Session:
    id: str
    name: str
    lock_delay_ns: int
    behavior: str
    ttl: str
    ttl_s: float
    node_checks: list[str]
    checks: list[str]
    """The deprecated ``Checks`` field as kept after ``fixupEmptySessionChecks``."""
    service_checks: list[Json] | None
    create_index: int
    expires_at: float | None

    def check_ids(self) -> list[str]:
        """Every check the session depends on (``Session.CheckIDs``)."""
        service = [str(c.get("ID", "")) for c in self.service_checks or []]
        return self.checks + self.node_checks + service


@dataclass
class _Entry:
    key: str
    value: bytes | None
    flags: int
    session: str | None
    lock_index: int
    create_index: int
    modify_index: int


class ConsulDouble:
    """In-process double of one Consul agent (single node, single datacenter)."""

    def __init__(
        self,
        *,
        node: str = "voxmesh-double-node",
        node_address: str = "127.0.0.1",
        datacenter: str = "dc1",
        grpc_probes: bool = True,
        min_check_interval: float = 1.0,
        reap_interval: float = 30.0,
        deregister_min: float = 60.0,
        session_ttl_min: float = 10.0,
        session_ttl_multiplier: float = 2.0,
        tick: float = 0.02,
        rng: random.Random | None = None,
        acl_vetting: bool = False,
    ) -> None:
        self.node, self.node_address, self.datacenter = node, node_address, datacenter
        self._acl_vetting = acl_vetting
        self._grpc_probes, self._min_interval = grpc_probes, min_check_interval
        self._reap_interval, self._deregister_min = reap_interval, deregister_min
        self._ttl_min, self._ttl_multiplier, self._tick = (
            session_ttl_min,
            session_ttl_multiplier,
            tick,
        )
        self._rng = rng or random.Random(0)
        self._cond = threading.Condition()
        self._port = 0
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []
        self._stopped = threading.Event()
        self._connections: set[socket.socket] = set()
        self._pause: Literal["refuse", "error", "hang"] | None = None
        self._gen = 0
        self._renew_ttl: str | None = None
        self.requests: list[RequestRecord] = []
        self._reset_state()

    # ----------------------------------------------------------- lifecycle
    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:40123``."""
        return f"http://127.0.0.1:{self._port}"

    @property
    def port(self) -> int:
        """The TCP port (fixed after the first :meth:`start`)."""
        return self._port

    def start(self) -> None:
        """Starts serving and the housekeeping (TTL, sessions, reaper) thread."""
        self._stopped.clear()
        self._listen()
        housekeeping = threading.Thread(
            target=self._housekeep, name="consul-double-hk", daemon=True
        )
        housekeeping.start()
        self._threads.append(housekeeping)

    def stop(self) -> None:
        """Stops everything; in-flight requests are dropped. Idempotent."""
        self._stopped.set()
        with self._cond:
            self._stop_probers()
            self._gen += 1
            self._cond.notify_all()
        self._unlisten()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()

    def pause(self, mode: Literal["refuse", "error", "hang"] = "refuse") -> None:
        """Simulates Consul going away: ``refuse`` closes the port and drops
        connections; ``error`` answers every request ``500 No cluster leader``;
        ``hang`` (a network blackhole) takes requests and never answers them, until
        :meth:`resume` drops them."""
        with self._cond:
            self._pause = mode
            self._gen += 1
            self._cond.notify_all()
        if mode == "refuse":
            self._unlisten()

    def resume(self) -> None:
        """Ends :meth:`pause`; state is kept, the port is the same."""
        refused = self._pause == "refuse"
        with self._cond:
            self._pause = None
            self._cond.notify_all()
        if refused:
            self._listen()

    def _listen(self) -> None:
        self._server = _Server(("127.0.0.1", self._port), self)
        self._port = self._server.server_address[1]
        serve = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="consul-double-http"
        )
        serve.daemon = True
        serve.start()

    def _unlisten(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        self._drop_connections()

    def _drop_connections(self) -> None:
        with self._cond:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    # ------------------------------------------------------- test controls
    def set_check_status(self, check_id: str, status: str, output: str = "") -> None:
        """Sets a check's status as if its probe had reported it."""
        with self._cond:
            self._set_status(self._checks[check_id], status, output)

    def kill_session(self, session_id: str) -> None:
        """Invalidates a session as a failed check or TTL expiry would (lock-delay applies)."""
        with self._cond:
            self._invalidate(session_id)

    def kill_leader_session(self, key: str) -> str:
        """Invalidates the session holding the lock on ``key``; returns its ID."""
        with self._cond:
            holder = self._kv[key].session
            if holder is None:
                raise KeyError(f"{key} is not locked")
            self._invalidate(holder)
            return holder

    def node_fail(self) -> None:
        """Marks ``serfHealth`` critical: the node's services fail ``?passing``."""
        self.set_check_status(_SERF, "critical", "Agent not live or unreachable")

    def node_recover(self) -> None:
        """Marks ``serfHealth`` passing again."""
        self.set_check_status(_SERF, "passing", "Agent alive and reachable")

    def wipe(self) -> None:
        """Simulates a ``-dev`` agent restart: all state lost, indexes start over
        low, open connections dropped."""
        with self._cond:
            self._stop_probers()
            self._reset_state()
            self._gen += 1
            self._cond.notify_all()
        self._drop_connections()

    def advance_index(self, count: int) -> None:
        """Moves the Raft index forward, as writes elsewhere in a cluster would."""
        with self._cond:
            self._index += count

    def set_session_renew_ttl(self, ttl: str | None) -> None:
        """Makes renew answer a higher TTL, as a loaded server may (None: as created)."""
        with self._cond:
            self._renew_ttl = ttl

    def service(self, service_id: str) -> Json | None:
        """The agent's view of a service (``GET /v1/agent/service/:id`` shape)."""
        with self._cond:
            svc = self._services.get(service_id)
            return None if svc is None else self._agent_service_json(svc)

    def check(self, check_id: str) -> Json | None:
        """A check as JSON plus its registration ``Definition`` (normalised keys)."""
        with self._cond:
            chk = self._checks.get(check_id)
            return None if chk is None else {**self._check_json(chk), "Definition": chk.definition}

    def critical_for(self, check_id: str) -> float | None:
        """Seconds the check has counted as critical towards its reaping (the agent's
        ``CheckState.CriticalFor``; no API shows it), None while its clock is not running."""
        with self._cond:
            chk = self._checks.get(check_id)
            if chk is None or chk.critical_since is None:
                return None
            return time.monotonic() - chk.critical_since

    def session_ids(self) -> list[str]:
        """IDs of the live sessions."""
        with self._cond:
            return sorted(self._sessions)

    def kv_entry(self, key: str) -> Json | None:
        """The KV entry as ``GET /v1/kv/:key`` shows it, or None."""
        with self._cond:
            entry = self._kv.get(key)
            return None if entry is None else self._entry_json(entry)

    # -------------------------------------------------------------- state
    def _reset_state(self) -> None:
        self._index = 1
        self._catalog_index = self._kv_index = self._session_index = 1
        self._svc_index: dict[str, int] = {}
        self._services: dict[str, _Service] = {}
        self._checks: dict[str, _Check] = {}
        self._sessions: dict[str, _Session] = {}
        self._kv: dict[str, _Entry] = {}
        self._lock_delay: dict[str, float] = {}
        serf = _Check(_SERF, "Serf Health Status", "passing", output="Agent alive and reachable")
        self._checks[_SERF] = serf
        self._next_reap = time.monotonic() + self._reap_interval

    def _bump(self) -> int:
        self._index += 1
        self._cond.notify_all()
        return self._index

    def _touch(self, *names: str) -> int:
        idx = self._bump()
        self._catalog_index = idx
        for name in names or tuple({s.name for s in self._services.values()}):
            self._svc_index[name] = idx
        return idx

    def _set_status(self, chk: _Check, status: str, output: str) -> None:
        # As the agent's UpdateCheck (agent/local/state.go): the critical clock is kept
        # on every update, a repeated one included, and only updates start it.
        if status != "critical":
            chk.critical_since = None
        elif chk.critical_since is None:
            chk.critical_since = time.monotonic()
        chk.output = output
        if status == chk.status:
            return
        chk.status = status
        chk.modify_index = self._touch(*([chk.service_name] if chk.service_id else []))
        if status == "critical":
            for sess in list(self._sessions.values()):
                if chk.check_id in sess.check_ids():
                    self._invalidate(sess.id)

    def _remove_service(self, service_id: str) -> None:
        svc = self._services.pop(service_id, None)
        if svc is None:
            return
        for chk in [c for c in self._checks.values() if c.service_id == service_id]:
            self._remove_check(chk)
        self._touch(svc.name)

    def _remove_check(self, chk: _Check) -> None:
        del self._checks[chk.check_id]
        if chk.prober is not None:
            chk.prober.set()
        for sess in list(self._sessions.values()):
            if chk.check_id in sess.check_ids():
                self._invalidate(sess.id)

    def _stop_probers(self) -> None:
        for chk in self._checks.values():
            if chk.prober is not None:
                chk.prober.set()

    def _invalidate(self, session_id: str) -> None:
        sess = self._sessions.pop(session_id, None)
        if sess is None:
            return
        idx = self._bump()
        self._session_index = idx
        # The stored LockDelay is not capped; invalidation enforces MaxLockDelay (60s).
        until = time.monotonic() + min(sess.lock_delay_ns, _MAX_LOCK_DELAY_NS) / 1e9
        for entry in [e for e in self._kv.values() if e.session == session_id]:
            if sess.lock_delay_ns:
                self._lock_delay[entry.key] = until
            if sess.behavior == "delete":
                del self._kv[entry.key]
            else:
                entry.session, entry.modify_index = None, idx
        self._kv_index = idx

    def _housekeep(self) -> None:
        while not self._stopped.wait(self._tick):
            now = time.monotonic()
            with self._cond:
                for chk in list(self._checks.values()):
                    if chk.ttl_deadline is not None and now > chk.ttl_deadline:
                        chk.ttl_deadline = None
                        self._set_status(chk, "critical", "TTL expired")
                for sess in list(self._sessions.values()):
                    if sess.expires_at is not None and now > sess.expires_at:
                        self._invalidate(sess.id)
                if now >= self._next_reap:
                    self._next_reap = now + self._reap_interval
                    self._reap(now)

    def _reap(self, now: float) -> None:
        for chk in list(self._checks.values()):
            timeout = max(chk.deregister_after, self._deregister_min)
            if (
                chk.deregister_after
                and chk.critical_since is not None
                and now - chk.critical_since >= timeout
                and chk.service_id in self._services
            ):
                self._remove_service(chk.service_id)

    def _probe(
        self, check_id: str, target: str, interval: float, timeout: float, stop: threading.Event
    ) -> None:
        address, _, service = target.partition("/")
        channel = grpc.insecure_channel(address)
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            while not stop.is_set():
                try:
                    reply = stub.Check(
                        health_pb2.HealthCheckRequest(service=service), timeout=timeout
                    )
                    ok = reply.status == health_pb2.HealthCheckResponse.SERVING
                    status_name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                    output = f"gRPC check {target}: " + (
                        "success" if ok else f"status {status_name}"
                    )
                except grpc.RpcError as exc:
                    ok, output = False, f"gRPC check {target}: failed with error: {exc.code()}"
                with self._cond:
                    chk = self._checks.get(check_id)
                    if chk is not None and chk.prober is stop:
                        self._set_status(chk, "passing" if ok else "critical", output)
                stop.wait(interval)
        finally:
            channel.close()

    # ------------------------------------------------------------- HTTP
    def _handle(
        self, method: str, raw_path: str, body: bytes, headers: dict[str, str] | None = None
    ) -> Response:
        parts = urlsplit(raw_path)
        path = unquote(parts.path)
        # One value per parameter; the repeatable ones keep all, newline-joined.
        query = {
            k: "\n".join(v) if k in _REPEATABLE else v[-1]
            for k, v in parse_qs(parts.query, keep_blank_values=True).items()
        }
        with self._cond:
            gen = self._gen
            paused = self._pause is not None
            self.requests.append(RequestRecord(method, path, query, paused, dict(headers or {})))
            self._blackhole()
            if self._pause == "refuse" or self._stopped.is_set():
                raise _Dropped
            if self._pause == "error":
                return _text(500, "No cluster leader")
            try:
                return self._route(method, path, query, body, gen)
            except _HttpError as exc:
                return _text(exc.status, exc.message)

    def _blackhole(self) -> None:
        """While paused with ``hang``, holds the request; then drops it unanswered."""
        if self._pause != "hang":
            return
        while self._pause == "hang" and not self._stopped.is_set():
            self._cond.wait()
        raise _Dropped  # a request lost in the blackhole is never answered

    def _route(
        self, method: str, path: str, query: dict[str, str], body: bytes, gen: int
    ) -> Response:
        allowed = False
        for verb, pattern, handler in self._routes():
            match = re.fullmatch(pattern, path)
            if match is not None and verb == method:
                return handler(query, body, gen, *match.groups())
            allowed = allowed or match is not None
        if allowed:
            raise _HttpError(405, f"method {method} not allowed")
        return _text(404, "404 page not found")

    def _routes(self) -> list[tuple[str, str, Callable[..., Response]]]:
        return [
            ("PUT", r"/v1/agent/service/register", self._register),
            ("PUT", r"/v1/agent/service/deregister/(.+)", self._deregister),
            ("PUT", r"/v1/agent/service/maintenance/(.*)", self._maintenance),
            ("GET", r"/v1/agent/service/(.+)", self._agent_service),
            ("PUT", r"/v1/agent/check/(pass|warn|fail)/(.+)", self._ttl_update),
            ("PUT", r"/v1/agent/check/update/(.+)", self._ttl_update_body),
            ("GET", r"/v1/health/service/(.+)", self._health),
            ("GET", r"/v1/catalog/services", self._catalog_services),
            ("GET", r"/v1/catalog/service/(.+)", self._catalog_service),
            ("PUT", r"/v1/session/create", self._session_create),
            ("PUT", r"/v1/session/renew/(.+)", self._session_renew),
            ("PUT", r"/v1/session/destroy/(.+)", self._session_destroy),
            ("GET", r"/v1/session/info/(.+)", self._session_info),
            ("GET", r"/v1/kv/(.*)", self._kv_get),
            ("PUT", r"/v1/kv/(.*)", self._kv_put),
            ("DELETE", r"/v1/kv/(.*)", self._kv_delete),
        ]

    def _block(self, query: dict[str, str], gen: int, index_of: Callable[[], int]) -> None:
        """Consul blocking-query semantics; the caller holds ``self._cond``."""
        wait = blocking_wait(query)
        try:
            min_index = int(query.get("index") or 0)
        except ValueError as exc:
            raise _HttpError(400, "Invalid index") from exc
        if min_index <= 0:
            return
        deadline = time.monotonic() + wait + self._rng.uniform(0, wait / 16)
        while index_of() <= min_index:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._cond.wait(remaining)
            if gen != self._gen:
                self._blackhole()
                if self._pause == "error":
                    raise _HttpError(500, "No cluster leader")
                raise _Dropped

    def _register(self, query: dict[str, str], body: bytes, gen: int) -> Response:
        args = _norm(_decode(body))
        name = args.get("name") or ""
        if not name:
            raise _HttpError(400, "Missing service name")
        address = args.get("address") or ""
        if address in ("0.0.0.0", "::", "[::]"):
            raise _HttpError(400, "Invalid service address")
        meta = {str(k): str(v) for k, v in (args.get("meta") or {}).items()}
        _validate_meta(meta)
        defs = ([args["check"]] if args.get("check") else []) + list(args.get("checks") or [])
        sid = args.get("id") or name
        new_checks = [
            self._check_from(_norm(d), sid, name, i, len(defs)) for i, d in enumerate(defs)
        ]
        old = self._services.get(sid)
        idx = self._touch(name, *([old.name] if old else []))
        weights = args.get("weights") or {"Passing": 1, "Warning": 1}
        self._services[sid] = _Service(
            sid, name, list(args.get("tags") or []), address, int(args.get("port") or 0),
            meta, weights, old.create_index if old else idx, idx,
        )  # fmt: skip
        if query.get("replace-existing-checks") in ("", "true"):
            keep = {c.check_id for c in new_checks}
            for chk in [c for c in self._checks.values() if c.service_id == sid]:
                if chk.check_id not in keep:
                    self._remove_check(chk)
        for chk in new_checks:
            previous = self._checks.get(chk.check_id)
            if previous is not None:
                # The agent restores status and output from its snapshot, in a new
                # check state whose critical clock starts again at the next update.
                chk.status, chk.output = previous.status, previous.output
                if previous.prober is not None:
                    previous.prober.set()
            chk.create_index = chk.modify_index = idx
            self._checks[chk.check_id] = chk
            if chk.grpc and self._grpc_probes:
                chk.prober = threading.Event()
                interval, timeout = max(chk.interval, self._min_interval), chk.timeout
                args_ = (chk.check_id, chk.grpc, interval, timeout, chk.prober)
                threading.Thread(target=self._probe, args=args_, daemon=True).start()
        return _empty()

    def _check_from(self, d: Json, sid: str, name: str, i: int, total: int) -> _Check:
        status = d.get("status") or "critical"
        if status not in _STATUSES:
            raise _HttpError(400, "Status for checks must 'passing', 'warning', 'critical'")
        ttl, interval = _seconds(d.get("ttl"), "TTL"), _seconds(d.get("interval"), "Interval")
        kind = next((k for k in ("grpc", "http", "tcp", "udp", "args", "h2ping") if d.get(k)), "")
        if interval > 0 and ttl > 0:
            raise _HttpError(400, "Invalid check: Interval and TTL cannot both be specified")
        if kind and interval <= 0:
            msg = "Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or gRPC checks"
            raise _HttpError(400, f"Invalid check: {msg}")
        if not kind and ttl <= 0:
            raise _HttpError(400, "Invalid check: TTL must be > 0 for TTL checks")
        check_id = (
            d.get("checkid") or d.get("id") or f"service:{sid}" + (f":{i + 1}" if total > 1 else "")
        )
        return _Check(
            check_id=check_id, name=d.get("name") or f"Service '{name}' check", status=status,
            service_id=sid, service_name=name, notes=d.get("notes") or "",
            type="ttl" if ttl else ("script" if kind == "args" else kind), ttl=ttl,
            grpc=d.get("grpc") or "", interval=interval,
            timeout=_seconds(d.get("timeout"), "Timeout") or 10.0,
            deregister_after=_seconds(d.get("deregistercriticalserviceafter"), "Deregister"),
            definition=d,
            ttl_deadline=time.monotonic() + ttl if ttl else None,
        )  # fmt: skip

    def _deregister(self, query: dict[str, str], body: bytes, gen: int, sid: str) -> Response:
        if self._acl_vetting:
            self._known_service(sid)
        self._remove_service(sid)  # "If the service does not exist, no action is taken."
        return _empty()

    def _known_service(self, sid: str) -> _Service:
        """The service, or a 404 (``vetServiceUpdateWithAuthorizer``'s unless ``acl_vetting``
        is off)."""
        svc = self._services.get(sid)
        if svc is None and self._acl_vetting:
            raise _HttpError(
                404,
                f'Unknown service ID "{sid}". '
                "Ensure that the service ID is passed, not the service name.",
            )
        if svc is None:
            raise _HttpError(404, f'No service registered with ID "{sid}"')
        return svc

    def _maintenance(self, query: dict[str, str], body: bytes, gen: int, sid: str) -> Response:
        if not sid:
            raise _HttpError(400, "Missing service ID")
        if "enable" not in query:
            raise _HttpError(400, "Missing value for enable")
        try:
            enable = _parse_bool(query["enable"])
        except ValueError as exc:
            raise _HttpError(400, f'Invalid value for enable: "{query["enable"]}"') from exc
        svc = self._known_service(sid)
        check_id = f"_service_maintenance:{sid}"
        if enable and check_id not in self._checks:
            reason = query.get("reason") or (
                "Maintenance mode is enabled for this service, "
                "but no reason was provided. This is a default message."
            )
            idx = self._touch(svc.name)
            self._checks[check_id] = _Check(
                check_id, "Service Maintenance Mode", "critical", sid, svc.name, notes=reason,
                type="maintenance", create_index=idx, modify_index=idx,
            )  # fmt: skip
        elif not enable and check_id in self._checks:
            self._remove_check(self._checks[check_id])
            self._touch(svc.name)
        return _empty()

    def _agent_service(self, query: dict[str, str], body: bytes, gen: int, sid: str) -> Response:
        svc = self._services.get(sid)
        if svc is None:
            raise _HttpError(404, f"unknown service ID: {sid}")
        return _json(self._agent_service_json(svc))

    def _ttl_update(
        self, query: dict[str, str], body: bytes, gen: int, verb: str, cid: str
    ) -> Response:
        status = {"pass": "passing", "warn": "warning", "fail": "critical"}[verb]
        return self._ttl_set(cid, status, query.get("note", ""))

    def _ttl_update_body(self, query: dict[str, str], body: bytes, gen: int, cid: str) -> Response:
        args = _norm(_decode(body))
        status = args.get("status") or ""
        if status not in _STATUSES:
            raise _HttpError(400, f"Invalid check status: '{status}'")
        return self._ttl_set(cid, status, args.get("output") or "")

    def _ttl_set(self, check_id: str, status: str, output: str) -> Response:
        chk = self._checks.get(check_id)
        if chk is None and self._acl_vetting:  # vetCheckUpdateWithAuthorizer
            raise _HttpError(
                404,
                f'Unknown check ID "{check_id}". '
                "Ensure that the check ID is passed, not the check name.",
            )
        if chk is None or not chk.ttl:  # agent/agent.go updateTTLCheck
            raise _HttpError(500, f'CheckID "{check_id}" does not have associated TTL')
        chk.ttl_deadline = time.monotonic() + chk.ttl
        self._set_status(chk, status, output)
        return _empty()

    def _health(self, query: dict[str, str], body: bytes, gen: int, name: str) -> Response:
        passing = False
        if "passing" in query:
            try:
                passing = query["passing"] == "" or _parse_bool(query["passing"])
            except ValueError as exc:
                raise _HttpError(400, "Invalid value for ?passing") from exc
        keep = _compile_filter(query.get("filter", ""))
        self._block(query, gen, lambda: self._svc_index.get(name, self._catalog_index))
        tags = query["tag"].split("\n") if "tag" in query else []
        result = []
        for svc in sorted(self._services.values(), key=lambda s: s.id):
            if svc.name != name or any(t not in svc.tags for t in tags):
                continue
            checks = [c for c in self._checks.values() if c.service_id in ("", svc.id)]
            entry = {
                "Node": self._node_json(),
                "Service": {
                    k: v for k, v in self._agent_service_json(svc).items() if k != "Datacenter"
                },
                "Checks": [self._check_json(c) for c in checks],
            }
            if passing and any(c.status != "passing" for c in checks):
                continue
            if keep(entry):
                result.append(entry)
        return _json(result, self._svc_index.get(name, self._catalog_index))

    def _catalog_nodes(self, query: dict[str, str], name: str | None) -> list[Json]:
        """The ``ServiceNode`` entries that pass ``node-meta``, ``tag`` and ``filter``."""
        keep = _compile_filter(query.get("filter", ""))
        wanted_meta = query["node-meta"].split("\n") if "node-meta" in query else []
        node_meta = self._node_json()["Meta"]
        if any(node_meta.get(k) != v for k, _, v in (m.partition(":") for m in wanted_meta)):
            return []  # the only node lacks the metadata asked for
        tags = query["tag"].split("\n") if "tag" in query else []
        entries = [
            self._service_node_json(svc)
            for svc in sorted(self._services.values(), key=lambda s: s.id)
            if (name is None or svc.name == name) and all(t in svc.tags for t in tags)
        ]
        return [entry for entry in entries if keep(entry)]

    def _catalog_services(self, query: dict[str, str], body: bytes, gen: int) -> Response:
        self._catalog_nodes(query, None)  # a bad filter is a 400 before blocking
        self._block(query, gen, lambda: self._catalog_index)
        tags: dict[str, set[str]] = {}
        for entry in self._catalog_nodes(query, None):
            tags.setdefault(entry["ServiceName"], set()).update(entry["ServiceTags"])
        return _json({k: sorted(v) for k, v in sorted(tags.items())}, self._catalog_index)

    def _catalog_service(self, query: dict[str, str], body: bytes, gen: int, name: str) -> Response:
        self._catalog_nodes(query, name)  # a bad filter is a 400 before blocking
        self._block(query, gen, lambda: self._svc_index.get(name, self._catalog_index))
        entries = self._catalog_nodes(query, name)
        return _json(entries, self._svc_index.get(name, self._catalog_index))

    def _session_create(self, query: dict[str, str], body: bytes, gen: int) -> Response:
        args = _norm(_decode(body)) if body else {}
        lock_delay_ns = 15_000_000_000
        if "lockdelay" in args:
            raw = args["lockdelay"]
            try:
                ns = int(parse_duration(raw) * 1e9) if isinstance(raw, str) else int(raw)
            except (TypeError, ValueError) as exc:
                raise _HttpError(400, f"Request decode failed: {exc}") from exc
            lock_delay_ns = ns * 1_000_000_000 if ns < 1000 else ns
        if args.get("node", self.node) != self.node:
            raise _HttpError(500, "Missing node registration")
        checks, node_checks = _fixup_session_checks(args)
        raw_service_checks = args.get("servicechecks")
        service_checks = None
        if raw_service_checks is not None:
            service_checks = [
                {"ID": _norm(c).get("id", ""), "Namespace": ""} for c in raw_service_checks
            ]
        for check_id in checks + node_checks + [c["ID"] for c in service_checks or []]:
            if check_id not in self._checks:
                raise _HttpError(500, f"Missing check '{check_id}' registration")
            if self._checks[check_id].status == "critical":
                raise _HttpError(500, f"Check '{check_id}' is in critical state")
        behavior = args.get("behavior") or "release"
        if behavior not in ("release", "delete"):
            raise _HttpError(500, f"Invalid Behavior setting '{behavior}'")
        ttl = args.get("ttl") or ""
        try:
            ttl_s = parse_duration(ttl) if ttl else 0.0
        except ValueError as exc:
            raise _HttpError(500, f"Session TTL '{ttl}' invalid: {exc}") from exc
        if ttl_s and not self._ttl_min <= ttl_s <= 86400:
            limits = f"[{self._ttl_min:g}s=24h0m0s]"
            raise _HttpError(
                500, f"Invalid Session TTL '{int(ttl_s * 1e9)}', must be between {limits}"
            )
        idx = self._bump()
        self._session_index = idx
        sess = _Session(
            str(uuid.uuid4()), args.get("name") or "", lock_delay_ns, behavior, ttl, ttl_s,
            node_checks, checks, service_checks, idx, self._expiry(ttl_s),
        )  # fmt: skip
        self._sessions[sess.id] = sess
        return _json({"ID": sess.id})

    def _expiry(self, ttl_s: float) -> float | None:
        return time.monotonic() + ttl_s * self._ttl_multiplier if ttl_s else None

    def _session_renew(self, query: dict[str, str], body: bytes, gen: int, sid: str) -> Response:
        sess = self._sessions.get(sid)
        if sess is None:
            raise _HttpError(404, f"Session id '{sid}' not found")
        if self._renew_ttl is not None and sess.ttl:
            sess.ttl, sess.ttl_s = self._renew_ttl, parse_duration(self._renew_ttl)
        sess.expires_at = self._expiry(sess.ttl_s)
        return _json([self._session_json(sess)])

    def _session_destroy(self, query: dict[str, str], body: bytes, gen: int, sid: str) -> Response:
        self._invalidate(sid)
        return _json(True)

    def _session_info(self, query: dict[str, str], body: bytes, gen: int, sid: str) -> Response:
        self._block(query, gen, lambda: self._session_index)
        sess = self._sessions.get(sid)
        return _json([] if sess is None else [self._session_json(sess)], self._session_index)

    def _kv_get(self, query: dict[str, str], body: bytes, gen: int, key: str) -> Response:
        recurse = "recurse" in query

        def matches() -> list[_Entry]:
            if recurse:
                return [e for k, e in sorted(self._kv.items()) if k.startswith(key)]
            return [self._kv[key]] if key in self._kv else []

        def index() -> int:
            return max([e.modify_index for e in matches()], default=self._kv_index)

        self._block(query, gen, index)
        found = matches()
        if not found:
            return 404, _meta_headers(index()), b""
        if "raw" in query:
            return (
                200,
                {**_meta_headers(index()), "Content-Type": "text/plain"},
                found[0].value or b"",
            )
        return _json([self._entry_json(e) for e in found], index())

    def _kv_put(self, query: dict[str, str], body: bytes, gen: int, key: str) -> Response:
        if not key:
            raise _HttpError(400, "Missing key name")
        if len(body) > 512 * 1024:
            raise _HttpError(413, "Value exceeds 524288 byte limit")
        if "acquire" in query and "release" in query:
            raise _HttpError(400, "Conflicting flags: acquire and release")
        try:
            flags = int(query.get("flags") or 0)
            cas = int(query["cas"]) if "cas" in query else None
        except ValueError as exc:
            raise _HttpError(400, "Invalid flags or CAS index") from exc
        value, entry = body or None, self._kv.get(key)
        if "acquire" in query:
            sid = query["acquire"]
            if self._lock_delay.get(key, 0.0) > time.monotonic():
                return _json(False)
            if sid not in self._sessions:
                raise _HttpError(500, f'invalid session "{sid}"')
            if entry is not None and entry.session not in (None, sid):
                return _json(False)
            lock_index = (entry.lock_index if entry else 0) + (
                0 if entry and entry.session == sid else 1
            )
            self._write(key, value, flags, sid, lock_index)
            return _json(True)
        if "release" in query:
            if entry is None or entry.session != query["release"]:
                return _json(False)
            self._write(key, value, flags, None, entry.lock_index)
            return _json(True)
        if cas is not None and (entry.modify_index if entry else 0) != cas:
            return _json(False)
        self._write(
            key, value, flags, entry.session if entry else None, entry.lock_index if entry else 0
        )
        return _json(True)

    def _write(
        self, key: str, value: bytes | None, flags: int, session: str | None, lock_index: int
    ) -> None:
        idx = self._bump()
        self._kv_index = idx
        old = self._kv.get(key)
        self._kv[key] = _Entry(
            key, value, flags, session, lock_index, old.create_index if old else idx, idx
        )

    def _kv_delete(self, query: dict[str, str], body: bytes, gen: int, key: str) -> Response:
        keys = [k for k in self._kv if k.startswith(key)] if "recurse" in query else [key]
        keys = [k for k in keys if k in self._kv]
        if "cas" in query and (not keys or str(self._kv[keys[0]].modify_index) != query["cas"]):
            return _json(False)
        for k in keys:
            del self._kv[k]
        self._kv_index = self._bump()
        return _json(True)

    # ------------------------------------------------------------- JSON
    def _node_json(self) -> Json:
        return {
            "ID": "6c1f2b8e-0000-4000-8000-000000000001", "Node": self.node,
            "Address": self.node_address, "Datacenter": self.datacenter,
            "TaggedAddresses": {"lan": self.node_address, "wan": self.node_address},
            "Meta": {"consul-network-segment": ""}, "CreateIndex": 1, "ModifyIndex": 1,
        }  # fmt: skip

    def _agent_service_json(self, svc: _Service) -> Json:
        return {
            "ID": svc.id, "Service": svc.name, "Tags": list(svc.tags), "Meta": dict(svc.meta),
            "Port": svc.port, "Address": svc.address, "Weights": svc.weights,
            "EnableTagOverride": False, "CreateIndex": svc.create_index,
            "ModifyIndex": svc.modify_index, "Datacenter": self.datacenter,
        }  # fmt: skip

    def _service_node_json(self, svc: _Service) -> Json:
        """One instance as ``/v1/catalog/service/:name`` lists it (``structs.ServiceNode``)."""
        node = self._node_json()
        return {
            "ID": node["ID"], "Node": self.node, "Address": self.node_address,
            "Datacenter": self.datacenter, "TaggedAddresses": node["TaggedAddresses"],
            "NodeMeta": node["Meta"], "ServiceKind": "", "ServiceID": svc.id,
            "ServiceName": svc.name, "ServiceTags": list(svc.tags), "ServiceAddress": svc.address,
            "ServiceWeights": svc.weights, "ServiceMeta": dict(svc.meta), "ServicePort": svc.port,
            "ServiceEnableTagOverride": False,
            "ServiceProxy": {"Mode": "", "MeshGateway": {}, "Expose": {}},
            "ServiceConnect": {}, "CreateIndex": svc.create_index,
            "ModifyIndex": svc.modify_index,
        }  # fmt: skip

    def _check_json(self, chk: _Check) -> Json:
        svc = self._services.get(chk.service_id)
        return {
            "Node": self.node, "CheckID": chk.check_id, "Name": chk.name, "Status": chk.status,
            "Notes": chk.notes, "Output": chk.output, "ServiceID": chk.service_id,
            "ServiceName": chk.service_name, "ServiceTags": list(svc.tags) if svc else [],
            "Type": chk.type, "CreateIndex": chk.create_index, "ModifyIndex": chk.modify_index,
        }  # fmt: skip

    def _session_json(self, sess: _Session) -> Json:
        out: Json = {
            "ID": sess.id, "Name": sess.name, "Node": self.node, "LockDelay": sess.lock_delay_ns,
            "Behavior": sess.behavior, "TTL": sess.ttl, "NodeChecks": sess.node_checks,
            "ServiceChecks": sess.service_checks, "CreateIndex": sess.create_index,
            "ModifyIndex": sess.create_index,
        }  # fmt: skip
        if sess.checks:  # `json:",omitempty"`
            out["Checks"] = sess.checks
        return out

    @staticmethod
    def _entry_json(entry: _Entry) -> Json:
        value = None if entry.value is None else base64.b64encode(entry.value).decode()
        out: Json = {
            "CreateIndex": entry.create_index, "ModifyIndex": entry.modify_index,
            "LockIndex": entry.lock_index, "Key": entry.key, "Flags": entry.flags, "Value": value,
        }  # fmt: skip
        if entry.session:
            out["Session"] = entry.session
        return out


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], double: ConsulDouble) -> None:
        super().__init__(address, _Handler)
        self.double = double

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.double._cond:
            self.double._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.double._cond:
            self.double._connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Dropped connections are expected here; stay quiet."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """No access log."""

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        try:
            status, headers, payload = self.server.double._handle(
                method, self.path, body, dict(self.headers.items())
            )
        except _Dropped:
            self.close_connection = True
            return
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def do_POST(self) -> None:
        self._serve("POST")


def _decode(body: bytes) -> Any:
    try:
        return json.loads(body or b"{}")
    except ValueError as exc:
        raise _HttpError(400, f"Request decode failed: {exc}") from exc


def _fixup_session_checks(args: Json) -> tuple[list[str], list[str]]:
    """``Checks`` and ``NodeChecks`` of a new session, as the agent's ``SessionCreate``
    leaves them (agent/session_endpoint.go): both default to ``serfHealth``, a key in
    the body replaces its default, then ``fixupEmptySessionChecks`` runs. So
    ``{"NodeChecks": ["x"]}`` depends on ``x`` alone, ``{"NodeChecks": []}`` and
    ``{"Checks": []}`` on nothing, and ``{"Checks": ["x"]}`` on ``x`` and ``serfHealth``.
    (The reference notes read "serfHealth unless a Checks key"; the agent's source and
    the session docs ("if you override this list, include the default serfHealth")
    agree with each other and not with that line. voxmesh's lock sends neither key.)
    """
    checks = [str(c) for c in args["checks"] or []] if "checks" in args else [_SERF]
    node_checks = [str(c) for c in args["nodechecks"] or []] if "nodechecks" in args else [_SERF]
    if not checks:
        return [], []
    if checks == [_SERF]:
        return [], node_checks
    if not node_checks:
        return [], []
    return checks, node_checks


def _validate_meta(meta: dict[str, str]) -> None:
    if len(meta) > 64:
        raise _HttpError(
            400, "Invalid Service Meta: Node metadata cannot contain more than 64 key/value pairs"
        )
    for key, value in meta.items():
        if (
            not _META_KEY.match(key)
            or len(key) > 128
            or key.startswith("consul-")
            or len(value) > 512
        ):
            raise _HttpError(400, f"Invalid Service Meta: Key is invalid or reserved: {key!r}")


def _compile_filter(expr: str) -> Callable[[Json], bool]:
    """The subset of bexpr this double understands (see the module docstring)."""
    if not expr.strip():
        return lambda entry: True
    term = re.compile(
        r'\s*(?:(?P<sel>[\w.\-]+)\s+(?P<op>==|!=|contains|not contains)\s+"(?P<val>[^"]*)"'
        r'|"(?P<val2>[^"]*)"\s+(?P<op2>in|not in)\s+(?P<sel2>[\w.\-]+))\s*'
    )
    tests: list[Callable[[Json], bool]] = []
    for part in re.split(r"\s+and\s+", expr.strip()):
        m = term.fullmatch(part)
        if m is None:
            raise _HttpError(
                400, f"Failed to create boolexpr evaluator: unsupported by the double: {part!r}"
            )
        sel, op, val = (
            m["sel"] or m["sel2"],
            m["op"] or m["op2"],
            m["val"] if m["sel"] else m["val2"],
        )
        tests.append(_filter_term(sel.split("."), op, val))
    return lambda entry: all(t(entry) for t in tests)


def _filter_term(path: list[str], op: str, val: str) -> Callable[[Json], bool]:
    def select(entry: Json) -> Any:
        node: Any = entry
        for step in path:
            node = node.get(step) if isinstance(node, dict) else None
        return node

    def test(entry: Json) -> bool:
        got = select(entry)
        if op in ("==", "!="):
            return (got is not None and str(got) == val) == (op == "==")
        member = isinstance(got, (list, dict, str)) and val in got
        return member == (op in ("contains", "in"))

    return test


def _meta_headers(index: int) -> dict[str, str]:
    return {
        "X-Consul-Index": str(max(index, 1)),
        "X-Consul-KnownLeader": "true",
        "X-Consul-LastContact": "0",
        "X-Consul-Effective-Consistency": "leader",
        "X-Consul-Query-Backend": "blocking-query",
    }


def _json(obj: Any, index: int | None = None) -> Response:
    headers = {"Content-Type": "application/json"}
    if index is not None:
        headers.update(_meta_headers(index))
    return 200, headers, json.dumps(obj).encode()


def _text(status: int, message: str) -> Response:
    return status, {"Content-Type": "text/plain; charset=utf-8"}, message.encode()


def _empty() -> Response:
    return 200, {"Content-Type": "text/plain; charset=utf-8"}, b""
