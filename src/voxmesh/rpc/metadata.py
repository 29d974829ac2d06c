"""Request metadata keys the router and the ASR instances exchange (one definition).

A client never sets these; the router adds them to the streams it opens on
instances:

* ``voxmesh-offset-ms: N``: a failed-over LINEAR16 stream; its first audio byte is
  at stream time N ms, so every offset is shifted by N.
* ``voxmesh-skip-ms: N``: a failed-over compressed stream, replayed from its
  start; the first N ms of decoded audio were already recognised: skip them.
* ``voxmesh-last-resort: 1``: no accepting instance of the pool had room, so a
  router with its (opt-in) last resort on sends the stream to a draining one; it
  takes it while its drain has long enough left
  (``TelemetrySnapshot.drain_remaining``).
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["LAST_RESORT_KEY", "OFFSET_KEY", "SKIP_KEY", "last_resort_asked", "value_of"]

OFFSET_KEY = "voxmesh-offset-ms"
SKIP_KEY = "voxmesh-skip-ms"
LAST_RESORT_KEY = "voxmesh-last-resort"


def value_of(metadata: Iterable[tuple[str, str | bytes]] | None, key: str) -> str | None:
    """The value of ``key`` in gRPC invocation metadata (text), or None."""
    for k, v in metadata or ():
        if k == key:
            return v if isinstance(v, str) else v.decode()
    return None


def last_resort_asked(metadata: Iterable[tuple[str, str | bytes]] | None) -> bool:
    """True when a router sent this stream to a draining instance as a last resort."""
    return value_of(metadata, LAST_RESORT_KEY) == "1"
