"""Failover bookkeeping: the replay log and the result tracker of the router."""

from __future__ import annotations

import pytest

from services.router.failover import ReplayLog, ResultTracker
from voxmesh.rpc.metadata import (
    CONTEXT_KEY,
    MAX_CONTEXT_FINALS,
    OFFSET_KEY,
    SKIP_KEY,
    ReplayContext,
    replay_context_of,
)
from voxmesh.stt.v1 import stt_pb2


def audio(data: bytes) -> stt_pb2.StreamingRecognizeRequest:
    return stt_pb2.StreamingRecognizeRequest(audio_content=data)


def drain(log: ReplayLog) -> bytes:
    out = b""
    while (request := log.next_request()) is not None:
        out += request.audio_content
    return out


def chunks(log: ReplayLog, n: int, size: int) -> bytes:
    data = b""
    for i in range(n):
        part = bytes([i]) * size
        log.append(audio(part))
        data += part
    return data


def test_linear16_replays_from_the_end_of_the_last_final() -> None:
    log = ReplayLog(linear16=True, sample_rate=16000, replay_max_bytes=1 << 20)
    data = chunks(log, 5, 3200)  # five 100 ms chunks
    assert drain(log) == data
    assert log.unsent_bytes() == 0
    log.commit(250.0)  # final ended at 250 ms = byte 8000, inside chunk 2
    assert log.restart()
    assert log.resume_metadata() == ((OFFSET_KEY, "250"),)
    assert drain(log) == data[8000:]


