"""Failover through the real router, instances failing in this process."""

from __future__ import annotations

import grpc
import pytest

from tests.conditions import wait_until_async
from tests.doubles.fake_asr import CONTAINER_RATE, expected_finals
from tests.integration.router_harness import CHUNK, HeldStream, mesh, pcm
from tests.streaming import config_request, recognize_request
from voxmesh.stt.v1 import stt_pb2, stt_pb2_grpc

pytestmark = pytest.mark.usefixtures("router_data_path")


def offsets_continue(stream: HeldStream) -> None:
    finals = [
        r.result
        for r in stream.responses
        if r.WhichOneof("streaming_response") == "result" and r.result.is_final
    ]
    assert [f.utterance_index for f in finals] == list(range(len(finals)))
    ends = [f.end_offset.ToMilliseconds() for f in finals]
    assert ends == sorted(ends) and len(set(ends)) == len(ends)
    starts = [f.start_offset.ToMilliseconds() for f in finals]
    assert starts == [i * 1000 for i in range(len(finals))]


@pytest.mark.parametrize(("context_s", "resume"), [(15.0, (0, 0, 1000)), (0.0, (1000, 0, 0))])
async def test_unavailable_mid_stream_fails_over_with_replay_from_the_last_final(
    context_s: float, resume: tuple[int, int, int]
) -> None:
    # With failover context the replay starts with the final before as a lead-in.
    async with mesh(failover_context_s=context_s) as m:
        first = await m.add("first")
        held = await HeldStream(m.channel).open(pcm(1.5, 1))  # one final at 1000 ms
        await wait_until_async(lambda: len(held.finals()) == 1)
        second = await m.add("second")
        first.fail_streams(grpc.StatusCode.UNAVAILABLE)
        await held.send(pcm(1.8, 2))
        summary = await held.finish()
        assert summary.instance_id == "second"
        assert summary.failovers == 1
        assert summary.final_results == 4
        assert summary.audio_processed.ToMilliseconds() == 3300
        assert held.finals() == expected_finals(held.sent, 16000, 1000)
        assert second.resumes == [resume]
        offsets_continue(held)
        started = [
            r
            for r in held.responses
            if r.WhichOneof("streaming_response") == "speech_event"
            and r.speech_event.type == stt_pb2.SPEECH_EVENT_TYPE_SPEECH_STARTED
        ]
        assert len(started) == 4  # the utterance open at the failure is announced once
        assert m.metric("voxmesh_router_failovers_total", pool="asr_small") == 1


async def test_crashed_instance_fails_over_and_is_avoided() -> None:
    async with mesh() as m:
        doomed = await m.add("doomed")
        streams = [await HeldStream(m.channel).open(pcm(1.2, i)) for i in range(3)]
        for s in streams:
            await wait_until_async(lambda s=s: len(s.finals()) == 1)  # type: ignore[misc]
        await m.add("survivor")
        await doomed.stop(grace=0)
        await wait_until_async(lambda: not m.member("doomed").accepting())  # type: ignore[union-attr]
        for i, s in enumerate(streams):
            await s.send(pcm(1.0, 10 + i))
        for s in streams:
            summary = await s.finish()
            assert (summary.instance_id, summary.failovers) == ("survivor", 1)
            assert s.finals() == expected_finals(s.sent, 16000, 1000)
            offsets_continue(s)


def summaries(stream: HeldStream) -> list[stt_pb2.StreamSummary]:
    return [r.summary for r in stream.responses if r.WhichOneof("streaming_response") == "summary"]


async def test_instance_dying_after_the_closing_final_ends_the_stream_at_the_router() -> None:
    # The client half-closed, the closing final covers the last byte, then the
    # instance dies before its summary: nothing is left to recognise elsewhere.
    async with mesh() as m:
        first = await m.add("first")
        held = await HeldStream(m.channel, config_request(model="asr_small", stream_id="s1")).open(
            pcm(1.5, 1)
        )
        await wait_until_async(lambda: len(held.finals()) == 1)
        second = await m.add("second")
        first.fail_at_end()
        summary = await held.finish()
        assert held.finals() == expected_finals(held.sent, 16000, 1000)
        assert summary.instance_id == "first"
        assert (summary.model, summary.pool) == ("tiny.en", "asr_small")
        assert (summary.stream_id, summary.final_results) == ("s1", 2)
        assert summary.audio_processed.ToMilliseconds() == 1500
        assert summary.failovers == 1
        assert len(summaries(held)) == 1
        assert second.streams_total == 0


