"""A stream session over long audio: long silences, utterances longer than Whisper's
window, audio fed faster than real time (as Recognize and fast clients feed it),
utterances that decode as noise, and the end of a stream whose decode never ran.

No model and no Silero: the fakes of :mod:`tests.session_fakes`. Audio is fed as the
servicer feeds it: in 1 s pieces, each once the session has room for it.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence

import numpy as np
import pytest

from tests.conditions import wait_until_async
from tests.session_fakes import (
    SR,
    GatedDecoder,
    LoudnessVad,
    open_session,
    session_on,
    silence,
    speech,
)
from voxmesh.asr.decoder import DecodeJob, DecodeOutput
from voxmesh.asr.scheduler import DecodeScheduler, SchedulerOptions
from voxmesh.asr.session import (
    Final,
    SessionEvent,
    SessionOptions,
    SpeechEnded,
    StreamParams,
    StreamSession,
)
from voxmesh.asr.vad import StreamingVad
from voxmesh.errors import Unavailable

PAD_AFTER = SessionOptions().pad_after
"""Audio a final keeps after its last speech frame."""
DEADLINE_S = 20.0
"""The whole stream's deadline: the fake model decodes at once."""


async def stream(session: StreamSession, audio: np.ndarray) -> list[SessionEvent]:
    """Feeds ``audio`` like the servicer and returns every event; fails on a stall."""

    async def produce() -> None:
        for i in range(0, len(audio), SR):
            await session.wait_for_room()
            session.feed(audio[i : i + SR])
        session.finish()

    async def consume() -> list[SessionEvent]:
        events = []
        while (event := await session.next_event(producer)) is not None:
            events.append(event)
        return events

    producer = asyncio.create_task(produce())
    try:
        return await asyncio.wait_for(consume(), DEADLINE_S)
    except TimeoutError:
        pytest.fail(f"the stream stalled after {session.received_seconds:g} s were fed")
    finally:
        producer.cancel()


def finals(events: list[SessionEvent]) -> list[Final]:
    return [e for e in events if isinstance(e, Final)]


@pytest.mark.parametrize("context", [15.0, 0.0], ids=["context", "no-context"])
async def test_a_long_silence_after_an_utterance_does_not_stall_the_stream(
    context: float,
) -> None:
    """The last final stayed in the context, and the buffer behind it, while no VAD
    event came: 41 s of silence later feeding waited for room that never came."""
    audio = np.concatenate([silence(0.5), speech(1.0), silence(60.0), speech(1.0), silence(1.0)])
    async with open_session(SessionOptions(context=context)) as (session, _):
        events = await stream(session, audio)
    spans = [(f.start, f.end) for f in finals(events)]
    assert len(spans) == 2
    assert spans[1][0] > 61.0


async def test_continuous_speech_longer_than_the_buffer_does_not_stall_the_stream() -> None:
    """The cuts' finals pinned the buffer too: speech without a pause stalled at 41 s."""
    audio = np.concatenate([silence(0.5), speech(90.0), silence(1.0)])
    async with open_session(SessionOptions()) as (session, decoder):
        events = await stream(session, audio)
    spans = [(f.start, f.end) for f in finals(events)]
    assert len(spans) >= 4
    assert all(a[1] == pytest.approx(b[0]) for a, b in itertools.pairwise(spans))
    assert spans[-1][1] == pytest.approx(90.5 + PAD_AFTER, abs=0.1)  # speech end + pad
    assert all(len(job.audio) <= 30 * SR for job in decoder.jobs)


async def test_an_utterance_that_ended_before_it_was_cut_is_still_cut() -> None:
    """Fed faster than real time, an utterance of 35 s ended before the worker reached
    its 25 s cut: it was decoded whole, a window of over 30 s, and Whisper, which hears
    30 s, lost its tail while the final claimed all of it."""
    audio = np.concatenate([silence(0.5), speech(35.0), silence(1.0)])
    # With context, the session takes 41 s before feeding waits for room: the whole
    # utterance is in before the worker looks at it.
    async with open_session(SessionOptions(context=15.0)) as (session, decoder):
        events = await stream(session, audio)
    spans = [(f.start, f.end) for f in finals(events)]
    assert len(spans) == 2
    assert spans[0][1] == pytest.approx(spans[1][0])
    assert spans[1][1] == pytest.approx(35.5 + PAD_AFTER, abs=0.1)
    assert all(len(job.audio) <= 30 * SR for job in decoder.jobs)


