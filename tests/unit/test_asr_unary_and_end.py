"""Unary Recognize on long audio, and the end of a stream whose events nobody read
for a while.

No sockets and no model: the servicer is called directly, on an instance whose
fake model decodes at once and whose fake VAD calls a loud frame speech (see
:mod:`tests.session_fakes`). Every utterance here (1 s of speech,
1 s of silence, no interims) gives three events: speech started, speech ended
and its final.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import numpy as np
import pytest

from tests.conditions import wait_until_async
from tests.session_fakes import (
    GatedDecoder,
    LoudnessVad,
    fake_instance,
    session_on,
    silence,
    speech,
)
from tests.streaming import error_at_the_end, sending_without_reading
from voxmesh.asr import servicer as servicer_module
from voxmesh.asr.decoder import DecodeJob, DecodeOutput
from voxmesh.asr.servicer import RecognizerServicer
from voxmesh.asr.session import (
    Final,
    SessionOptions,
    SpeechEnded,
    SpeechStarted,
    StreamParams,
    StreamSession,
)
from voxmesh.asr.vad import StreamingVad
from voxmesh.stt.v1 import stt_pb2

SR = 16000
EVENTS_PER_UTTERANCE = 3
SMALL_ROOM = SessionOptions(context=0.0, max_utterance=5.0)
"""A session that takes at most 6 s of audio ahead of its worker (41 s by default)."""


class FakeContext:
    """Stands in for ``grpc.aio.ServicerContext``: no metadata; an abort fails the test."""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    def time_remaining(self) -> float | None:
        return None  # no deadline

    async def abort_with_status(self, status: Any) -> None:
        raise AssertionError(f"the RPC was aborted: {status}")


def utterances(count: int) -> np.ndarray:
    """``count`` utterances of 1 s of speech, each followed by 1 s of silence."""
    return np.concatenate([np.concatenate([speech(1.0), silence(1.0)])] * count)


def pcm16(samples: np.ndarray) -> bytes:
    return (samples * 32767).astype("<i2").tobytes()


def linear16() -> stt_pb2.RecognitionConfig:
    return stt_pb2.RecognitionConfig(
        encoding=stt_pb2.AUDIO_ENCODING_LINEAR16,
        sample_rate_hertz=SR,
        priority=stt_pb2.PRIORITY_BATCH,
    )


@contextlib.asynccontextmanager
async def recognizer(
    monkeypatch: pytest.MonkeyPatch, options: SessionOptions
) -> AsyncIterator[tuple[RecognizerServicer, list[StreamSession]]]:
    """A servicer on a serving instance with a fake model and fake VAD; the list
    collects the sessions its RPCs open."""
    sessions: list[StreamSession] = []

    def session(*args: Any, **kwargs: Any) -> StreamSession:
        opened = StreamSession(*args, vad=StreamingVad(session=LoudnessVad()), **kwargs)
        sessions.append(opened)
        return opened

    monkeypatch.setattr(servicer_module, "StreamSession", session)
    decoder = GatedDecoder()
    decoder.gate.set()
    instance = fake_instance(decoder, options, max_streams=2)
    instance.start()
    try:
        yield (
            RecognizerServicer(
                instance,
                max_chunk_bytes=1 << 20,
                max_unary_bytes=1 << 24,
                max_unary_seconds=600.0,
            ),
            sessions,
        )
    finally:
        await instance.shutdown()


async def test_recognize_reads_results_while_long_audio_goes_in(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """40 utterances give 120 events, more than a session queues (64): read only once
    all audio was in, the worker blocked on the full queue and the feeding waited
    forever for the buffer room that only the worker frees."""
    request = stt_pb2.RecognizeRequest(config=linear16(), audio_content=pcm16(utterances(40)))
    async with recognizer(monkeypatch, SMALL_ROOM) as (servicer, sessions):
        async with asyncio.timeout(20):
            response = await servicer.Recognize(request, cast(Any, FakeContext()))
        assert sessions[0].worker.done()
    assert [r.alternatives[0].transcript for r in response.results] == ["hello world"] * 40
    assert response.summary.final_results == 40


async def test_a_stream_read_late_still_ends_with_its_summary(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The client takes two responses, then reads nothing while the other 64 events
    fill the session's queue to the brim; the stream must still end with its
    summary, not wait for an end the full queue had no room for."""
    count = 22  # 66 events: 2 read early, 64 (the queue's size) left
    audio = pcm16(utterances(count))

    async def requests() -> AsyncIterator[stt_pb2.StreamingRecognizeRequest]:
        yield stt_pb2.StreamingRecognizeRequest(
            streaming_config=stt_pb2.StreamingRecognitionConfig(config=linear16())
        )
        for i in range(0, len(audio), 2 * SR):
            yield stt_pb2.StreamingRecognizeRequest(audio_content=audio[i : i + 2 * SR])

    async with recognizer(monkeypatch, SMALL_ROOM) as (servicer, sessions):
        responses = servicer.StreamingRecognize(requests(), cast(Any, FakeContext()))
        early = [await anext(responses), await anext(responses)]
        session = sessions[0]
        await wait_until_async(session.events.full)
        async with asyncio.timeout(10):
            late = [response async for response in responses]
    assert [r.speech_event.type for r in early] == [
        stt_pb2.SPEECH_EVENT_TYPE_SPEECH_STARTED,
        stt_pb2.SPEECH_EVENT_TYPE_SPEECH_ENDED,
    ]
    assert len(late) == count * EVENTS_PER_UTTERANCE - 2 + 1
    assert sum(r.result.is_final for r in late) == count
    assert late[-1].summary.final_results == count