@pytest.mark.parametrize("more_s", [0.0, 1.2])
async def test_a_stream_whose_audio_all_has_finals_waits_for_more_after_a_failure(
    more_s: float,
) -> None:
    # The last final ends at the last byte received and the instance crashes; then
    # the client half-closes (0 s more) or sends more audio: a new instance is
    # opened only for audio to recognise.
    async with mesh() as m:
        first = await m.add("first")
        held = await HeldStream(m.channel).open(pcm(1.0, 2))
        await wait_until_async(lambda: len(held.finals()) == 1)
        second = await m.add("second")
        await first.stop(grace=0)
        await wait_until_async(
            lambda: m.metric("voxmesh_router_failovers_total", pool="asr_small") == 1
        )
        if more_s:
            await held.send(pcm(more_s, 3))
        summary = await held.finish()
        assert held.finals() == expected_finals(held.sent, 16000, 1000)
        assert summary.failovers == 1
        assert len(summaries(held)) == 1
        if more_s:
            assert summary.instance_id == "second"
            assert second.resumes == [(0, 0, 1000)]  # the final before, as a lead-in
            offsets_continue(held)
        else:
            assert (summary.instance_id, summary.final_results) == ("first", 1)
            assert second.streams_total == 0


async def test_a_stream_waiting_for_more_after_a_failure_is_timed_out_if_its_client_stalls() -> (
    None
):
    # As above, but the client sends nothing more and stays: the router waited for it
    # forever, with no instance (and its idle timeout) in the way.
    async with mesh(idle_timeout_s=0.5) as m:
        first = await m.add("first")
        held = await HeldStream(m.channel).open(pcm(1.0, 2))
        await wait_until_async(lambda: len(held.finals()) == 1)
        await m.add("second")
        await first.stop(grace=0)
        await wait_until_async(lambda: held.error is not None, timeout=10.0)
        assert held.error is not None
        assert held.error.code() == grpc.StatusCode.OUT_OF_RANGE
        assert "no audio received for 0.5 s" in (held.error.details() or "")
        assert m.metric("voxmesh_router_failovers_total", pool="asr_small") == 1
        await wait_until_async(lambda: m.router.recognizer.active_streams == 0)


@pytest.mark.parametrize("encoding", ["linear16", "container"])
async def test_instance_dying_after_its_summary_is_not_failed_over(encoding: str) -> None:
    first_request = config_request(
        model="asr_small",
        encoding=stt_pb2.AUDIO_ENCODING_CONTAINER
        if encoding == "container"
        else stt_pb2.AUDIO_ENCODING_LINEAR16,
    )
    async with mesh() as m:
        first = await m.add("first")
        held = await HeldStream(m.channel, first_request).open(pcm(1.5, 4))
        await wait_until_async(lambda: len(held.finals()) == 1)
        second = await m.add("second")
        first.fail_at_end(after_summary=True)
        summary = await held.finish()
        assert (summary.instance_id, summary.failovers, summary.final_results) == ("first", 0, 2)
        assert len(summaries(held)) == 1
        assert second.streams_total == 0
        assert m.metric("voxmesh_router_failovers_total", pool="asr_small") == 0


@pytest.mark.parametrize(
    ("context_s", "resume"),
    [(15.0, (0, 0, 2000)), (1.5, (0, 1000, 1000)), (0.0, (0, 2000, 0))],
)
async def test_container_stream_is_replayed_whole_with_skip(
    context_s: float, resume: tuple[int, int, int]
) -> None:
    # Skipped: the audio before the lead-in (before the last final without one).
    container = config_request(model="asr_small", encoding=stt_pb2.AUDIO_ENCODING_CONTAINER)
    async with mesh(failover_context_s=context_s) as m:
        first = await m.add("first")
        held = await HeldStream(m.channel, container).open(pcm(2.2, 3))
        await wait_until_async(lambda: len(held.finals()) == 2)
        second = await m.add("second")
        first.fail_streams()
        await held.send(pcm(1.0, 4))
        summary = await held.finish()
        assert (summary.instance_id, summary.failovers) == ("second", 1)
        assert second.resumes == [resume]
        assert held.finals() == expected_finals(held.sent, CONTAINER_RATE, 1000)
        assert summary.audio_processed.ToMilliseconds() == 3200  # the instance's figure


