"""Unit tests of the streaming engine's parts: no sockets, no model."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import numpy as np
import pytest

from tests.conditions import wait_until_async
from voxmesh.asr.agreement import LocalAgreement
from voxmesh.asr.decoder import DecodeJob, DecodeOutput
from voxmesh.asr.scheduler import DecodeScheduler, SchedulerOptions
from voxmesh.asr.vad import FRAME_SAMPLES, Endpointer, EndpointerOptions, VadEvent, VadState
from voxmesh.errors import Unavailable


def test_local_agreement_commits_only_what_two_hypotheses_share() -> None:
    agreement = LocalAgreement()
    committed, tail = agreement.update(["the", "cat", "sat"])
    assert committed == [] and tail == ["the", "cat", "sat"]
    committed, tail = agreement.update(["The", "cat,", "sat", "on"])
    assert committed == ["The", "cat,", "sat"] and tail == ["on"]
    assert agreement.stability(tail) == pytest.approx(0.75)
    # a contradicting hypothesis never takes back committed words
    committed, tail = agreement.update(["a", "dog"])
    assert committed == ["The", "cat,", "sat"] and tail == []
    agreement.reset()
    assert agreement.update(["x"]) == ([], ["x"])


def test_local_agreement_never_rewrites_committed_words() -> None:
    agreement = LocalAgreement()
    agreement.update(["hello", "world"])
    assert agreement.update(["hello", "world", "how"]) == (["hello", "world"], ["how"])
    # Two hypotheses now agree on "yellow world how are", but they contradict the
    # committed "hello": nothing is committed and "hello" stays.
    assert agreement.update(["yellow", "world", "how", "are"]) == (
        ["hello", "world"],
        ["how", "are"],
    )
    committed, tail = agreement.update(["yellow", "world", "how", "are", "you"])
    assert committed == ["hello", "world"] and tail == ["how", "are", "you"]
    assert agreement.stability(tail) == pytest.approx(2 / 5)
    # once hypotheses start with the committed words again, commitment goes on
    agreement.update(["Hello,", "world", "how", "are", "you"])
    assert agreement.update(["hello", "world", "how", "are", "you", "doing"]) == (
        ["hello", "world", "how", "are", "you"],
        ["doing"],
    )


def test_local_agreement_shows_the_tail_that_follows_the_committed_words() -> None:
    agreement = LocalAgreement()
    agreement.update(["hello", "world"])
    agreement.update(["hello", "world"])
    assert agreement.committed == ["hello", "world"]
    # an inserted word: "world" is matched where it now stands, not shown twice
    committed, tail = agreement.update(["hello", "there", "world", "foo"])
    assert " ".join(committed + tail) == "hello world foo"
    # a substituted last word and a dropped one
    assert agreement.update(["hello", "word", "foo", "bar"]) == (["hello", "world"], ["foo", "bar"])
    assert agreement.update(["world", "foo", "bar"]) == (["hello", "world"], ["foo", "bar"])
    assert agreement.update(["hello"]) == (["hello", "world"], [])


def _frames(pattern: str) -> np.ndarray:
    """'s' speech frame, '.' silence frame, '~' in-between (hysteresis)."""
    value = {"s": 0.9, ".": 0.05, "~": 0.4}
    return np.array([value[c] for c in pattern], dtype=np.float32)


def test_endpointer_needs_min_speech_and_min_silence() -> None:
    opts = EndpointerOptions(min_speech=0.064, min_silence=0.16)  # 2 and 5 frames
    ep = Endpointer(opts)
    assert ep.push(_frames("..s..")) == []  # one speech frame is a click
    events = ep.push(_frames("ss"))
    assert events == [(VadEvent.SPEECH_STARTED, 5 * FRAME_SAMPLES)]
    assert ep.state is VadState.SPEAKING
    events = ep.push(_frames("~s.."))  # in-between frames still count as speech
    assert events == [(VadEvent.PAUSE_STARTED, 9 * FRAME_SAMPLES)]
    events = ep.push(_frames("s"))
    assert [e for e, _ in events] == [VadEvent.SPEECH_RESUMED]
    events = ep.push(_frames("....."))
    assert events == [
        (VadEvent.PAUSE_STARTED, 12 * FRAME_SAMPLES),
        (VadEvent.SPEECH_ENDED, 12 * FRAME_SAMPLES),
    ]
    assert ep.force_end() is None, "the utterance already ended"


def test_endpointer_onset_floor_covers_an_onset_it_has_not_reported_yet() -> None:
    ep = Endpointer(EndpointerOptions(min_speech=0.096))  # 3 frames
    assert ep.push(_frames("....")) == []
    assert ep.onset_floor == 4 * FRAME_SAMPLES
    assert ep.push(_frames("ss")) == []  # counted towards min_speech, not reported
    assert ep.onset_floor == 4 * FRAME_SAMPLES
    assert ep.push(_frames("s")) == [(VadEvent.SPEECH_STARTED, 4 * FRAME_SAMPLES)]
    assert ep.push(_frames("s.")) == [(VadEvent.PAUSE_STARTED, 8 * FRAME_SAMPLES)]
    assert ep.onset_floor == 9 * FRAME_SAMPLES  # no utterance can start before now


def job(n: int) -> DecodeJob:
    """A job of ``n`` samples (the fake decoder answers with the length)."""
    return DecodeJob(audio=np.zeros(n, dtype=np.float32))


class RecordingDecoder:
    """A fake model: records batches, answers with the audio length as text."""

    name = "fake"
    is_multilingual = False

    def __init__(self) -> None:
        self.batches: list[list[DecodeJob]] = []

    def supports_language(self, code: str) -> bool:
        return code == "en"

    def decode(self, jobs: Sequence[DecodeJob]) -> list[DecodeOutput]:
        self.batches.append(list(jobs))
        return [DecodeOutput(text=f"n{len(j.audio)}") for j in jobs]


async def test_scheduler_batches_in_priority_order_and_drops_cancelled_jobs() -> None:
    decoder = RecordingDecoder()
    scheduler = DecodeScheduler(decoder, SchedulerOptions(max_batch=2, max_wait=0.0))
    scheduler.start()
    try:
        # Occupy the worker so the next submissions queue up together.
        first = asyncio.create_task(scheduler.submit(job(1), realtime=True, final=True))
        await asyncio.sleep(0)
        batch_interim = asyncio.create_task(scheduler.submit(job(2), realtime=False, final=False))
        rt_interim = asyncio.create_task(scheduler.submit(job(3), realtime=True, final=False))
        doomed = asyncio.create_task(scheduler.submit(job(4), realtime=True, final=True))
        rt_final = asyncio.create_task(scheduler.submit(job(5), realtime=True, final=True))
        await asyncio.sleep(0)
        doomed.cancel()
        results = await asyncio.gather(first, batch_interim, rt_interim, rt_final)
        assert [r.text for r in results] == ["n1", "n2", "n3", "n5"]
        sizes = [[len(j.audio) for j in b] for b in decoder.batches]
        # realtime final first, then realtime interim, batch interim last; 4 was dropped
        assert sizes[1:] == [[5, 3], [2]]
        assert scheduler.stats.dropped == 1
        assert all(len(b) <= 2 for b in decoder.batches)
    finally:
        await scheduler.shutdown()


async def test_scheduler_stops_when_cancelled_as_a_job_arrives() -> None:
    """While it waits for a fuller batch, the worker waited with ``asyncio.wait_for``,
    which on Python 3.11 drops a cancellation that comes as the awaited event fires: the
    worker went on, and shutdown() would wait for it forever."""
    scheduler = DecodeScheduler(RecordingDecoder(), SchedulerOptions(max_batch=2, max_wait=60.0))
    scheduler.start()
    worker = scheduler._task
    assert worker is not None
    try:
        ticket = scheduler.enqueue(job(1), realtime=True, final=True)
        await wait_until_async(lambda: not scheduler._wake.is_set())  # waiting for a second
        scheduler.enqueue(job(2), realtime=True, final=True)  # sets the wake...
        worker.cancel()  # ...in the same turn of the loop as the cancel
        done, _ = await asyncio.wait({worker}, timeout=5.0)
        assert done, "the cancelled worker went on"
        assert worker.cancelled()
        assert not ticket.future.done(), "the job was neither decoded nor failed yet"
    finally:
        await scheduler.shutdown()


async def test_scheduler_narrows_wide_beam_finals_only_while_other_work_waits() -> None:
    gate = threading.Event()

    class Gated(RecordingDecoder):
        def decode(self, jobs: Sequence[DecodeJob]) -> list[DecodeOutput]:
            out = super().decode(jobs)
            if len(jobs[0].audio) == 2:
                gate.wait(timeout=5)
            return out

    def wide(n: int) -> DecodeJob:
        return DecodeJob(audio=np.zeros(n, np.float32), wide_beam=True)

    decoder = Gated()
    scheduler = DecodeScheduler(decoder, SchedulerOptions(max_batch=1))
    scheduler.start()
    try:
        await scheduler.submit(wide(1), realtime=True, final=True)  # nothing else waits
        # Two finals queue behind a running job: the first taken still has one waiting.
        running = asyncio.create_task(scheduler.submit(job(2), realtime=True, final=False))
        await wait_until_async(lambda: len(decoder.batches) == 2)
        queued = [
            asyncio.create_task(scheduler.submit(wide(n), realtime=True, final=True))
            for n in (3, 4)
        ]
        await wait_until_async(lambda: scheduler.pending == 2)
        gate.set()
        await asyncio.gather(running, *queued)
        seen = [(len(b[0].audio), b[0].wide_beam) for b in decoder.batches]
        assert seen == [(1, True), (2, False), (3, False), (4, True)]
        assert scheduler.stats.narrowed == 1
    finally:
        gate.set()
        await scheduler.shutdown()


async def test_scheduler_fifo_when_not_prioritised() -> None:
    decoder = RecordingDecoder()
    scheduler = DecodeScheduler(decoder, SchedulerOptions(max_batch=1, prioritise=False))
    scheduler.start()
    try:
        tasks = [
            asyncio.create_task(scheduler.submit(job(n), realtime=n % 2 == 0, final=n > 2))
            for n in (1, 2, 3, 4)
        ]
        await asyncio.gather(*tasks)
        assert [len(b[0].audio) for b in decoder.batches] == [1, 2, 3, 4]
    finally:
        await scheduler.shutdown()


async def test_scheduler_fails_jobs_when_the_model_fails_and_keeps_serving() -> None:
    class Flaky(RecordingDecoder):
        def decode(self, jobs: Sequence[DecodeJob]) -> list[DecodeOutput]:
            if len(jobs[0].audio) == 13:
                raise RuntimeError("CUDA out of memory")
            return super().decode(jobs)

    scheduler = DecodeScheduler(Flaky(), SchedulerOptions(max_batch=1))
    scheduler.start()
    try:
        with pytest.raises(RuntimeError, match="out of memory"):
            await scheduler.submit(
                DecodeJob(audio=np.zeros(13, np.float32)), realtime=True, final=True
            )
        ok = await scheduler.submit(
            DecodeJob(audio=np.zeros(7, np.float32)), realtime=True, final=True
        )
        assert ok.text == "n7"
    finally:
        await scheduler.shutdown()


def test_noise_rules() -> None:
    assert DecodeOutput(text="").looks_like_noise()
    assert DecodeOutput(text="you", no_speech_prob=0.9, avg_logprob=-1.4).looks_like_noise()
    assert not DecodeOutput(text="hello", no_speech_prob=0.9, avg_logprob=-0.2).looks_like_noise()
    assert DecodeOutput(text="la " * 50, compression_ratio=5.0).looks_like_noise()


async def test_scheduler_reports_recent_model_utilization() -> None:
    now = [100.0]

    class Slow(RecordingDecoder):
        def decode(self, jobs: Sequence[DecodeJob]) -> list[DecodeOutput]:
            now[0] += 2.0  # each model call takes 2 s of the fake clock
            return super().decode(jobs)

    scheduler = DecodeScheduler(Slow(), SchedulerOptions(max_batch=1), clock=lambda: now[0])
    scheduler.start()
    try:
        assert scheduler.utilization() == 0.0
        await scheduler.submit(job(1), realtime=True, final=True)
        assert scheduler.utilization(window=5.0) == pytest.approx(0.4)
        now[0] += 3.0  # idle: the busy interval slides out of a 4 s window
        assert scheduler.utilization(window=4.0) == pytest.approx(0.25)
        assert scheduler.utilization(window=1.0) == 0.0
    finally:
        await scheduler.shutdown()


async def test_scheduler_shutdown_waits_for_the_running_decode_off_the_event_loop() -> None:
    gate = threading.Event()
    opened: list[bool] = []

    class Gated(RecordingDecoder):
        def decode(self, jobs: Sequence[DecodeJob]) -> list[DecodeOutput]:
            opened.append(gate.wait(timeout=5))
            return super().decode(jobs)

    scheduler = DecodeScheduler(Gated(), SchedulerOptions(max_batch=1))
    scheduler.start()
    try:
        running = scheduler.enqueue(job(1), realtime=True, final=True)
        await wait_until_async(lambda: running.started)
        stopping = asyncio.create_task(scheduler.shutdown())
        # Shutdown stopped the worker (the job's submitter is told: UNAVAILABLE) and
        # now waits for the model to finish the decode it runs.
        await wait_until_async(running.future.done)
        assert isinstance(running.future.exception(), Unavailable)
        # Only this loop opens the gate: a shutdown blocking the loop would leave the
        # decode waiting until its timeout.
        gate.set()
        await asyncio.wait_for(stopping, 5)
        assert opened == [True]
    finally:
        gate.set()
        await scheduler.shutdown()
