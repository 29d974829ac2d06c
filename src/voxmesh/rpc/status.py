"""The one mapping from voxmesh errors to gRPC statuses.

``RESOURCE_EXHAUSTED`` carries a ``google.rpc.RetryInfo`` detail (and the
``retry-after-ms`` trailing metadata for clients that do not parse details).
An instance that refuses a stream because it drains (or still starts) answers
``UNAVAILABLE`` with a ``google.rpc.ErrorInfo`` of reason ``INSTANCE_NOT_ACCEPTING``
(:func:`not_accepting`); one that refuses it because it serves its maximum of
streams answers ``RESOURCE_EXHAUSTED`` with an ``ErrorInfo`` of reason
``INSTANCE_FULL`` (:func:`instance_full`). Either way the stream never started
there, so a router sends it elsewhere without counting a failover. A retry delay
alone says no such thing: an instance's chunk-size refusal carries one too, and
every instance would refuse that chunk alike (an instance older than the marker,
full, is not told apart either: its refusal goes to the client).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import NoReturn, Protocol

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from voxmesh import errors
from voxmesh.rpc.wellknown import duration

__all__ = [
    "RETRY_AFTER_KEY",
    "Abortable",
    "abort",
    "abort_behind_unread",
    "aborting",
    "code_of",
    "instance_full",
    "not_accepting",
    "retry_after_of",
    "to_status",
]

RETRY_AFTER_KEY = "retry-after-ms"
ERROR_DOMAIN = "voxmesh.dev"
NOT_ACCEPTING = "INSTANCE_NOT_ACCEPTING"
INSTANCE_FULL = "INSTANCE_FULL"

_CODES: list[tuple[type[errors.VoxmeshError], grpc.StatusCode]] = [
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.OutOfRange, grpc.StatusCode.OUT_OF_RANGE),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.SettingsError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Internal, grpc.StatusCode.INTERNAL),
]


class Abortable(Protocol):
    """What ending a call with a status needs of its context: a grpc.aio
    ServicerContext's two ways to abort, which a call carried inside another (the
    router's ``DataPlaneService.Connect``) also has."""

    async def abort(
        self,
        code: grpc.StatusCode,
        details: str = "",
        trailing_metadata: Sequence[tuple[str, str | bytes]] = (),
    ) -> NoReturn:
        """Ends the call with ``code``, ``details`` and ``trailing_metadata``."""
        ...

    async def abort_with_status(self, status: grpc.Status) -> NoReturn:
        """Ends the call with ``status`` (its trailing metadata carries the details)."""
        ...


def code_of(err: BaseException) -> grpc.StatusCode:
    """The gRPC code for an error; INTERNAL for anything unexpected."""
    for kind, code in _CODES:
        if isinstance(err, kind):
            return code
    return grpc.StatusCode.INTERNAL


def to_status(err: BaseException) -> grpc.Status:
    """A rich status for ``err`` (with RetryInfo when it has a retry delay)."""
    code = code_of(err)
    message = str(err) if isinstance(err, errors.VoxmeshError) else "internal error"
    detail = status_pb2.Status(code=getattr(code_pb2, code.name), message=message)
    trailing: tuple[tuple[str, str], ...] = ()
    if isinstance(err, errors.ResourceExhausted):
        seconds = max(0.0, err.retry_after)
        info = error_details_pb2.RetryInfo(retry_delay=duration(seconds))
        detail.details.add().Pack(info)
        trailing = ((RETRY_AFTER_KEY, str(int(seconds * 1000))),)
    if isinstance(err, errors.Draining):
        detail.details.add().Pack(
            error_details_pb2.ErrorInfo(reason=NOT_ACCEPTING, domain=ERROR_DOMAIN)
        )
    if isinstance(err, errors.InstanceFull):
        detail.details.add().Pack(
            error_details_pb2.ErrorInfo(reason=INSTANCE_FULL, domain=ERROR_DOMAIN)
        )
    status: grpc.Status = rpc_status.to_status(detail)
    if trailing:
        return _WithTrailing(status, trailing)
    return status


class _WithTrailing(grpc.Status):
    def __init__(self, base: grpc.Status, extra: tuple[tuple[str, str], ...]) -> None:
        self.code = base.code
        self.details = base.details
        self.trailing_metadata = tuple(base.trailing_metadata) + extra


async def abort(context: Abortable, err: BaseException) -> None:
    """Ends the RPC with the status of ``err``. Never returns."""
    await context.abort_with_status(to_status(err))


def abort_behind_unread(context: Abortable, err: BaseException, give_up_s: float) -> None:
    """Starts ending the RPC with the status of ``err`` from a task of its own, for a
    call whose client stopped reading: gRPC queues the status behind the responses the
    client has not taken, so the abort returns only once the client reads up to it, or
    never. The task starts the send in its first step, which runs before any callback
    scheduled after this call (the caller then cancels the write or the handler), and
    stops waiting after ``give_up_s`` (the status stays queued in gRPC core)."""

    async def send() -> None:
        with contextlib.suppress(BaseException):
            async with asyncio.timeout(give_up_s):
                await abort(context, err)

    ending = asyncio.get_running_loop().create_task(send(), name="voxmesh-unread-status")
    _ABORTS_BEHIND_UNREAD.add(ending)
    ending.add_done_callback(_ABORTS_BEHIND_UNREAD.discard)


_ABORTS_BEHIND_UNREAD: set[asyncio.Task[None]] = set()
"""The tasks of :func:`abort_behind_unread` still waiting (a task needs a reference)."""


@contextlib.asynccontextmanager
async def aborting(context: Abortable) -> AsyncIterator[None]:
    """Ends the RPC with the status of a voxmesh error raised inside the block."""
    try:
        yield
    except errors.VoxmeshError as err:
        await abort(context, err)
        raise  # unreachable: abort raises


def retry_after_of(error: grpc.aio.AioRpcError) -> float | None:
    """The retry delay, in seconds, that a RESOURCE_EXHAUSTED answer carried."""
    for key, value in error.trailing_metadata() or ():
        if key == RETRY_AFTER_KEY:
            return int(value) / 1000.0
    return None


def instance_full(error: grpc.aio.AioRpcError) -> bool:
    """True when an instance refused the call for want of room: RESOURCE_EXHAUSTED with
    the ``INSTANCE_FULL`` ErrorInfo. Any other RESOURCE_EXHAUSTED (a chunk over the
    instance's limit, with a retry delay or not; gRPC's own, for a message over the
    receiver's size limit) is the request's fault: the next instance would refuse it
    too."""
    return _refused(error, grpc.StatusCode.RESOURCE_EXHAUSTED, INSTANCE_FULL)


def not_accepting(error: grpc.aio.AioRpcError) -> bool:
    """True when an instance refused the call because it drains or still starts."""
    return _refused(error, grpc.StatusCode.UNAVAILABLE, NOT_ACCEPTING)


def _refused(error: grpc.aio.AioRpcError, code: grpc.StatusCode, reason: str) -> bool:
    """True when ``error`` is ``code`` with the voxmesh ErrorInfo of ``reason``."""
    if error.code() != code:
        return False
    try:
        status = rpc_status.from_call(error)
    except ValueError:  # a status detail that does not match the call's
        return False
    if status is None:
        return False
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info) and (info.domain, info.reason) == (ERROR_DOMAIN, reason):
            return True
    return False
