"""A stream session's decode work under load: what it withdraws from the scheduler.

No model and no Silero: a fake decoder that holds the model busy until released,
and a fake VAD network that calls a frame speech when it is loud.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.conditions import wait_until_async
from tests.session_fakes import SR, GatedDecoder, LoudnessVad, open_session, silence, speech
from voxmesh.asr.decoder import DecodeJob
from voxmesh.asr.scheduler import DecodeScheduler, SchedulerOptions
from voxmesh.asr.session import (
    Final,
    Interim,
    SessionEvent,
    SessionOptions,
    StreamParams,
    StreamSession,
)
from voxmesh.asr.vad import FRAME_SAMPLES, StreamingVad


async def run_utterance_behind_a_busy_model(
    adaptive: bool,
) -> tuple[GatedDecoder, list[SessionEvent]]:
    """One utterance (1 s of speech, then silence) while another stream's decode holds
    the model; returns what the model decoded and what the session emitted."""
    decoder = GatedDecoder()
    scheduler = DecodeScheduler(decoder, SchedulerOptions(max_batch=1))
    scheduler.start()
    session = StreamSession(
        StreamParams(stream_id="s1"),
        SessionOptions(adaptive=adaptive, context=0.0),
        scheduler,
        vad=StreamingVad(session=LoudnessVad()),
    )
    try:
        blocker = scheduler.enqueue(DecodeJob(audio=silence(0.1)), realtime=True, final=True)
        await wait_until_async(lambda: blocker.started)
        session.feed(speech(1.0))
        # The first interim (after 0.5 s of speech) waits behind the running decode.
        await wait_until_async(lambda: scheduler.pending == 1)
        session.feed(silence(0.1))  # the pause begins
        if adaptive:
            await wait_until_async(lambda: scheduler.pending == 0)
        session.feed(silence(0.6))  # long enough for the speculative decode and the end
        await wait_until_async(lambda: scheduler.pending >= 1)
        decoder.gate.set()
        session.finish()
        events: list[SessionEvent] = []
        while (event := await session.events.get()) is not None:
            events.append(event)
        return decoder, events
    finally:
        decoder.gate.set()
        await session.close()
        await scheduler.shutdown()


async def test_an_interim_still_queued_when_the_pause_begins_is_withdrawn() -> None:
    decoder, events = await run_utterance_behind_a_busy_model(adaptive=True)
    # The model ran the other stream's decode and this utterance's final: no interim.
    assert len(decoder.jobs) == 2
    assert [type(e) for e in events if isinstance(e, Final | Interim)] == [Final]
    final = next(e for e in events if isinstance(e, Final))
    assert final.text == "hello world"


async def test_without_adaptive_scheduling_the_queued_interim_still_runs() -> None:
    decoder, events = await run_utterance_behind_a_busy_model(adaptive=False)
    assert len(decoder.jobs) == 3
    assert [type(e) for e in events if isinstance(e, Final | Interim)] == [Interim, Final]


async def test_a_queued_job_can_be_withdrawn_but_not_once_the_model_took_it() -> None:
    decoder = GatedDecoder()
    scheduler = DecodeScheduler(decoder, SchedulerOptions(max_batch=1))
    scheduler.start()
    try:
        running = scheduler.enqueue(DecodeJob(audio=silence(0.1)), realtime=True, final=True)
        queued = scheduler.enqueue(DecodeJob(audio=silence(0.2)), realtime=True, final=False)
        kept = scheduler.enqueue(DecodeJob(audio=silence(0.3)), realtime=True, final=False)
        await wait_until_async(lambda: running.started)
        assert not running.withdraw()
        assert not queued.started and queued.withdraw()
        assert queued.future.cancelled() and not queued.withdraw()
        decoder.gate.set()
        await kept.future
        assert [len(j.audio) for j in decoder.jobs] == [int(0.1 * SR), int(0.3 * SR)]
        assert scheduler.stats.dropped == 1
    finally:
        decoder.gate.set()
        await scheduler.shutdown()


async def finals_until_done(session: StreamSession) -> list[Final]:
    finals = []
    while (event := await session.events.get()) is not None:
        if isinstance(event, Final):
            finals.append(event)
    return finals


async def test_the_lead_pad_survives_an_onset_the_vad_reports_late() -> None:
    """The worker trims idle audio while the endpointer is still counting an onset
    towards ``min_speech``: the pad in front of that onset must stay."""
    options = SessionOptions(context=0.0)
    async with open_session(options) as (session, decoder):
        session.feed(silence(31 * FRAME_SAMPLES / SR))
        await wait_until_async(lambda: session.caught_up)
        session.feed(speech(2 * FRAME_SAMPLES / SR))  # 2 of min_speech's 3 frames
        await wait_until_async(lambda: session.caught_up)
        session.feed(speech(1.0))
        session.feed(silence(0.7))
        session.finish()
        assert [f.text for f in await finals_until_done(session)] == ["hello world"]
        assert decoder.jobs, "the utterance was decoded"
        for decoded in decoder.jobs:
            assert np.flatnonzero(decoded.audio)[0] == int(options.pad_before * SR)


async def test_an_utterance_starts_after_the_previous_final_even_with_its_lead_pad() -> None:
    """Two utterances 0.5 s apart: the second's lead pad (0.4 s) would reach back
    into the first's trailing pad (0.2 s); results never overlap."""
    async with open_session(SessionOptions(context=0.0)) as (session, _):
        for chunk in (silence(0.5), speech(1.0), silence(0.5), speech(1.0), silence(0.7)):
            session.feed(chunk)
        session.finish()
        finals = await finals_until_done(session)
        assert len(finals) == 2
        assert finals[0].end <= finals[1].start < finals[1].end


@pytest.mark.parametrize(
    ("utilization", "ahead_at_short_pause"), [(0.0, True), (0.49, True), (0.5, False)]
)
async def test_an_idle_model_decodes_ahead_of_a_shorter_pause(
    monkeypatch: pytest.MonkeyPatch, utilization: float, ahead_at_short_pause: bool
) -> None:
    """With the defaults, an idle model (busy under half of the last 5 s) decodes the
    utterance ahead once a pause reaches ``speculative_pause_idle`` (0.1 s); a busier
    one waits for ``speculative_pause`` (0.2 s), keeping its time for due decodes."""
    options = SessionOptions(context=0.0)
    assert options.speculative_pause_idle < 0.13 < options.speculative_pause < 0.23
    async with open_session(options) as (session, decoder):
        scheduler = session._scheduler
        monkeypatch.setattr(scheduler, "utilization", lambda window=5.0: utilization)
        session.feed(np.concatenate([silence(0.5), speech(1.0)]))
        await wait_until_async(lambda: session.caught_up)
        interims = len(decoder.jobs)
        session.feed(silence(0.13))
        await wait_until_async(lambda: session.caught_up)
        assert (len(decoder.jobs) > interims) is ahead_at_short_pause
        session.feed(silence(0.1))  # the pause reaches 0.23 s: decoded ahead either way
        await wait_until_async(lambda: session.caught_up and len(decoder.jobs) == interims + 1)


async def test_a_fixed_cadence_keeps_the_configured_pause() -> None:
    """Without adaptive mode, the decode ahead waits for ``speculative_pause``, idle
    model or not."""
    async with open_session(SessionOptions(context=0.0, adaptive=False)) as (session, decoder):
        session.feed(np.concatenate([silence(0.5), speech(1.0)]))
        await wait_until_async(lambda: session.caught_up)
        interims = len(decoder.jobs)
        session.feed(silence(0.13))
        await wait_until_async(lambda: session.caught_up)
        assert len(decoder.jobs) == interims
