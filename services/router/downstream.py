"""The Python relay's writes of a stream's responses to its client.

A write of a response ends once gRPC has it, which HTTP/2 flow control holds back
while the client reads nothing: a client that keeps its call open but stops reading
(a stalled or wedged reader) blocks the write, and with it the relay, which stops
reading its instance. Nothing else would end such a stream: it would hold its
instance's slot (and the router's count of the streams on it) for as long as the
client kept its connection. So a response the client has not taken for the router's
``idle_timeout_s`` ends the stream, as an instance ends one (its ``idle_timeout``)::

    write ──taken──▶ the next response
      │ not taken for idle_timeout_s
      ▼
    OUT_OF_RANGE started (a task of its own) ──▶ the write cancelled ──▶ StatusSent
    raised: the relay releases the instance and cancels its call; the client, once it
    reads again, gets the responses it has not read, then that status

gRPC Python cannot reset a call, and its status waits behind the responses already
handed over: the abort that sends it returns only once the client has read up to it,
hence a task of its own, given up (the status stays queued in gRPC core) after
another ``idle_timeout_s``. The call's initial metadata goes out on its own before the
first response: sent with it, as gRPC does, it would still be pending with a first
response the client never takes, and gRPC would refuse the status
(``GRPC_CALL_ERROR_TOO_MANY_OPERATIONS``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc

from voxmesh.asr.config import unread_error
from voxmesh.rpc import status

__all__ = ["ClientWriter", "StatusSent"]

logger = logging.getLogger(__name__)


class StatusSent(Exception):
    """The call's status is under way already (started from a task of its own): the
    handler ends without sending one, and counts the stream with ``code``."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code


class ClientWriter:
    """Writes one stream's responses to its client, one at a time (see the module
    docstring); ``name`` starts its log line (``stream <id>``)."""

    def __init__(
        self, context: grpc.aio.ServicerContext[Any, Any], idle_timeout_s: float, name: str
    ) -> None:
        self._context = context
        self._limit = idle_timeout_s
        self._name = name
        self.ended: StatusSent | None = None
        """The status the writer ended the call with, once a response went untaken."""
        self._metadata_sent = False

    async def write(self, message: Any) -> None:
        """``context.write(message)``; raises :class:`StatusSent` once the client has not
        taken it for ``idle_timeout_s`` (the call then ends with OUT_OF_RANGE).

        A cancellation does not cut the write short: the operations a cancelled write
        leaves pending in gRPC core (the initial metadata's above all) can make it refuse
        the status the handler then ends the call with
        (``GRPC_CALL_ERROR_TOO_MANY_OPERATIONS``), and the client would never hear how
        its stream ended. So a cancellation waits for the write to end (it ends with the
        call at the latest), or, while the client takes nothing, until
        ``idle_timeout_s`` is over and the writer ends the call (:attr:`ended`), then
        propagates. The status of that ending is started before the write is
        cancelled, so it is not refused."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._limit
        write = asyncio.ensure_future(self._write(message))
        try:
            await asyncio.wait({write}, timeout=self._limit)
        except asyncio.CancelledError:
            await asyncio.wait({write}, timeout=max(0.0, deadline - loop.time()))
            if write.done():
                if not write.cancelled():
                    write.exception()  # retrieved; the cancellation is what the caller gets
            else:
                await self._end(write)
            raise
        if not write.done():
            await self._end(write)
            assert self.ended is not None
            raise self.ended
        write.result()

    async def _write(self, message: Any) -> None:
        if not self._metadata_sent:  # not flow-controlled: it ends at once
            await self._context.send_initial_metadata(())
            self._metadata_sent = True
        await self._context.write(message)

    async def _end(self, write: asyncio.Future[None]) -> None:
        """Ends the call of a client that has not taken a response for the limit."""
        logger.warning(
            "%s: the client took no result for %g s (it stopped reading): ending its stream",
            self._name,
            self._limit,
        )
        err = unread_error(self._limit)
        self.ended = StatusSent(grpc.StatusCode.OUT_OF_RANGE, str(err))
        status.abort_behind_unread(self._context, err, self._limit)
        try:
            # The abort starts the status in its first step, which runs now: before the
            # write is cancelled, and before the handler can end the call with another.
            await asyncio.sleep(0)
        finally:
            write.cancel()
            await asyncio.wait({write})  # a turn: nothing is left of the write
