"""StreamingRecognize and Recognize on a real instance: real gRPC, real tiny.en weights,
real and synthetic speech."""

from __future__ import annotations

import itertools
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.asr_server import AsrServerThread
from tests.speech import (
    EVAL_DIR,
    espeak_pcm,
    eval_recordings,
    noise_pcm,
    silence_pcm,
    utterance_recording,
    wer,
)
from tests.streaming import config_request, recognize_request, run_stream
from voxmesh.rpc.metadata import CONTEXT_KEY, SKIP_KEY, ReplayContext
from voxmesh.stt.v1 import stt_pb2, stt_pb2_grpc

pytestmark = pytest.mark.model

SENTENCES = [
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It is easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
]


@pytest.fixture(scope="module")
def server() -> Iterator[AsrServerThread]:
    with AsrServerThread(max_streams=6) as srv:
        yield srv


def _speech_with_pauses(rate: int = 16000) -> bytes:
    return silence_pcm(0.5, rate) + b"".join(
        espeak_pcm(s, rate) + silence_pcm(1.0, rate) for s in SENTENCES
    )


async def test_real_8khz_recording_is_transcribed_after_resampling(server: AsrServerThread) -> None:
    rec = next(r for r in eval_recordings() if r.rate == 8000)
    async with grpc.aio.insecure_channel(server.target) as channel:
        run = await run_stream(channel, rec.pcm, rec.rate, first=config_request(rec.rate))
    assert run.error is None, run.error
    assert wer(rec.text, run.text) <= 0.15, run.text
    summary = run.summary
    assert summary is not None
    assert summary.instance_id == server.ready["instance_id"]
    assert summary.final_results == len(run.finals) >= 8
    assert abs(summary.audio_processed.ToMilliseconds() / 1000 - rec.seconds) < 0.1


async def test_synthetic_speech_finals_are_ordered_and_never_duplicated(
    server: AsrServerThread,
) -> None:
    pcm = _speech_with_pauses()
    async with grpc.aio.insecure_channel(server.target) as channel:
        run = await run_stream(channel, pcm, first=config_request(words=True), speed=3.0)
    assert run.error is None, run.error
    # espeak-ng voices are hard for tiny.en (offline WER on them is ~0.4 too): the
    # accuracy bound that matters is on real speech; this one catches garbage.
    assert wer(" ".join(SENTENCES), run.text) <= 0.55, run.text
    finals = run.finals
    assert [f.utterance_index for f in finals] == list(range(len(finals)))
    ends = [f.end_offset.ToMilliseconds() for f in finals]
    starts = [f.start_offset.ToMilliseconds() for f in finals]
    assert ends == sorted(ends) and starts == sorted(starts)
    assert all(s < e for s, e in zip(starts, ends, strict=True))
    for f in finals:
        words = f.alternatives[0].words
        assert words, "word offsets were requested"
        times = [(w.start_offset.ToMilliseconds(), w.end_offset.ToMilliseconds()) for w in words]
        assert all(a <= b for a, b in times)
        assert [a for a, _ in times] == sorted(a for a, _ in times)
        assert times[0][0] >= f.start_offset.ToMilliseconds() - 50
        assert times[-1][1] <= f.end_offset.ToMilliseconds() + 50
    # speech events bracket every final
    started = run.events(stt_pb2.SPEECH_EVENT_TYPE_SPEECH_STARTED)
    ended = run.events(stt_pb2.SPEECH_EVENT_TYPE_SPEECH_ENDED)
    assert len(started) == len(ended) >= len(finals)


async def test_interim_results_come_before_the_final(server: AsrServerThread) -> None:
    rec = next(r for r in eval_recordings() if r.name == "ls_1089-134686-0000.flac")
    async with grpc.aio.insecure_channel(server.target) as channel:
        run = await run_stream(
            channel, rec.pcm, rec.rate, first=config_request(rec.rate), speed=2.0
        )
    assert run.error is None, run.error
    kinds = [
        (r.result.is_final, r.result.utterance_index)
        for _, r in run.responses
        if r.WhichOneof("streaming_response") == "result"
    ]
    first_final = next(i for i, (final, _) in enumerate(kinds) if final)
    assert first_final > 0, "no interim result before the first final"
    assert all(0.0 <= i.stability <= 1.0 for i in run.interims)
    # once final, an utterance gets no more interims
    finalised: set[int] = set()
    for final, index in kinds:
        assert index not in finalised
        if final:
            finalised.add(index)
    assert wer(rec.text, run.text) <= 0.25, run.text