async def test_a_decode_ahead_short_of_the_pad_is_the_final() -> None:
    """The decode ahead starts once the pause reaches the speculative pause, before
    all the pad after speech has arrived; the pause then ends the utterance with no
    speech in it, so that decode is the final: no second decode (which would cost a
    whole encoder pass of latency), and the final still spans speech end + pad."""
    options = SessionOptions(context=0.0, speculative_pause=0.1, pad_after=0.2)
    async with open_session(options) as (session, decoder):
        session.feed(np.concatenate([silence(0.5), speech(1.0)]))
        await wait_until_async(lambda: session.caught_up)
        interims = len(decoder.jobs)
        session.feed(silence(0.13))  # past the speculative pause, short of the pad
        await wait_until_async(lambda: session.caught_up and len(decoder.jobs) > interims)
        ahead = len(decoder.jobs[-1].audio)
        session.feed(silence(0.7))
        session.finish()
        events = []
        while (event := await session.next_event()) is not None:
            events.append(event)
    (final,) = finals(events)
    assert len(decoder.jobs) == interims + 1
    assert final.end == pytest.approx(1.5 + 0.2, abs=0.05)  # speech end + pad
    assert (final.end - final.start) * SR - 0.1 * SR < ahead < (final.end - final.start) * SR


async def test_a_decode_ahead_of_a_pause_that_speech_resumed_is_not_the_final() -> None:
    options = SessionOptions(context=0.0, speculative_pause=0.1, pad_after=0.2)
    async with open_session(options) as (session, decoder):
        session.feed(np.concatenate([silence(0.5), speech(1.0)]))
        await wait_until_async(lambda: session.caught_up)
        interims = len(decoder.jobs)
        session.feed(silence(0.15))
        await wait_until_async(lambda: session.caught_up and len(decoder.jobs) > interims)
        ahead = len(decoder.jobs)
        session.feed(np.concatenate([speech(0.5), silence(0.7)]))
        session.finish()
        events = []
        while (event := await session.next_event()) is not None:
            events.append(event)
    (final,) = finals(events)
    assert len(decoder.jobs) > ahead
    assert final.end == pytest.approx(2.15 + 0.2, abs=0.05)  # speech end + pad
    assert len(decoder.jobs[-1].audio) == pytest.approx((final.end - final.start) * SR, abs=1)


async def test_a_decode_dropped_by_a_shutdown_ends_the_stream_in_an_error() -> None:
    """The scheduler cancelled the decode: the worker ended cancelled, which read as a
    clean end, and the client got a summary and OK without its final."""
    decoder = GatedDecoder()
    scheduler = DecodeScheduler(decoder, SchedulerOptions(max_batch=1))
    scheduler.start()
    session = StreamSession(
        StreamParams(stream_id="s1"),
        SessionOptions(context=0.0),
        scheduler,
        vad=StreamingVad(session=LoudnessVad()),
    )
    try:
        session.feed(np.concatenate([speech(1.0), silence(0.7)]))
        session.finish()
        # SpeechStarted and SpeechEnded are out: the final's decode is queued or running.
        await wait_until_async(lambda: session.events.qsize() >= 2)
        stopping = asyncio.create_task(scheduler.shutdown())
        decoder.gate.set()
        await stopping
        while await asyncio.wait_for(session.next_event(), DEADLINE_S) is not None:
            pass
        with pytest.raises(Unavailable, match="shutting down"):
            session.raise_worker_error()
    finally:
        decoder.gate.set()
        await session.close()
        await scheduler.shutdown()


class NoiseDecoder(GatedDecoder):
    """A model that hears every window as no speech (a cough, a door)."""

    def decode(self, jobs: Sequence[DecodeJob]) -> list[DecodeOutput]:
        return [DecodeOutput(text="", avg_logprob=-2.0, no_speech_prob=0.9) for _ in jobs]


@pytest.mark.parametrize("interims", [False, True])
async def test_every_speech_ended_is_followed_by_its_final_even_for_noise(interims: bool) -> None:
    """stt.proto promises a final after SPEECH_ENDED. An utterance decoded as noise with
    no interim sent for it gave none, so a client waiting for it waited in vain; it gets
    a final with no text, and no words are emitted."""
    params = StreamParams(stream_id="s1", interim_results=interims)
    async with session_on(NoiseDecoder(), params, SessionOptions(context=0.0)) as session:
        audio = np.concatenate([speech(1.0), silence(1.0), speech(1.0), silence(1.0)])
        events = await stream(session, audio)
    ended = [e for e in events if isinstance(e, SpeechEnded)]
    assert len(ended) == 2
    for end in ended:
        following = events[events.index(end) + 1 :]
        assert any(isinstance(e, Final) for e in following), "no final after SPEECH_ENDED"
    assert len(finals(events)) == 2
    assert all(f.text == "" and not f.words for f in finals(events))
