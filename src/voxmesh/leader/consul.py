"""A leader lock on Consul: a session with a TTL holding a KV lock.

Leadership is holding ``?acquire`` on ``key`` with a session created with
``TTL``, ``Behavior: release``, ``LockDelay`` and the default ``serfHealth``
node check. The leader renews its session every half TTL, using the TTL
that renew returns (Consul may raise it under load). Leadership is lost
when renew answers 404 (the session was invalidated: TTL expiry, a failed
node check, an operator) or at the session's deadline: the TTL, less a
safety margin of a tenth of it, after the last successful renew was *sent*
(Consul unreachable: the session may be gone without us hearing about it).
Every renew is bounded by that deadline, so a renew lost in a network
blackhole cannot keep the leader acting past it; the HTTP client's own
timeout (:meth:`~voxmesh.leader.consul_api.PyConsulSessionApi.connect`) is
below half the shortest TTL, so an abandoned call ends before the next one.
After each successful renew the leader reads the key: a key that names another
session, or none, is lost leadership too (an operator deleted the key, or a
snapshot restore rewrote it, and a standby may already hold it with a live
session of its own; renewing our session alone would leave two leaders).
A leader that steps down for any reason but a 404 keeps its session: the next
:meth:`acquire` renews it first and, when Consul kept it alive, takes the key
back with it at once instead of waiting out the old session's expiry and the
lock delay under a new one.
``ttl`` and ``lock_delay`` must be within what Consul accepts (a TTL of
``session_ttl_min``, 10 s by default, to 86400 s; a lock delay of 0 to 60 s):
anything else is a :class:`~voxmesh.errors.SettingsError` at construction,
not a 500 on every acquire.
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
from voxmesh.errors import SettingsError
from voxmesh.leader.consul_api import ConsulSessionApi

__all__ = ["ConsulLeaderLock"]

log = logging.getLogger(__name__)

SESSION_TTL_MIN = 10.0
"""Consul's default ``session_ttl_min`` (a server setting), in seconds."""
SESSION_TTL_MAX = 86400.0
"""``structs.SessionTTLMax``."""
MAX_LOCK_DELAY = 60.0
"""``structs.MaxLockDelay``: Consul applies no longer lock delay."""
_MARGIN = 0.1
"""Share of the TTL by which the leader steps down early."""


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
        min_ttl: float = SESSION_TTL_MIN,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``min_ttl`` is the Consul servers' ``session_ttl_min``; raises
        :class:`~voxmesh.errors.SettingsError` for a TTL or lock delay Consul refuses."""
        if not min_ttl <= ttl <= SESSION_TTL_MAX:
            raise SettingsError(
                f"leader lock ttl={ttl!r}: Consul accepts a session TTL of "
                f"{min_ttl:g} s to {SESSION_TTL_MAX:g} s"
            )
        if not 0 <= lock_delay <= MAX_LOCK_DELAY:
            raise SettingsError(
                f"leader lock lock_delay={lock_delay!r}: Consul applies 0 s to {MAX_LOCK_DELAY:g} s"
            )
        self._api, self._key = api, key
        self._holder = holder or f"{socket.gethostname()}:{os.getpid()}"
        self._ttl, self._lock_delay = ttl, lock_delay
        self._retry, self._clock = retry_interval, clock
        self._session: str | None = None
        self._leader = False
        self._session_ttl = ttl
        self._renewed_at = 0.0
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
        return self._session_ttl / 2

    async def acquire(self) -> bool:
        """One try: ensures a live session, then ``?acquire`` on the key."""
        if self._leader:
            return True
        sent = self._clock()  # the session's TTL runs from no earlier than this
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
            self._leader, self._session_ttl, self._renewed_at = True, self._ttl, sent
            self._wake.clear()
        return won

    async def hold(self) -> None:
        """Renews the session until leadership is lost or :meth:`release` is called.

        Returns at the latest at the session's deadline (see the module docstring),
        whatever a renew in flight is doing.
        """
        delay = self.renew_interval
        while self._held_session() is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            session = self._held_session()  # release() may have run meanwhile
            if session is None:
                return
            sent = self._clock()
            left = self._deadline() - sent
            if left <= 0:
                self._lose(f"no successful renew within the {self._session_ttl:g} s TTL")
                return
            try:
                async with asyncio.timeout(left):
                    ttl = await self._api.renew_session(session)
            except TimeoutError:
                self._lose(f"renew unanswered at the deadline of the {self._session_ttl:g} s TTL")
                return
            except ConsulError as exc:
                left = self._deadline() - self._clock()
                if left <= 0:
                    self._lose(
                        f"no successful renew within the {self._session_ttl:g} s TTL ({exc})"
                    )
                    return
                log.warning("leader lock %s: renew failed, retrying: %s", self._key, exc)
                delay = min(self._retry, left)
                continue
            if ttl is None:
                self._lose("session invalidated (renew answered 404)", keep_session=False)
                return
            self._renewed_at, self._session_ttl = sent, ttl or self._ttl
            delay = self.renew_interval
            if not await self._still_holds(session):
                return

    async def _still_holds(self, session: str) -> bool:
        """Reads the key after a renew; steps down when it names another session or none.

        A read that fails changes nothing: the next renew, due before the session's
        deadline, reads the key again. One still unanswered at the deadline steps down,
        as an unanswered renew does.
        """
        try:
            async with asyncio.timeout(max(self._deadline() - self._clock(), 0)):
                holder = await self._api.holder(self._key)
        except TimeoutError:
            self._lose(f"key read unanswered at the deadline of the {self._session_ttl:g} s TTL")
            return False
        except ConsulError as exc:
            log.warning("leader lock %s: could not read the key, retrying: %s", self._key, exc)
            return True
        if holder == session:
            return True
        self._lose(
            f"the key is held by session {holder}"
            if holder
            else "the key no longer names this session (deleted or rewritten)"
        )
        return False

    def _deadline(self) -> float:
        """When the session may be gone: its TTL, less the margin, after the last renew."""
        return self._renewed_at + self._session_ttl * (1 - _MARGIN)

    def _held_session(self) -> str | None:
        return self._session if self._leader else None

    def _lose(self, why: str, *, keep_session: bool = True) -> None:
        """Steps down. ``keep_session``: the session may still be alive (Consul did not
        answer), so :meth:`acquire` tries it again before creating another."""
        log.warning("leader lock %s lost: %s", self._key, why)
        self._leader = False
        if not keep_session:
            self._session = None

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
