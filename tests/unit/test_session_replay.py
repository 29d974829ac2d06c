"""A replayed stream's lead-in: audio already final, heard only as context.

No model and no Silero: the fake decoder records what it is asked to decode, and
the fake VAD network calls a frame speech when it is loud.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.session_fakes import SR, GatedDecoder, open_session, silence, speech
from voxmesh.asr.session import Final, SessionEvent, SessionOptions, SpeechStarted
from voxmesh.errors import InvalidArgument
from voxmesh.rpc.metadata import ReplayContext

OFFSET = 10.0
"""Stream time of the replay's first sample (the router's voxmesh-offset-ms)."""
PAD_AFTER = SessionOptions().pad_after
"""Audio a final keeps after its last speech frame."""


async def replay(
    audio: list[np.ndarray], context: ReplayContext, **start: float
) -> tuple[list[SessionEvent], GatedDecoder]:
    """Feeds ``audio`` to a session replaying from ``OFFSET`` (or as ``start`` says)
    with ``context``; returns every event and the decoder (with the jobs it ran)."""
    async with open_session(SessionOptions(), replay=context, **(start or {"offset": OFFSET})) as (
        session,
        decoder,
    ):
        for part in audio:
            session.feed(part)
        session.finish()
        events: list[SessionEvent] = []
        while (event := await session.next_event()) is not None:
            events.append(event)
        return events, decoder


async def test_an_utterance_in_the_lead_in_is_context_not_a_result() -> None:
    # Lead-in: 1 s of speech (final already, "earlier words"), then 0.6 s of its pause.
    context = ReplayContext(lead_in_ms=1600, finals=((10_000, 11_200, "earlier words"),))
    events, decoder = await replay([speech(1.0), silence(0.6), speech(1.0), silence(1.0)], context)
    finals = [e for e in events if isinstance(e, Final)]
    starts = [e for e in events if isinstance(e, SpeechStarted)]
    assert len(finals) == 1 and len(starts) == 1, events
    assert starts[0].offset >= OFFSET + 1.6 - 1 / SR
    assert finals[0].start >= OFFSET + 1.6 - 1 / SR
    assert finals[0].end == pytest.approx(OFFSET + 2.6 + PAD_AFTER, abs=0.05)
    final_job = decoder.jobs[-1]
    assert final_job.prefix == "earlier words", "the earlier final is the decoder prefix"
    assert len(final_job.audio) >= int(2.6 * SR), "its audio is in front of the utterance"


async def test_a_container_replay_has_its_lead_in_after_the_skip() -> None:
    # A container is replayed whole: 2 s already final and outside the context are
    # skipped; the lead-in (1 s of speech, final already, then 0.6 s of pause) follows.
    context = ReplayContext(lead_in_ms=1600, finals=((2000, 3000, "earlier words"),))
    audio = [speech(1.5), silence(0.5), speech(1.0), silence(0.6), speech(1.0), silence(1.0)]
    events, decoder = await replay(audio, context, skip=2.0)
    finals = [e for e in events if isinstance(e, Final)]
    assert len(finals) == 1, events
    assert finals[0].start >= 2.0 + 1.6 - 1 / SR, "offsets count from the stream start"
    assert finals[0].end == pytest.approx(2.0 + 2.6 + PAD_AFTER, abs=0.05)
    assert decoder.jobs[-1].prefix == "earlier words"
    assert len(decoder.jobs[-1].audio) >= int(2.6 * SR), "the lead-in, not the skip, in front"
    assert len(decoder.jobs[-1].audio) < int(4.0 * SR)


async def test_the_lead_ins_prompt_is_the_decodes_prompt() -> None:
    context = ReplayContext(
        lead_in_ms=1600, finals=((10_000, 11_200, "earlier words"),), prompt="older text"
    )
    _, decoder = await replay([speech(1.0), silence(0.6), speech(1.0), silence(1.0)], context)
    assert decoder.jobs[-1].prompt == "older text"
    assert decoder.jobs[-1].prefix == "earlier words"


async def test_speech_going_on_where_the_lead_in_ends_starts_an_utterance_there() -> None:
    # An utterance cut at max_utterance: its first 1.5 s were final, speech goes on.
    context = ReplayContext(lead_in_ms=1500, finals=((10_000, 11_500, "first half"),))
    events, decoder = await replay([speech(2.5), silence(1.0)], context)
    finals = [e for e in events if isinstance(e, Final)]
    starts = [e for e in events if isinstance(e, SpeechStarted)]
    assert len(finals) == 1 and [s.offset for s in starts] == [pytest.approx(OFFSET + 1.5)]
    assert finals[0].start == pytest.approx(OFFSET + 1.5)
    assert decoder.jobs[-1].prefix == "first half"


async def test_a_lead_in_with_nothing_after_it_gives_no_result() -> None:
    context = ReplayContext(lead_in_ms=1500, finals=((10_000, 11_200, "all of it"),))
    events, decoder = await replay([speech(1.0), silence(1.5)], context)
    assert events == [] and decoder.jobs == []


async def test_a_lead_in_longer_than_whisper_hears_is_invalid() -> None:
    with pytest.raises(InvalidArgument, match="longer than Whisper's window"):
        await replay([speech(0.1)], ReplayContext(lead_in_ms=31_000, finals=()))
