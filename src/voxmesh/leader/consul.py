"""A leader lock on Consul: a session with a TTL holding a KV lock.

Leadership is holding ``?acquire`` on ``key`` with a session created with
``TTL``, ``Behavior: release``, ``LockDelay`` and the default ``serfHealth``
node check. The leader renews its session every half TTL, using the TTL
that renew returns (Consul may raise it under load). Leadership is lost
when renew answers 404 (the session was invalidated: TTL expiry, a failed
node check, an operator) or when no renew has succeeded for a whole TTL
(Consul unreachable: the session may be gone without us hearing about it).
A standby that tries right after the leader's session died is refused for
``LockDelay`` even though the key shows no holder; that is Consul protecting
the old leader's last writes, not a bug. A clean :meth:`release` frees the key
with ``?release`` first, so no lock-delay applies and a standby takes over at
once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable

from voxmesh.discovery.consul import ConsulError, format_go_duration
from voxmesh.leader.consul_api import ConsulSessionApi

__all__ = ["ConsulLeaderLock"]

log = logging.getLogger(__name__)


class ConsulLeaderLock:
    """:class:`~voxmesh.leader.base.LeaderLock` on Consul (see the module docstring)."""

    def __init__(
        self,
        api: ConsulSessionApi,
        key: str = "voxmesh/autoscaler/leader",
        *,
        holder: str | None = None,
        ttl: float = 15.0,
        lock_delay: float = 15.0,
        retry_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api, self._key = api, key
        self._holder = holder or f"{socket.gethostname()}:{os.getpid()}"
        self._ttl, self._lock_delay = ttl, lock_delay
        self._retry, self._clock = retry_interval, clock
        self._session: str | None = None
        self._leader = False
        self._renew_every = ttl / 2
        self._wake = asyncio.Event()

    @property
    def is_leader(self) -> bool:
        """True while this replica holds the key (as of the last renew)."""
        return self._leader

    @property
    def session_id(self) -> str | None:
        """The current session, if any."""
        return self._session

    @property
    def renew_interval(self) -> float:
        """Seconds between renews: half the TTL Consul last returned."""
        return self._renew_every

    async def acquire(self) -> bool:
        """One try: ensures a live session, then ``?acquire`` on the key."""
        if self._leader:
            return True
        try:
            if self._session is not None and await self._api.renew_session(self._session) is None:
                self._session = None
            if self._session is None:
                self._session = await self._api.create_session(
                    f"voxmesh leader {self._holder}",
                    format_go_duration(self._ttl),
                    format_go_duration(self._lock_delay),
                )
            won = await self._api.acquire(self._key, self._session, self._holder.encode())
        except ConsulError as exc:
            log.warning("leader lock %s: acquire failed: %s", self._key, exc)
            return False
        if won:
            log.info("leader lock %s acquired by %s", self._key, self._holder)
            self._leader, self._renew_every = True, self._ttl / 2
            self._wake.clear()
        return won

    async def hold(self) -> None:
        """Renews the session until leadership is lost or :meth:`release` is called."""
        last_renewed = self._clock()
        delay = self._renew_every
        while self._held_session() is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            session = self._held_session()  # release() may have run meanwhile
            if session is None:
                return
            try:
                ttl = await self._api.renew_session(session)
            except ConsulError as exc:
                if self._clock() - last_renewed >= self._ttl:
                    self._lose(f"no successful renew for {self._ttl:g} s ({exc})")
                    return
                log.warning("leader lock %s: renew failed, retrying: %s", self._key, exc)
                delay = self._retry
                continue
            if ttl is None:
                self._lose("session invalidated (renew answered 404)")
                return
            last_renewed, self._renew_every = self._clock(), (ttl or self._ttl) / 2
            delay = self._renew_every

    def _held_session(self) -> str | None:
        return self._session if self._leader else None

    def _lose(self, why: str) -> None:
        log.warning("leader lock %s lost: %s", self._key, why)
        self._leader, self._session = False, None

    async def release(self) -> None:
        """Frees the key (no lock-delay for the standby) and destroys the session."""
        session, was_leader = self._session, self._leader
        self._session, self._leader = None, False
        self._wake.set()
        if session is None:
            return
        try:
            if was_leader:
                await self._api.release(self._key, session)
            await self._api.destroy_session(session)
        except ConsulError as exc:
            log.warning("leader lock %s: release failed, the TTL will end it: %s", self._key, exc)
