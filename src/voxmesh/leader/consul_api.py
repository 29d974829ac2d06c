"""The Consul calls the leader lock makes: :class:`ConsulSessionApi` and its py-consul adapter."""

from __future__ import annotations

import json
from typing import Protocol

import consul
from consul.callback import CB
from consul.exceptions import NotFound

from voxmesh.discovery.consul import call_consul, parse_go_duration

__all__ = ["ConsulSessionApi", "PyConsulSessionApi"]


class ConsulSessionApi(Protocol):
    """The Consul calls the lock needs. Errors raise ``ConsulError`` types."""

    async def create_session(self, name: str, ttl: str, lock_delay: str) -> str:
        """``PUT /v1/session/create`` (``Behavior: release``); returns the session ID."""

    async def renew_session(self, session_id: str) -> float | None:
        """``PUT /v1/session/renew/:id``: the TTL in seconds Consul returned, None on 404."""

    async def destroy_session(self, session_id: str) -> None:
        """``PUT /v1/session/destroy/:id``."""

    async def acquire(self, key: str, session_id: str, value: bytes) -> bool:
        """``PUT /v1/kv/:key?acquire=<session>``."""

    async def release(self, key: str, session_id: str) -> bool:
        """``PUT /v1/kv/:key?release=<session>``."""

    async def holder(self, key: str) -> str | None:
        """``GET /v1/kv/:key``: the ``Session`` holding the key, None if none or no key."""


class PyConsulSessionApi:
    """:class:`ConsulSessionApi` over py-consul.

    Sessions are created through py-consul's HTTP layer directly because its
    ``session.create`` accepts only whole seconds and TTLs of 10 s or more,
    while Consul's minimum is a server setting (``session_ttl_min``). That call
    adds the ACL token (``X-Consul-Token``) and ``?dc`` itself, as py-consul's
    own methods do.
    """

    def __init__(self, client: consul.Consul) -> None:
        self._consul = client

    @classmethod
    def connect(
        cls,
        host: str = "127.0.0.1",
        port: int = 8500,
        scheme: str = "http",
        *,
        timeout_s: float = 4.0,
    ) -> PyConsulSessionApi:
        """A client for the agent at ``scheme://host:port``.

        ``timeout_s`` bounds each request (py-consul's default is 30 s). The default is
        below half the shortest session TTL Consul accepts (10 s), so a call abandoned in
        a network blackhole has ended before the lock's next renew is due.
        """
        return cls(
            consul.Consul(host=host, port=port, scheme=scheme, connections_timeout=timeout_s)
        )

    async def create_session(self, name: str, ttl: str, lock_delay: str) -> str:
        """See :meth:`ConsulSessionApi.create_session`."""
        body = json.dumps(
            {"Name": name, "TTL": ttl, "LockDelay": lock_delay, "Behavior": "release"}
        )
        params = [("dc", self._consul.dc)] if self._consul.dc else []
        headers = self._consul.prepare_headers()

        def create() -> object:
            return self._consul.http.put(
                CB.json(is_id=True), "/v1/session/create", params, data=body, headers=headers
            )

        return str(await call_consul(create))

    async def renew_session(self, session_id: str) -> float | None:
        """See :meth:`ConsulSessionApi.renew_session`."""

        def renew() -> float | None:
            try:
                session = self._consul.session.renew(session_id)
            except NotFound:
                return None
            return parse_go_duration(session.get("TTL") or "0")

        return await call_consul(renew)

    async def destroy_session(self, session_id: str) -> None:
        """See :meth:`ConsulSessionApi.destroy_session`."""
        await call_consul(lambda: self._consul.session.destroy(session_id))

    async def acquire(self, key: str, session_id: str, value: bytes) -> bool:
        """See :meth:`ConsulSessionApi.acquire`."""
        return bool(await call_consul(lambda: self._consul.kv.put(key, value, acquire=session_id)))

    async def release(self, key: str, session_id: str) -> bool:
        """See :meth:`ConsulSessionApi.release`."""
        return bool(await call_consul(lambda: self._consul.kv.put(key, None, release=session_id)))

    async def holder(self, key: str) -> str | None:
        """See :meth:`ConsulSessionApi.holder`."""

        def read() -> str | None:
            _, entry = self._consul.kv.get(key)
            return None if entry is None else entry.get("Session")

        return await call_consul(read)
