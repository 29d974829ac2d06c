"""What the servicer answers and counts when something other than the input fails: the
model raising, the client cancelling; and the language its interims report.

No sockets and no model: the servicer of :func:`tests.unit.test_asr_unary_and_end.recognizer`,
on a fake model, called with a context that records how the call was aborted.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import grpc
import numpy as np
import pytest

from tests.conditions import wait_until_async
from tests.session_fakes import silence, speech
from tests.unit.test_asr_unary_and_end import linear16, pcm16, recognizer
from voxmesh.asr.decoder import DecodeJob, DecodeOutput
from voxmesh.asr.servicer import RecognizerServicer
from voxmesh.asr.session import SessionOptions, StreamSession
from voxmesh.stt.v1 import stt_pb2

Req = stt_pb2.StreamingRecognizeRequest


class Aborted(Exception):
    """What the fake context's abort raises (grpc's raises an AbortError)."""


class RecordingContext:
    """Stands in for ``grpc.aio.ServicerContext``: records the status of an abort."""

    def __init__(self, time_remaining: float | None = None) -> None:
        self.status: grpc.Status | None = None
        self._remaining = time_remaining

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    def time_remaining(self) -> float | None:
        return self._remaining

    async def abort_with_status(self, status: grpc.Status) -> None:
        self.status = status
        raise Aborted(status.details)


def errors_counted(servicer: RecognizerServicer, code: str) -> float:
    return float(servicer._instance.metrics.errors.labels(code)._value.get())


def results_counted(servicer: RecognizerServicer, kind: str) -> float:
    return float(servicer._instance.metrics.results.labels(kind)._value.get())


class FailingModel:
    """A model that fails the way CUDA does, with internals in its message."""

    def decode(self, jobs: Sequence[DecodeJob]) -> list[DecodeOutput]:
        raise RuntimeError("CUDA failed with error out of memory at 0x7f3a (internal detail)")


async def requests(
    audio: np.ndarray,
    *,
    interim: bool = False,
    hold: asyncio.Event | None = None,
    paced: list[StreamSession] | None = None,
) -> AsyncIterator[Req]:
    """The config, then ``audio`` in 100 ms chunks; then waits for ``hold``, if given.
    ``paced``: each chunk once the stream's session has caught up with the last (as
    audio sent live arrives), not all at once."""
    yield Req(
        streaming_config=stt_pb2.StreamingRecognitionConfig(
            config=linear16(), interim_results=interim
        )
    )
    data = pcm16(audio)
    for i in range(0, len(data), 3200):
        if paced is not None and i:
            await wait_until_async(lambda: bool(paced) and paced[0].caught_up)
        yield Req(audio_content=data[i : i + 3200])
    if hold is not None:
        await hold.wait()


async def test_a_model_failure_is_unavailable_without_its_internals(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """It reached the client as UNKNOWN with the exception's text, and was not counted."""
    async with recognizer(monkeypatch, SessionOptions(context=0.0)) as (servicer, _):
        servicer._instance.scheduler._decoder = FailingModel()  # type: ignore[assignment]
        context = RecordingContext()
        audio = np.concatenate([speech(1.0), silence(1.0)])
        with pytest.raises(Aborted):
            async with asyncio.timeout(20):
                async for _ in servicer.StreamingRecognize(requests(audio), cast(Any, context)):
                    pass
        assert context.status is not None
        assert context.status.code == grpc.StatusCode.UNAVAILABLE
        assert "RuntimeError" in context.status.details
        assert "0x7f3a" not in context.status.details
        assert errors_counted(servicer, "UNAVAILABLE") == 1

        unary = RecordingContext()
        request = stt_pb2.RecognizeRequest(config=linear16(), audio_content=pcm16(audio))
        with pytest.raises(Aborted):
            async with asyncio.timeout(20):
                await servicer.Recognize(request, cast(Any, unary))
        assert unary.status is not None and unary.status.code == grpc.StatusCode.UNAVAILABLE
        assert errors_counted(servicer, "UNAVAILABLE") == 2


