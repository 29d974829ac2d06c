"""A client-side fix for grpcio's asyncio streaming calls (grpc/grpc#36066).

When a server ends a client-streaming call early (an admission rejection, an
abort for bad input) while the client still writes, grpcio's ``_write``
replaces the status the server sent with ``INTERNAL: Internal error from
Core``. The fix proposed upstream (grpc/grpc#43486, open) reports the
server's status instead; :func:`install` applies the same logic to the
pinned grpcio: when a write fails, wait briefly for the call's real status
and raise that, falling back to INTERNAL only if none arrives.

Every voxmesh process that makes streaming calls (router, client, tests)
calls :func:`install` once at start-up. It is a no-op on other grpcio
versions, where the pin must be re-checked.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
from grpc import _common as _grpc_common
from grpc._cython import cygrpc
from grpc.aio import _call

__all__ = ["install"]

logger = logging.getLogger(__name__)

_PATCHED_VERSIONS = ("1.85.1",)
_STATUS_WAIT_SECONDS = 1.0
_installed = False


async def _write(self: Any, request: Any) -> None:
    if self.done():
        raise asyncio.InvalidStateError(_call._RPC_ALREADY_FINISHED_DETAILS)
    if self._done_writing_flag:
        raise asyncio.InvalidStateError(_call._RPC_HALF_CLOSED_DETAILS)
    if not self._metadata_sent.is_set():
        await self._metadata_sent.wait()
        if self.done():
            await self._raise_for_status()
    serialized = _grpc_common.serialize(request, self._request_serializer)
    try:
        await self._cython_call.send_serialized_message(serialized)
    except cygrpc.InternalError as err:
        try:
            # The server's status is usually already on its way: report it.
            await asyncio.wait_for(asyncio.shield(self._cython_call.status()), _STATUS_WAIT_SECONDS)
        except TimeoutError:
            self._cython_call.set_internal_error(str(err))
        await self._raise_for_status()
    except asyncio.CancelledError:
        if not self.cancelled():
            self.cancel()
        raise


def install() -> bool:
    """Applies the fix once; returns whether it is active."""
    global _installed
    if _installed:
        return True
    if grpc.__version__ not in _PATCHED_VERSIONS:
        logger.warning(
            "grpcio %s: aio write-status fix not applied (checked for %s)",
            grpc.__version__,
            ", ".join(_PATCHED_VERSIONS),
        )
        return False
    _call._StreamRequestMixin._write = _write  # type: ignore[method-assign]
    _installed = True
    return True