async def test_stream_past_the_replay_bound_cannot_fail_over() -> None:
    async with mesh(replay_max_bytes=4 * CHUNK) as m:
        first = await m.add("first", utterance_ms=60_000)  # no final: nothing is ever trimmed
        held = await HeldStream(m.channel).open(pcm(1.0))
        await wait_until_async(held.got_results)
        await m.add("second")
        first.fail_streams()
        await held.send(pcm(0.2, 1))
        assert await held.call.code() == grpc.StatusCode.UNAVAILABLE
        assert "replay" in (await held.call.details())


async def test_other_instance_errors_pass_through_unchanged() -> None:
    async with mesh() as m:
        fake = await m.add("a")
        held = await HeldStream(m.channel).open()
        await wait_until_async(held.got_results)
        fake.fail_streams(grpc.StatusCode.INTERNAL)
        await held.send(pcm(0.2))
        assert await held.call.code() == grpc.StatusCode.INTERNAL
        assert await held.call.details() == "fake instance failure"
        assert m.metric("voxmesh_router_failovers_total", pool="asr_small") == 0


async def test_unary_recognize_fails_over() -> None:
    async with mesh(region="eu") as m:
        broken = await m.add("broken", region="eu")
        await m.add("ok", region="us")
        broken.fail_streams()
        audio = pcm(2.5, 5)
        request = recognize_request(audio, model="tiny.en", priority=stt_pb2.PRIORITY_BATCH)
        response = await stt_pb2_grpc.RecognizerServiceStub(m.channel).Recognize(request)
        texts = [r.alternatives[0].transcript for r in response.results]
        assert texts == expected_finals(audio, 16000, 1000)
        assert (response.summary.instance_id, response.summary.failovers) == ("ok", 1)


async def test_a_queued_stream_is_not_sent_to_the_instance_that_just_failed() -> None:
    # Telemetry rarely: only the router's own marks say which instance has room.
    async with mesh(telemetry_interval_s=30.0) as m:
        a = await m.add("a", max_streams=1)
        first = await HeldStream(m.channel).open(pcm(0.3, 1))
        await wait_until_async(first.got_results)
        await m.add("b", max_streams=1)
        other = await HeldStream(m.channel).open(pcm(0.3, 2))
        await wait_until_async(other.got_results)
        queued = await HeldStream(m.channel).open(pcm(0.3, 3))  # both full: it waits
        await wait_until_async(lambda: m.queue().queued_realtime == 1)
        a.fail_streams(grpc.StatusCode.UNAVAILABLE)
        await first.send(pcm(0.1, 4))  # fails on a: a's slot frees, a is unreachable
        await wait_until_async(lambda: m.queue().queued_realtime == 2)
        assert a.streams_total == 1, "the queued stream went to the instance that failed"
        await m.add("c", max_streams=4)
        for held in (first, queued, other):
            await held.finish()
        assert queued.summary().failovers == 0
        assert queued.summary().instance_id != "a"


async def test_a_stream_an_instance_refuses_as_not_accepting_is_no_failover() -> None:
    # The instance says it is still starting (or drains) though the router had not
    # heard: the stream never started there; it waits for another, no failover spent.
    async with mesh(telemetry_interval_s=30.0, max_failovers=0) as m:
        starting = await m.add("starting")
        starting.refuse_as_starting()
        held = await HeldStream(m.channel).open(pcm(0.3, 1))
        await wait_until_async(lambda: m.queue().queued_realtime == 1)
        await m.add("ready")
        summary = await held.finish()
        assert (summary.instance_id, summary.failovers) == ("ready", 0)
        assert m.metric("voxmesh_router_failovers_total", pool="asr_small") == 0
        assert m.metric("voxmesh_router_instance_rejections_total", pool="asr_small") == 1