async def test_interims_are_off_when_not_requested(server: AsrServerThread) -> None:
    pcm = espeak_pcm(SENTENCES[0]) + silence_pcm(0.6)
    async with grpc.aio.insecure_channel(server.target) as channel:
        run = await run_stream(channel, pcm, first=config_request(interim=False), speed=2.0)
    assert run.error is None
    assert run.interims == [] and len(run.finals) == 1


def _ogg(pcm: bytes, rate: int, tmp_path: Path) -> bytes:
    """``pcm`` (16-bit mono at ``rate``) encoded as Ogg Vorbis by sox."""
    raw, ogg = tmp_path / "a.raw", tmp_path / "a.ogg"
    raw.write_bytes(pcm)
    command = ["sox", "-t", "raw", "-r", str(rate), "-e", "signed-integer", "-b", "16", "-c", "1"]
    subprocess.run([*command, str(raw), str(ogg)], check=True)
    return ogg.read_bytes()


async def test_compressed_stream_and_unary_recognize(
    server: AsrServerThread, tmp_path: Path
) -> None:
    rec = utterance_recording()
    ogg = _ogg(rec.pcm + silence_pcm(0.5, rec.rate), rec.rate, tmp_path)
    container = config_request(0, encoding=stt_pb2.AUDIO_ENCODING_CONTAINER)
    async with grpc.aio.insecure_channel(server.target) as channel:
        run = await run_stream(channel, ogg, 8000, first=container, chunk_ms=250)
        assert run.error is None, run.error
        assert wer(rec.text, run.text) <= 0.25, run.text
        stub = stt_pb2_grpc.RecognizerServiceStub(channel)
        response = await stub.Recognize(
            stt_pb2.RecognizeRequest(
                config=stt_pb2.RecognitionConfig(
                    encoding=stt_pb2.AUDIO_ENCODING_CONTAINER,
                    priority=stt_pb2.PRIORITY_BATCH,
                    enable_word_time_offsets=True,
                ),
                audio_content=(EVAL_DIR / rec.name).read_bytes(),
            )
        )
    text = " ".join(r.alternatives[0].transcript for r in response.results)
    assert wer(rec.text, text) <= 0.25, text
    assert all(r.is_final for r in response.results)
    assert response.results[0].alternatives[0].words
    assert response.summary.pool == "asr_small"