@pytest.mark.parametrize(("remaining", "code"), [(None, "CANCELLED"), (0.0, "DEADLINE_EXCEEDED")])
async def test_a_cancelled_call_is_counted_by_why(
    monkeypatch: pytest.MonkeyPatch, remaining: float | None, code: str
) -> None:
    """Cancels and deadlines were both counted as INTERNAL; a cancelled Recognize not
    at all."""
    async with recognizer(monkeypatch, SessionOptions(context=0.0)) as (servicer, sessions):
        hold = asyncio.Event()
        context = cast(Any, RecordingContext(remaining))

        async def consume() -> None:
            async for _ in servicer.StreamingRecognize(requests(speech(0.5), hold=hold), context):
                pass

        stream = asyncio.create_task(consume())
        await wait_until_async(lambda: bool(sessions))
        stream.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stream
        assert errors_counted(servicer, code) == 1
        assert errors_counted(servicer, "INTERNAL") == 0

        scheduler = servicer._instance.scheduler
        scheduler._decoder.gate.clear()  # type: ignore[attr-defined]  # the decode waits
        request = stt_pb2.RecognizeRequest(
            config=linear16(), audio_content=pcm16(np.concatenate([speech(1.0), silence(1.0)]))
        )
        unary = asyncio.create_task(servicer.Recognize(request, context))
        await wait_until_async(lambda: len(sessions) == 2)
        unary.cancel()
        with pytest.raises(asyncio.CancelledError):
            await unary
        scheduler._decoder.gate.set()  # type: ignore[attr-defined]
        assert errors_counted(servicer, code) == 2


async def test_requests_that_end_past_the_deadline_are_not_a_half_close(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """gRPC ends the requests of a call whose deadline passed as a half-close would: the
    stream was finished (a final decode for no one), answered OK and not counted."""
    async with recognizer(monkeypatch, SessionOptions(context=0.0)) as (servicer, _):
        context = RecordingContext(time_remaining=0.0)
        stream = servicer.StreamingRecognize(requests(speech(1.0)), cast(Any, context))
        with pytest.raises(Aborted):
            async with asyncio.timeout(20):
                async for _ in stream:
                    pass
        assert context.status is not None
        assert context.status.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert errors_counted(servicer, "DEADLINE_EXCEEDED") == 1
        assert results_counted(servicer, "final") == 0


@pytest.mark.parametrize(("remaining", "code"), [(None, "CANCELLED"), (0.1, "DEADLINE_EXCEEDED")])
async def test_a_stream_closed_by_grpc_is_counted_by_why(
    monkeypatch: pytest.MonkeyPatch, remaining: float | None, code: str
) -> None:
    """gRPC closes the stream's generator when it cannot send a response (the call ended
    while the server was sending): that end was not counted at all. And the stream's own
    generator was left to the garbage collector: the slot was free while the reader still
    read and the session still decoded, until the event loop's finaliser got to them."""
    async with recognizer(monkeypatch, SessionOptions(context=0.0)) as (servicer, sessions):
        hold = asyncio.Event()
        audio = np.concatenate([speech(1.0), silence(1.0)])
        stream = servicer.StreamingRecognize(
            requests(audio, hold=hold), cast(Any, RecordingContext(remaining))
        )
        async with asyncio.timeout(20):
            await anext(aiter(stream))  # the stream's first response was sent
            await stream.aclose()  # type: ignore[attr-defined]  # an async generator
        assert errors_counted(servicer, code) == 1
        assert sum(errors_counted(servicer, c.name) for c in grpc.StatusCode) == 1
        assert servicer._instance.active == 0
        assert sessions[0].worker.done()
        readers = [
            t
            for t in asyncio.all_tasks()
            if not t.done() and t.get_coro().__qualname__ == "RecognizerServicer._read"  # type: ignore[union-attr]
        ]
        assert readers == []


class GermanModel:
    """A model that hears German (a multilingual model detecting the language)."""

    def decode(self, jobs: Sequence[DecodeJob]) -> list[DecodeOutput]:
        return [DecodeOutput(text="hallo welt", avg_logprob=-0.1, language="de") for _ in jobs]


async def test_interims_report_the_language_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Interims said "en" (the default) while the final of the same speech said "de";
    and they were counted as events, not interims."""
    options = SessionOptions(context=0.0, first_interim=0.5, interim_interval=0.5)
    async with recognizer(monkeypatch, options) as (servicer, sessions):
        servicer._instance.scheduler._decoder = GermanModel()  # type: ignore[assignment]
        audio = np.concatenate([speech(2.0), silence(1.0)])
        results = []
        async with asyncio.timeout(20):
            async for response in servicer.StreamingRecognize(
                requests(audio, interim=True, paced=sessions), cast(Any, RecordingContext())
            ):
                if response.HasField("result"):
                    results.append(response.result)
        interims = [r for r in results if not r.is_final]
        assert interims and all(r.language_code == "de" for r in interims)
        assert [r.language_code for r in results if r.is_final] == ["de"]
        assert results_counted(servicer, "interim") == len(interims)
        assert results_counted(servicer, "final") == 1
