"""Finals are decoded with the final beam, interims greedily, in one mixed batch too."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.speech import espeak_pcm
from voxmesh.asr.decoder import DecodeJob, WhisperDecoder, WhisperOptions
from voxmesh.asr.models import resolve_model

pytestmark = pytest.mark.model


class _Recording:
    """Forwards to the CTranslate2 model and records the beam size of each generate call."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self.beams: list[tuple[int, int]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def generate(self, features: Any, prompts: list[list[int]], **kwargs: Any) -> Any:
        self.beams.append((len(prompts), kwargs["beam_size"]))
        return self._model.generate(features, prompts, **kwargs)


def test_a_mixed_batch_runs_one_generate_per_beam_and_keeps_the_job_order() -> None:
    decoder = WhisperDecoder(
        resolve_model("tiny.en"),
        "tiny.en",
        WhisperOptions(cpu_threads=2, beam_size=1, final_beam_size=4),
    )
    recording = _Recording(decoder._model.model)
    decoder._model.model = recording
    texts = ["The birch canoe slid on the smooth planks.", "Rice is often served in round bowls."]
    audio = [
        np.frombuffer(espeak_pcm(t), dtype="<i2").astype(np.float32) / np.float32(32768)
        for t in texts
    ]
    jobs = [
        DecodeJob(audio=audio[0], wide_beam=True),
        DecodeJob(audio=audio[1]),
        DecodeJob(audio=audio[1], wide_beam=True, words=True),
    ]
    outputs = decoder.decode(jobs)
    assert sorted(recording.beams) == [(1, 1), (2, 4)]
    assert "smooth" in outputs[0].text.lower()
    assert "served in round" in outputs[1].text.lower()
    assert "served in round" in outputs[2].text.lower()
    assert "served" in [w.word.lower() for w in outputs[2].words]
    assert not outputs[1].words  # word timings only where asked

    recording.beams.clear()
    decoder.decode(jobs[1:2])
    assert recording.beams == [(1, 1)]


def test_word_timings_of_a_batch_of_two_languages_use_each_ones_tokenizer() -> None:
    """The alignment took the first job's tokenizer for the whole batch: a stream in
    another language got its words split and timed as the first one's language."""
    decoder = WhisperDecoder(resolve_model("base"), "base", WhisperOptions(cpu_threads=2))
    model = decoder._model
    calls: list[tuple[str, int]] = []
    align = model.find_alignment

    def recording_alignment(tokenizer: Any, text_tokens: list[Any], *args: Any) -> Any:
        calls.append((tokenizer.language_code, len(text_tokens)))
        return align(tokenizer, text_tokens, *args)

    model.find_alignment = recording_alignment
    pcm = espeak_pcm("The birch canoe slid on the smooth planks.")
    audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / np.float32(32768)
    english = DecodeJob(audio=audio, language="en", words=True)
    alone = decoder.decode([english])[0]
    calls.clear()
    outputs = decoder.decode([english, DecodeJob(audio=audio, language="de", words=True)])
    assert sorted(calls) == [("de", 1), ("en", 1)]
    assert [w.word for w in outputs[0].words] == [w.word for w in alone.words]
    assert outputs[0].words[-1].end == pytest.approx(alone.words[-1].end, abs=0.02)
    assert outputs[1].words and outputs[1].language == "de"