async def test_a_replayed_container_skips_and_hears_its_lead_in_as_context(
    server: AsrServerThread, tmp_path: Path
) -> None:
    """A router fails a compressed stream over: the whole container again, the first
    second skipped, then a lead-in (an utterance already final and its pause)."""
    final = espeak_pcm(SENTENCES[0])
    audio = silence_pcm(1.0) + final + silence_pcm(1.0) + espeak_pcm(SENTENCES[3])
    audio += silence_pcm(1.0)
    lead_in_ms = len(final) // 32 + 1000  # 32 bytes per ms
    context = ReplayContext(
        lead_in_ms=lead_in_ms, finals=((1000, 1000 + len(final) // 32, SENTENCES[0]),)
    )
    metadata = ((SKIP_KEY, "1000"), (CONTEXT_KEY, context.encode()))
    container = config_request(0, encoding=stt_pb2.AUDIO_ENCODING_CONTAINER)
    async with grpc.aio.insecure_channel(server.target) as channel:
        run = await run_stream(
            channel, _ogg(audio, 16000, tmp_path), first=container, metadata=metadata
        )
    assert run.error is None, run.error
    assert len(run.finals) == 1, [f.alternatives[0].transcript for f in run.finals]
    assert run.finals[0].start_offset.ToMilliseconds() >= 1000 + lead_in_ms - 1
    assert wer(SENTENCES[3], run.text) <= 0.25, run.text


@pytest.mark.parametrize("kind", ["silence", "whitenoise", "pinknoise", "brownnoise"])
async def test_no_words_on_silence_or_noise(server: AsrServerThread, kind: str) -> None:
    pcm = silence_pcm(6.0) if kind == "silence" else noise_pcm(kind, 6.0, volume=0.2)
    async with grpc.aio.insecure_channel(server.target) as channel:
        run = await run_stream(channel, pcm)
    assert run.error is None, run.error
    assert run.text.strip() == "", run.text
    assert run.summary is not None


async def test_long_utterance_is_cut_at_a_committed_word() -> None:
    rec = next(r for r in eval_recordings() if r.name == "ls_1089-134686-0000.flac")
    with AsrServerThread(max_utterance=4.0) as srv:
        async with grpc.aio.insecure_channel(srv.target) as channel:
            run = await run_stream(
                channel, rec.pcm, rec.rate, first=config_request(rec.rate), speed=2.0
            )
    assert run.error is None, run.error
    finals = run.finals
    assert len(finals) >= 2, "a 10 s utterance with max_utterance 4 s must be cut"
    for a, b in itertools.pairwise(finals):
        assert a.end_offset.ToMilliseconds() <= b.start_offset.ToMilliseconds() + 1
        assert b.start_offset.ToMilliseconds() - a.end_offset.ToMilliseconds() < 1000
    for f in finals:
        assert f.end_offset.ToMilliseconds() - f.start_offset.ToMilliseconds() <= 4300
    # no words lost or doubled at the cuts
    assert wer(rec.text, run.text) <= 0.3, run.text


async def test_a_long_silence_between_sentences_does_not_stall_the_stream(
    server: AsrServerThread,
) -> None:
    """After a final, 41 s without a VAD event left the session's buffer pinned by the
    final's context: the stream stopped reading audio and ran into its deadline."""
    pcm = (
        silence_pcm(0.5)
        + espeak_pcm(SENTENCES[0])
        + silence_pcm(50.0)
        + espeak_pcm(SENTENCES[1])
        + silence_pcm(1.0)
    )
    async with grpc.aio.insecure_channel(server.target) as channel:
        run = await run_stream(channel, pcm, timeout=60.0)
    assert run.error is None, run.error
    assert len(run.finals) == 2
    assert "dark blue background" in run.finals[1].alternatives[0].transcript.lower(), run.text


async def test_recognize_cuts_a_long_utterance_whose_end_it_saw_first(
    server: AsrServerThread,
) -> None:
    """Recognize feeds faster than the worker decodes: a 35 s utterance had ended
    before the worker reached its 25 s cut, was decoded in one window, and Whisper
    (30 s) never heard its tail; its final claimed all of it."""
    # Harvard sentences run together without punctuation: espeak-ng makes no pause.
    text = (
        "the birch canoe slid on the smooth planks glue the sheet to the dark blue background "
        "it is easy to tell the depth of a well these days a chicken leg is a rare dish "
        "rice is often served in round bowls the juice of lemons makes fine punch "
        "the box was thrown beside the parked truck the hogs were fed chopped corn "
        "four hours of steady work faced us a large size in stockings is hard to sell "
        "the boy was there when the sun rose a rod is used to catch pink salmon "
        "the source of the huge river is the clear spring kick the ball straight and follow "
        "through help the woman get back to her feet a pot of tea helps to pass the evening"
    )
    speech = espeak_pcm(text)
    assert len(speech) > 35 * 16000 * 2  # longer than Whisper's window
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = stt_pb2_grpc.RecognizerServiceStub(channel)
        response = await stub.Recognize(
            recognize_request(silence_pcm(0.5) + speech + silence_pcm(1.5)), timeout=120
        )
    spans = [
        (r.start_offset.ToMilliseconds(), r.end_offset.ToMilliseconds()) for r in response.results
    ]
    assert len(spans) >= 2, spans
    assert all(end - start <= 25_300 for start, end in spans), spans
    transcript = " ".join(r.alternatives[0].transcript for r in response.results)
    assert "evening" in transcript.lower(), transcript
