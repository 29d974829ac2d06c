"""A leader lock on a local file (``flock``), for single-machine mode.

The kernel releases an ``flock`` when its holder exits, crashed or not, so
there is nothing to renew and a held lock is never lost while the process
lives. ``flock`` locks belong to the open file description, so two locks on
the same path conflict even inside one process.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from pathlib import Path

__all__ = ["FileLeaderLock"]


class FileLeaderLock:
    """:class:`~voxmesh.leader.base.LeaderLock` over ``flock(LOCK_EX | LOCK_NB)`` on ``path``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = Path(path)
        self._fd: int | None = None
        self._released = asyncio.Event()

    @property
    def is_leader(self) -> bool:
        """True while the lock file is locked by this object."""
        return self._fd is not None

    async def acquire(self) -> bool:
        """Tries the lock once; on success writes this process's PID into the file.

        Raises ``OSError`` when the file cannot be made, locked or written. The file is
        closed then, whatever had been done: an ``flock`` left on a descriptor that
        nothing refers to would be held, unknown to this object, until the process
        exits, and no replica (this one included) could ever lead.
        """
        if self._fd is not None:
            return True
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            won = _lock_and_sign(fd)
        except BaseException:
            os.close(fd)  # closing the only descriptor drops the flock
            raise
        if not won:
            os.close(fd)
            return False
        self._fd = fd
        self._released.clear()
        return True

    async def hold(self) -> None:
        """Waits until :meth:`release` (an ``flock`` is not lost otherwise)."""
        if self._fd is not None:
            await self._released.wait()

    async def release(self) -> None:
        """Unlocks and closes the file. Idempotent."""
        fd, self._fd = self._fd, None
        self._released.set()
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _lock_and_sign(fd: int) -> bool:
    """Takes the ``flock`` without waiting and writes this process's PID into the file.

    False when another holder has the lock; raises ``OSError`` on any other failure.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return True