def test_resume_point_is_rounded_down_to_a_whole_sample() -> None:
    log = ReplayLog(linear16=True, sample_rate=44100, replay_max_bytes=1 << 20)
    data = chunks(log, 3, 8820)  # 100 ms each
    drain(log)
    log.commit(123.4)  # 44.1 samples per ms: whole samples every 10 ms -> 120 ms
    assert log.restart()
    # The 3 ms from there to the final's end were recognised already: a lead-in.
    assert lead_in(log) == ("120", ReplayContext(lead_in_ms=3, finals=()))
    assert drain(log) == data[120 * 441 // 10 * 2 :]


def test_commit_never_moves_past_what_was_sent() -> None:
    log = ReplayLog(linear16=True, sample_rate=16000, replay_max_bytes=1 << 20)
    data = chunks(log, 2, 3200)
    assert log.next_request() is not None
    log.commit(500.0)
    assert log.restart()
    assert log.resume_metadata() == ((OFFSET_KEY, "100"),)
    assert drain(log) == data[3200:]


def test_container_replays_everything_and_skips() -> None:
    log = ReplayLog(linear16=False, sample_rate=0, replay_max_bytes=1 << 20)
    data = chunks(log, 4, 1000)
    drain(log)
    assert log.resume_metadata() == ()
    log.commit(1500.7)
    assert log.restart()
    assert log.resume_metadata() == ((SKIP_KEY, "1500"),)
    assert drain(log) == data
    assert log.audio_seconds() == 0.0


def test_bound_makes_the_stream_unreplayable_until_a_final_passes_the_dropped_audio() -> None:
    log = ReplayLog(linear16=True, sample_rate=16000, replay_max_bytes=5000)
    chunks(log, 1, 3200)
    drain(log)
    chunks(log, 1, 3200)  # 6400 kept > 5000: the sent chunk is dropped
    assert not log.restart()
    assert log.unsent_bytes() == 3200
    drain(log)
    log.commit(200.0)  # the final covers all the dropped audio
    assert log.replayable
    assert log.restart()
    assert drain(log) == b""


def test_container_past_the_bound_is_never_replayable() -> None:
    log = ReplayLog(linear16=False, sample_rate=0, replay_max_bytes=1500)
    chunks(log, 1, 1000)
    drain(log)
    chunks(log, 1, 1000)
    log.commit(10_000.0)
    assert not log.replayable
    assert not log.restart()


MS = 32  # bytes per millisecond of 16 kHz LINEAR16


def lead_in(log: ReplayLog) -> tuple[str | None, ReplayContext | None]:
    """The offset and the lead-in a new instance would be told of."""
    metadata = dict(log.resume_metadata())
    offset, raw = metadata.get(OFFSET_KEY), metadata.get(CONTEXT_KEY)
    assert offset is None or isinstance(offset, str)
    assert raw is None or isinstance(raw, bytes)
    return offset, ReplayContext.decode(raw) if raw is not None else None


def test_the_replay_starts_with_the_earlier_finals_as_a_lead_in() -> None:
    log = ReplayLog(linear16=True, sample_rate=16000, replay_max_bytes=1 << 20, context_ms=15000)
    data = chunks(log, 30, 100 * MS)  # 3 s
    drain(log)
    log.commit(1000.0, 200.0, "one")
    log.commit(2000.0, 1200.0, "two")
    log.commit(2500.0, 2100.0, "")  # no words: moves the resume point, no context
    assert log.restart()
    offset, context = lead_in(log)
    assert offset == "200"
    assert context == ReplayContext(
        lead_in_ms=2300, finals=((200, 1000, "one"), (1200, 2000, "two"))
    )
    assert drain(log) == data[200 * MS :]
    assert log.pending, "the audio after the last final is still to be recognised"


def test_finals_older_than_the_context_leave_the_lead_in() -> None:
    log = ReplayLog(linear16=True, sample_rate=16000, replay_max_bytes=1 << 20, context_ms=1000)
    data = chunks(log, 30, 100 * MS)
    drain(log)
    log.commit(1000.0, 200.0, "one")
    log.commit(2000.0, 1200.0, "two")  # "one" starts more than 1 s before 2000 ms
    assert log.restart()
    offset, context = lead_in(log)
    assert (offset, context) == (
        "1200",
        ReplayContext(lead_in_ms=800, finals=((1200, 2000, "two"),), prompt="one"),
    )
    assert drain(log) == data[1200 * MS :]


def test_the_text_of_finals_older_than_the_context_is_the_lead_ins_prompt() -> None:
    log = ReplayLog(linear16=True, sample_rate=16000, replay_max_bytes=1 << 20, context_ms=1000)
    chunks(log, 30, 100 * MS)
    drain(log)
    log.commit(500.0, 0.0, "zero")
    log.commit(1000.0, 600.0, "one two")
    log.commit(2000.0, 1200.0, "three")  # "zero" and "one two" leave the context
    assert log.restart()
    _, context = lead_in(log)
    assert context == ReplayContext(
        lead_in_ms=800, finals=((1200, 2000, "three"),), prompt="zero one two"
    )


def test_without_context_the_replay_starts_at_the_last_final() -> None:
    log = ReplayLog(linear16=True, sample_rate=16000, replay_max_bytes=1 << 20)
    data = chunks(log, 30, 100 * MS)
    drain(log)
    log.commit(1000.0, 200.0, "one")
    assert log.restart()
    assert lead_in(log) == ("1000", None)
    assert drain(log) == data[1000 * MS :]


def test_only_a_lead_in_kept_is_nothing_pending() -> None:
    log = ReplayLog(linear16=True, sample_rate=16000, replay_max_bytes=1 << 20, context_ms=15000)
    chunks(log, 10, 100 * MS)
    drain(log)
    log.commit(1000.0, 0.0, "all of it")
    assert not log.pending


def test_a_container_skips_to_the_lead_in_and_names_it() -> None:
    log = ReplayLog(linear16=False, sample_rate=0, replay_max_bytes=1 << 20, context_ms=1500)
    data = chunks(log, 4, 1000)
    drain(log)
    log.commit(1000.0, 200.0, "one")
    log.commit(2000.0, 1200.0, "two")  # "one" starts more than 1.5 s before 2000 ms
    log.commit(2500.7, 2100.0, "")  # no words: moves the skip, no context
    assert log.restart()
    metadata = dict(log.resume_metadata())
    assert metadata.pop(SKIP_KEY) == "1200"
    raw = metadata.pop(CONTEXT_KEY)
    assert isinstance(raw, bytes) and not metadata
    assert ReplayContext.decode(raw) == ReplayContext(
        lead_in_ms=1300, finals=((1200, 2000, "two"),), prompt="one"
    )
    assert drain(log) == data, "a container is replayed whole"
    log.commit(2400.0, 2300.0, "late")  # ends before the skip: changes nothing
    assert dict(log.resume_metadata())[SKIP_KEY] == "1200"


def test_the_bound_drops_the_lead_in_first_and_the_stream_still_fails_over() -> None:
    log = ReplayLog(linear16=True, sample_rate=16000, replay_max_bytes=600 * MS, context_ms=15000)
    data = chunks(log, 5, 100 * MS)
    drain(log)
    log.commit(400.0, 0.0, "early")  # 400 ms of lead-in, 100 ms after it
    data += chunks(log, 3, 100 * MS)  # 800 ms kept > 600 ms: lead-in audio goes
    assert log.replayable
    assert log.restart()
    assert lead_in(log) == ("400", None), "a lead-in with a gap is not sent"
    assert drain(log) == data[400 * MS :]


def replayed_log(rate: int, seconds: float, context_ms: int = 15000) -> ReplayLog:
    log = ReplayLog(
        linear16=True, sample_rate=rate, replay_max_bytes=1 << 30, context_ms=context_ms
    )
    for _ in range(round(seconds * 10)):
        log.append(audio(bytes(rate // 10 * 2)))
    drain(log)
    return log


@pytest.mark.parametrize("context_ms", [15000, 0])
def test_at_an_odd_rate_the_lead_in_ends_where_the_last_final_ends(context_ms: int) -> None:
    # 11127 Hz: whole samples at whole milliseconds only every second.
    log = replayed_log(11127, 5.0, context_ms)
    log.commit(2500.0, 500.0, "hello there")
    log.commit(3900.0, 3100.0, "yes")  # a short final that starts after 3000 ms
    assert log.restart()
    metadata = log.resume_metadata()
    context = replay_context_of(metadata)  # what an instance does with it: no error
    assert context is not None
    if context_ms:
        assert OFFSET_KEY not in dict(metadata), "the lead-in starts at 0 ms"
        assert context == ReplayContext(
            lead_in_ms=3900, finals=((500, 2500, "hello there"), (3100, 3900, "yes"))
        )
    else:
        assert dict(metadata)[OFFSET_KEY] == "3000"
        assert context == ReplayContext(lead_in_ms=900, finals=())
    assert log.pending, "1.1 s after the last final is still to be recognised"


def test_a_final_that_leaves_the_resume_point_in_place_is_still_context() -> None:
    log = replayed_log(11127, 5.0)
    log.commit(2100.0, 1000.0, "one")  # resume point 2000 ms
    log.commit(2900.0, 2300.0, "two")  # still 2000 ms
    assert log.restart()
    context = replay_context_of(log.resume_metadata())
    assert context is not None and [f[2] for f in context.finals] == ["one", "two"]


def test_audio_all_final_at_an_odd_rate_is_not_pending() -> None:
    log = replayed_log(11127, 1.0)
    log.commit(1000.0, 0.0, "all of it")
    assert not log.pending


@pytest.mark.parametrize("linear16", [True, False])
def test_the_lead_in_names_at_most_the_latest_finals_an_instance_takes(linear16: bool) -> None:
    log = ReplayLog(linear16, 16000 if linear16 else 0, 1 << 30, context_ms=29000)
    for _ in range(300):  # 30 s
        log.append(audio(bytes(3200)))
    drain(log)
    for i in range(MAX_CONTEXT_FINALS + 2):  # short utterances 0.42 s apart
        log.commit(1320.0 + 420 * i, 1000.0 + 420 * i, f"w{i}")
    assert log.restart()
    context = replay_context_of(log.resume_metadata())
    assert context is not None and len(context.finals) == MAX_CONTEXT_FINALS
    assert context.finals[-1][2] == f"w{MAX_CONTEXT_FINALS + 1}", "the latest are kept"


def test_the_bound_drops_the_oldest_finals_of_a_lead_in_and_keeps_the_rest() -> None:
    log = ReplayLog(linear16=True, sample_rate=16000, replay_max_bytes=900 * MS, context_ms=15000)
    data = chunks(log, 10, 100 * MS)
    drain(log)
    log.commit(300.0, 0.0, "early")
    log.commit(800.0, 500.0, "later")  # lead-in 0-800 ms: 1000 ms kept > 900 ms
    assert log.restart()
    assert lead_in(log) == (
        "500",
        ReplayContext(lead_in_ms=300, finals=((500, 800, "later"),), prompt="early"),
    ), "the audio of 'early' was dropped (its text is the prompt); 'later' is still whole"
    assert drain(log) == data[500 * MS :]


def result(
    index: int, final: bool, end_ms: int, text: str = "x"
) -> stt_pb2.StreamingRecognizeResponse:
    res = stt_pb2.StreamingRecognitionResult(is_final=final, utterance_index=index)
    res.end_offset.FromMilliseconds(end_ms)
    res.alternatives.add(transcript=text)
    return stt_pb2.StreamingRecognizeResponse(result=res)


def event(kind: int, ms: int = 0) -> stt_pb2.StreamingRecognizeResponse:
    speech_event = stt_pb2.SpeechEvent(type=kind)  # type: ignore[arg-type]
    speech_event.offset.FromMilliseconds(ms)
    return stt_pb2.StreamingRecognizeResponse(speech_event=speech_event)


STARTED = stt_pb2.SPEECH_EVENT_TYPE_SPEECH_STARTED
ENDED = stt_pb2.SPEECH_EVENT_TYPE_SPEECH_ENDED


def test_indices_continue_after_failover_and_finals_are_counted() -> None:
    tracker = ResultTracker()
    tracker.begin_attempt(resumed=False)
    for i in range(2):
        assert tracker.on_response(result(i, True, 1000 * (i + 1))) is not None
    tracker.failovers += 1
    tracker.begin_attempt(resumed=True)
    interim = tracker.on_response(result(0, False, 2500))
    assert interim is not None and interim.result.utterance_index == 2
    final = tracker.on_response(result(0, True, 3000))
    assert final is not None and final.result.utterance_index == 2
    summary = stt_pb2.StreamSummary(final_results=1, stream_id="instance-side")
    tracker.fix_summary(summary, "client-id", audio_seconds=3.0)
    assert (summary.final_results, summary.failovers, summary.stream_id) == (3, 1, "client-id")
    assert summary.audio_processed.ToMilliseconds() == 3000


def test_a_final_covering_only_replayed_audio_is_dropped_and_numbering_stays_dense() -> None:
    tracker = ResultTracker()
    tracker.begin_attempt(resumed=False)
    tracker.on_response(result(0, True, 1000))
    tracker.begin_attempt(resumed=True)
    assert tracker.on_response(result(0, True, 1000)) is None
    nxt = tracker.on_response(result(1, True, 2000))
    assert nxt is not None and nxt.result.utterance_index == 1
    assert tracker.final_results == 2


def test_speech_start_is_not_announced_twice_across_a_failover() -> None:
    tracker = ResultTracker()
    tracker.begin_attempt(resumed=False)
    assert tracker.on_response(event(STARTED)) is not None
    tracker.begin_attempt(resumed=True)
    assert tracker.on_response(event(STARTED)) is None
    assert tracker.on_response(event(ENDED)) is not None
    assert tracker.on_response(event(STARTED)) is not None


def kinds(responses: list[stt_pb2.StreamingRecognizeResponse | None]) -> list[str]:
    """What the client got: speech events by name, finals as their end."""
    out = []
    for r in responses:
        if r is None:
            continue
        if r.WhichOneof("streaming_response") == "speech_event":
            out.append("started" if r.speech_event.type == STARTED else "ended")
        else:
            out.append(f"final@{r.result.end_offset.ToMilliseconds()}")
    return out


def test_an_utterance_ended_before_its_final_is_not_announced_twice() -> None:
    # The instance sent the speech end, then failed while decoding the final.
    tracker = ResultTracker()
    tracker.begin_attempt(resumed=False)
    got = [tracker.on_response(event(STARTED, 1000)), tracker.on_response(event(ENDED, 2500))]
    tracker.begin_attempt(resumed=True)
    for response in (event(STARTED, 1000), event(ENDED, 2450), result(0, True, 2700)):
        got.append(tracker.on_response(response))
    for response in (event(STARTED, 3000), event(ENDED, 3600), result(1, True, 3800)):
        got.append(tracker.on_response(response))
    assert kinds(got) == ["started", "ended", "final@2700", "started", "ended", "final@3800"]


def test_after_an_utterance_without_words_the_next_one_is_announced() -> None:
    # The utterance that ended had no final (noise); the new instance's VAD does not
    # find it at all: the next utterance's start is no repeat.
    tracker = ResultTracker()
    tracker.begin_attempt(resumed=False)
    got = [tracker.on_response(event(STARTED, 1000)), tracker.on_response(event(ENDED, 1400))]
    tracker.begin_attempt(resumed=True)
    for response in (event(STARTED, 3000), event(ENDED, 3600), result(0, True, 3800)):
        got.append(tracker.on_response(response))
    assert kinds(got) == ["started", "ended", "started", "ended", "final@3800"]


def test_summary_keeps_the_instance_audio_figure_for_containers() -> None:
    tracker = ResultTracker()
    summary = stt_pb2.StreamSummary()
    summary.audio_processed.FromMilliseconds(4200)
    tracker.fix_summary(summary, "s", audio_seconds=0.0)
    assert summary.audio_processed.ToMilliseconds() == 4200


def test_nothing_is_pending_once_finals_cover_every_byte_received() -> None:
    log = ReplayLog(linear16=True, sample_rate=16000, replay_max_bytes=1 << 20)
    empty = log.pending
    chunks(log, 10, 3200)  # 1 s
    drain(log)
    log.commit(600.0)
    partly_covered = log.pending
    log.commit(1000.0)  # the last final ends at the last byte
    covered = log.pending
    assert (empty, partly_covered, covered) == (False, True, False)
    assert log.restart() and drain(log) == b""
    chunks(log, 1, 3200)
    assert log.pending
    container = ReplayLog(linear16=False, sample_rate=0, replay_max_bytes=1 << 20)
    chunks(container, 1, 1000)
    drain(container)
    container.commit(10_000.0)
    assert container.pending  # a container is always replayed whole


def test_an_empty_chunk_dropped_unsent_leaves_the_cursor_in_place() -> None:
    # A final ending exactly where the sent audio ends drops an empty chunk not yet
    # sent: the cursor must not move back past the start of the log.
    log = ReplayLog(linear16=True, sample_rate=16000, replay_max_bytes=1 << 20)
    log.append(audio(b"A" * 3200))
    assert log.next_request() is not None
    log.append(audio(b""))
    log.commit(100.0)
    log.append(audio(b"B" * 3200))
    log.append(audio(b"C" * 3200))
    assert drain(log) == b"B" * 3200 + b"C" * 3200


@pytest.mark.parametrize("linear16", [True, False])
def test_empty_chunks_are_kept_only_until_sent(linear16: bool) -> None:
    # An empty chunk counts nothing against any bound, so the log must not keep it:
    # one goes to the instance while nothing else waits (its idle timer restarts) and
    # is gone once sent; one that finds something waiting is dropped at once.
    log = ReplayLog(linear16=linear16, sample_rate=16000, replay_max_bytes=1 << 20)
    log.append(audio(b"A" * 3200))
    empty = audio(b"")
    for _ in range(10_000):  # the instance reads nothing meanwhile
        log.append(empty)
    assert [r.audio_content for r in iter(log.next_request, None)] == [b"A" * 3200]
    for _ in range(10_000):  # the instance reads each at once
        log.append(empty)
        assert log.next_request() is empty
    assert log.restart()
    assert [r.audio_content for r in iter(log.next_request, None)] == [b"A" * 3200]
    assert len(log._entries) == 1  # what the log holds: the chunk alone


def test_an_empty_chunk_at_the_resume_point_is_sent_after_a_restart() -> None:
    log = ReplayLog(linear16=True, sample_rate=16000, replay_max_bytes=1 << 20)
    log.append(audio(b"A" * 3200))
    drain(log)
    log.commit(100.0)
    log.append(audio(b""))
    assert log.restart()
    request = log.next_request()
    assert request is not None and request.audio_content == b""
    assert log.next_request() is None
