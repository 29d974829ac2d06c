"""The voxmesh exception hierarchy.

Domain code raises these; :mod:`voxmesh.rpc.status` is the one place that maps
them to gRPC status codes, so every service answers the same way.
"""

from __future__ import annotations

__all__ = [
    "DeadlineExceeded",
    "Draining",
    "InstanceFull",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "ResourceExhausted",
    "SettingsError",
    "Unavailable",
    "VoxmeshError",
]


class VoxmeshError(Exception):
    """Root of every error voxmesh raises on purpose."""


class SettingsError(VoxmeshError):
    """A setting has an invalid value; the message names the setting and the value."""


class InvalidArgument(VoxmeshError):
    """The client sent something malformed (bad config, bad audio)."""


class NotFound(VoxmeshError):
    """The requested model or pool is not served here."""


class OutOfRange(VoxmeshError):
    """The request exceeded a length limit (maximum stream duration)."""


class DeadlineExceeded(VoxmeshError):
    """The work did not finish before its deadline."""


class ResourceExhausted(VoxmeshError):
    """No capacity now; the client should retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InstanceFull(ResourceExhausted):
    """The instance serves its maximum of streams: another may have room."""


class Unavailable(VoxmeshError):
    """The server cannot take the work (failed backend); retry elsewhere."""


class Draining(Unavailable):
    """The instance is draining and takes no new streams."""


class Internal(VoxmeshError):
    """A part of voxmesh broke its contract with another (a bug, not the client's doing)."""
