"""The router's parts that serve every stream, whichever data path relays it.

The public RecognizerService (the Python data path and the unary Recognize) and
the native data path's control plane (DataPlaneService) are built from the same
:class:`RouterParts`, so that both answer, admit and count alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.router.active import ActiveStreams
from services.router.admission import Admission
from services.router.membership import Member, Membership
from services.router.metrics import RouterMetrics
from services.router.relay import RelayLimits
from services.router.routing import PoolResolver

__all__ = ["RouterParts"]


@dataclass(frozen=True)
class RouterParts:
    """What every stream of the router uses."""

    resolver: PoolResolver
    """Maps a stream's requested model to its pool."""
    membership: Membership
    """The instances discovery knows, with their load."""
    admission: Admission[Member]
    """The admission queues: places a stream on an instance with room."""
    limits: RelayLimits
    """The per-stream relay bounds."""
    metrics: RouterMetrics
    """The router's metrics."""
    streams: ActiveStreams
    """The streams in progress: the router's limit and its drain."""