@contextlib.asynccontextmanager
async def small_queue_session(decoder: Any, max_events: int) -> AsyncIterator[StreamSession]:
    """A session (interims off) queueing at most ``max_events`` events."""
    params = StreamParams(stream_id="s1", interim_results=False)
    async with session_on(
        decoder, params, SessionOptions(context=0.0), max_events=max_events
    ) as session:
        yield session


async def test_the_end_follows_events_that_filled_the_queue() -> None:
    """The utterance's three events fill the queue just as the stream ends: the end
    (None) waits for room like the events, rather than being dropped."""
    decoder = GatedDecoder()
    decoder.gate.set()
    async with small_queue_session(decoder, max_events=EVENTS_PER_UTTERANCE) as session:
        session.feed(utterances(1))
        session.finish()
        await wait_until_async(session.events.full)
        async with asyncio.timeout(5):
            events = [event async for event in _until_none(session.events)]
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded, Final]


class FailingDecoder:
    """A fake model that fails every decode."""

    name = "fake"
    is_multilingual = False

    def supports_language(self, code: str) -> bool:
        return code == "en"

    def decode(self, jobs: Sequence[DecodeJob]) -> list[DecodeOutput]:
        raise RuntimeError("the model failed")


async def test_a_worker_failing_with_a_full_queue_still_ends_next_event() -> None:
    """The final's decode fails with the queue full (speech started and ended): there
    is no room for the end, yet ``next_event`` gives both events, then the end, and
    the worker holds the error."""
    async with small_queue_session(FailingDecoder(), max_events=2) as session:
        session.feed(utterances(1))
        session.finish()
        async with asyncio.timeout(5):
            events = [await session.next_event() for _ in range(3)]
        assert [type(e) for e in events] == [SpeechStarted, SpeechEnded, type(None)]
        assert isinstance(session.worker.exception(), RuntimeError)


async def _until_none(queue: asyncio.Queue[Any]) -> AsyncIterator[Any]:
    while (item := await queue.get()) is not None:
        yield item


class Wordy:
    """A model whose every decode is 200 KB of text: a few unread interims fill the
    client's flow-control window."""

    name = "fake"
    is_multilingual = False
    text = " ".join(f"w{i}" for i in range(40_000))

    def supports_language(self, code: str) -> bool:
        return code == "en"

    def decode(self, jobs: Sequence[DecodeJob]) -> list[DecodeOutput]:
        return [DecodeOutput(text=self.text, avg_logprob=-0.1) for _ in jobs]


async def test_a_client_that_stops_reading_results_loses_its_stream_after_the_idle_timeout(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """It keeps sending audio (so no wait for its next message times out) but reads
    nothing: the handler blocks in gRPC's write, the session's worker on its full queue
    of results, the reading of audio on the worker. Nothing ended such a stream: it held
    its slot, and a drain, for as long as the client kept its connection. Now the slot
    is freed, and the client, once it reads again, learns why after what it missed."""
    grpc = pytest.importorskip("grpc")
    from voxmesh.stt.v1 import stt_pb2_grpc

    options = SessionOptions(context=0.0, first_interim=0.1, interim_interval=0.1, adaptive=False)
    async with recognizer(monkeypatch, options) as (servicer, _):
        servicer._idle_timeout = 1.0
        servicer._instance.scheduler._decoder = Wordy()
        server = grpc.aio.server()
        stt_pb2_grpc.add_RecognizerServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = stt_pb2_grpc.RecognizerServiceStub(channel).StreamingRecognize()
                config = stt_pb2.StreamingRecognitionConfig(config=linear16(), interim_results=True)
                await call.write(stt_pb2.StreamingRecognizeRequest(streaming_config=config))
                chunk = stt_pb2.StreamingRecognizeRequest(audio_content=pcm16(speech(0.1)))
                async with sending_without_reading(call, chunk, every_s=0.1):
                    await wait_until_async(lambda: servicer._instance.active == 1, timeout=5)
                    await wait_until_async(lambda: servicer._instance.active == 0, timeout=20)
                    # Reading again, it gets what was sent, then why the stream ended.
                    ended = await error_at_the_end(call)
        finally:
            await server.stop(0)
        errors = servicer._instance.metrics.registry.get_sample_value(
            "voxmesh_asr_errors_total", {"code": "OUT_OF_RANGE"}
        )
    assert ended.code() == grpc.StatusCode.OUT_OF_RANGE, ended
    assert "no result was read for 1 s" in (ended.details() or "")
    assert errors == 1
    assert "stopped reading" in caplog.text
