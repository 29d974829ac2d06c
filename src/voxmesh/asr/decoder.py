"""The model behind a small protocol: decode a batch of utterance windows.

:class:`Decoder` is what the scheduler calls; :class:`WhisperDecoder` runs
faster-whisper's CTranslate2 model with its batch API: every job's audio is
padded to Whisper's 30 s window (shorter windows are faster but wreck
accuracy), encoded in one call, decoded in one ``generate`` call and, when a
job asks for word timings, aligned in one ``align`` call.
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.audio import pad_or_trim
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import merge_punctuations

from voxmesh.asr.audio import MODEL_SAMPLE_RATE, Samples
from voxmesh.errors import SettingsError

__all__ = ["DecodeJob", "DecodeOutput", "Decoder", "WhisperDecoder", "WhisperOptions", "Word"]

logger = logging.getLogger(__name__)

MAX_WINDOW_SECONDS = 30.0
_MAX_PROMPT_TOKENS = 64
_MAX_PREFIX_TOKENS = 120
_PREPEND_PUNCTUATIONS = "\"'“¿([{-"
_APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"  # noqa: RUF001 - faster-whisper defaults
_CLOSING_PUNCTUATION = ".,;:!?…"
_SPACE_TOKEN = 220  # " " in the GPT-2 vocabulary every Whisper tokenizer shares


@dataclass(frozen=True)
class Word:
    """A word with times relative to the start of the job's audio."""

    word: str
    start: float
    end: float
    probability: float


@dataclass(frozen=True)
class DecodeJob:
    """One window to decode: at most 30 s of 16 kHz audio."""

    audio: Samples
    language: str | None = None
    """ISO 639-1 code; None detects it (multilingual models) or uses English."""
    prompt: str = ""
    """Earlier text of the stream, to condition on (may be empty)."""
    prefix: str = ""
    """Text already final for the start of ``audio`` (audio context before the
    utterance): decoding continues after it, and only the continuation is returned."""
    words: bool = False
    """Whether word timings are wanted."""
    wide_beam: bool = False
    """Decode with the final beam size rather than the interim one. Sessions ask it for
    finals; the scheduler withdraws it when other work is waiting (see
    :class:`~voxmesh.asr.scheduler.DecodeScheduler`)."""


@dataclass(frozen=True)
class DecodeOutput:
    """What the model made of one job."""

    text: str
    words: list[Word] = field(default_factory=list)
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0
    compression_ratio: float = 1.0
    language: str = "en"

    @property
    def confidence(self) -> float:
        """exp(mean token log probability), in [0, 1]."""
        return float(min(1.0, math.exp(self.avg_logprob)))

    def looks_like_noise(
        self,
        no_speech_threshold: float = 0.6,
        logprob_threshold: float = -1.0,
        compression_threshold: float = 2.4,
    ) -> bool:
        """Whisper's own rules for output that is not speech (hallucination guard)."""
        if not self.text.strip():
            return True
        if self.no_speech_prob > no_speech_threshold and self.avg_logprob < logprob_threshold:
            return True
        return self.compression_ratio > compression_threshold


class Decoder(Protocol):
    """Decodes batches; called from one worker thread at a time."""

    @property
    def name(self) -> str:
        """The model's name (for results and telemetry)."""

    @property
    def is_multilingual(self) -> bool:
        """Whether ``language`` may be other than English."""

    def supports_language(self, code: str) -> bool:
        """Whether the model can transcribe ``code``."""

    def decode(self, jobs: Sequence[DecodeJob]) -> list[DecodeOutput]:
        """Decodes every job; blocking."""


@dataclass(frozen=True)
class WhisperOptions:
    """How the model is loaded and run."""

    device: str = "cpu"
    """``cpu``, ``cuda`` or ``auto``."""
    compute_type: str = "default"
    """CTranslate2 compute type; ``default`` means int8 on CPU, float16 on CUDA."""
    cpu_threads: int = 0
    """Intra-op threads on CPU (0: CTranslate2's default)."""
    beam_size: int = 1
    """Beam size of interim decodes (1: greedy; they are redone as audio arrives)."""
    final_beam_size: int = 5
    """Beam size of wide-beam decodes (faster-whisper's ``transcribe`` default): finals
    are decoded once and kept, so they get the search offline decoding gets."""
    max_new_tokens: int = 200
    """Tokens generated per window at most."""


class WhisperDecoder:
    """faster-whisper / CTranslate2 Whisper."""

    def __init__(self, model_dir: Path, name: str, options: WhisperOptions) -> None:
        compute = options.compute_type
        device = options.device
        if device == "auto":
            import ctranslate2

            device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
        if compute == "default":
            compute = "float16" if device == "cuda" else "int8"
        self.device = device
        self.compute_type = compute
        self._name = name
        self._options = options
        try:
            self._model = WhisperModel(
                str(model_dir), device=device, compute_type=compute, cpu_threads=options.cpu_threads
            )
        except (RuntimeError, ValueError) as err:  # no CUDA, unsupported compute type, ...
            raise SettingsError(
                f"cannot load model {name!r} on device {device} with compute type {compute}: "
                f"{err} (settings device, compute_type)"
            ) from err
        self._tokenizers: dict[str | None, Tokenizer] = {}

    @property
    def name(self) -> str:
        return self._name

    @property
    def is_multilingual(self) -> bool:
        return bool(self._model.model.is_multilingual)

    def supports_language(self, code: str) -> bool:
        if not self.is_multilingual:
            return code == "en"
        return code in self._model.supported_languages

    def _tokenizer(self, language: str | None) -> Tokenizer:
        key = language if self.is_multilingual else "en"
        if key not in self._tokenizers:
            self._tokenizers[key] = Tokenizer(
                self._model.hf_tokenizer,
                self.is_multilingual,
                task="transcribe",
                language=key if key else "en",
            )
        return self._tokenizers[key]

    def warm_up(self) -> float:
        """Runs one decode of silence so the first stream pays no start-up cost."""
        started = time.perf_counter()
        self.decode([DecodeJob(audio=np.zeros(MODEL_SAMPLE_RATE, dtype=np.float32), words=True)])
        return time.perf_counter() - started

    def decode(self, jobs: Sequence[DecodeJob]) -> list[DecodeOutput]:
        # generate() takes one beam size per call: one model call per beam size asked
        # (a single one in the common case), outputs back in job order.
        groups: dict[int, list[int]] = {}
        for i, job in enumerate(jobs):
            beam = self._options.final_beam_size if job.wide_beam else self._options.beam_size
            groups.setdefault(beam, []).append(i)
        outputs: dict[int, DecodeOutput] = {}
        for beam, indices in groups.items():
            group = self._decode([jobs[i] for i in indices], beam)
            outputs.update(zip(indices, group, strict=True))
        return [outputs[i] for i in range(len(jobs))]

    def _decode(self, jobs: Sequence[DecodeJob], beam_size: int) -> list[DecodeOutput]:
        if not jobs:
            return []
        model = self._model
        features = np.stack(
            [pad_or_trim(model.feature_extractor(job.audio, padding=160)) for job in jobs]
        )
        encoder_output = model.encode(features)
        languages = self._languages(jobs, encoder_output)
        # CTranslate2 wants <|startoftranscript|> at the same position in every
        # prompt of a batch: left-pad shorter previous-text prompts with spaces.
        # The prefix (text of the audio context) comes after it and is forced.
        previous: list[list[int]] = []
        prefixes: list[list[int]] = []
        for job, language in zip(jobs, languages, strict=True):
            tokenizer = self._tokenizer(language)
            text = job.prompt.strip()
            previous.append(tokenizer.encode(" " + text)[-_MAX_PROMPT_TOKENS:] if text else [])
            prefix = job.prefix.strip()
            prefixes.append(tokenizer.encode(" " + prefix)[-_MAX_PREFIX_TOKENS:] if prefix else [])
        width = max(len(p) for p in previous)
        prompts = []
        for language, prev, prefix_tokens in zip(languages, previous, prefixes, strict=True):
            tokenizer = self._tokenizer(language)
            padded = [_SPACE_TOKEN] * (width - len(prev)) + prev
            prompt = model.get_prompt(tokenizer, padded, without_timestamps=True)
            prompts.append(prompt + prefix_tokens)
        longest_prompt = max(len(p) for p in prompts)
        results = model.model.generate(
            encoder_output,
            prompts,
            beam_size=beam_size,
            max_length=min(model.max_length, longest_prompt + self._options.max_new_tokens),
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=[-1],
        )
        outputs: list[DecodeOutput] = []
        token_lists: list[list[int]] = []
        for language, result, prefix_tokens in zip(languages, results, prefixes, strict=True):
            tokenizer = self._tokenizer(language)
            tokens = [t for t in result.sequences_ids[0] if t < tokenizer.eot]
            if tokens[: len(prefix_tokens)] == prefix_tokens:
                new_tokens = tokens[len(prefix_tokens) :]
            else:  # the result does not repeat the forced prefix
                new_tokens, tokens = tokens, prefix_tokens + tokens
            token_lists.append(tokens)
            text = tokenizer.decode(new_tokens).strip()
            if prefix_tokens:  # punctuation that closes the prefix's sentence is not ours
                text = text.lstrip(_CLOSING_PUNCTUATION).strip()
            count = len(tokens)
            avg_logprob = result.scores[0] * count / (count + 1)
            outputs.append(
                DecodeOutput(
                    text=text,
                    avg_logprob=float(avg_logprob),
                    no_speech_prob=float(result.no_speech_prob),
                    compression_ratio=_compression_ratio(text),
                    language=language or "en",
                )
            )
        if any(job.words for job in jobs):
            skip = [len(p) for p in prefixes]
            if len(set(languages)) == 1:
                outputs = self._add_words(
                    jobs, languages[0], outputs, token_lists, skip, encoder_output
                )
            else:
                outputs = self._add_words_by_language(
                    jobs, languages, outputs, token_lists, skip, features
                )
        return outputs

    def _add_words_by_language(
        self,
        jobs: Sequence[DecodeJob],
        languages: list[str | None],
        outputs: list[DecodeOutput],
        token_lists: list[list[int]],
        skip_tokens: list[int],
        features: np.ndarray[Any, Any],
    ) -> list[DecodeOutput]:
        """Word timings of a batch of several languages: the alignment takes one
        tokenizer (its language token, and how words are split: by spaces, or by
        characters for zh, ja, th...), so each language is aligned on its own, its
        audio encoded again (rare: a multilingual model, word timings asked, streams
        of different languages in one batch)."""
        merged = list(outputs)
        groups: dict[str | None, list[int]] = {}
        for i, language in enumerate(languages):
            groups.setdefault(language, []).append(i)
        for language, idx in groups.items():
            encoded = self._model.encode(features[idx])
            aligned = self._add_words(
                [jobs[i] for i in idx],
                language,
                [outputs[i] for i in idx],
                [token_lists[i] for i in idx],
                [skip_tokens[i] for i in idx],
                encoded,
            )
            for i, out in zip(idx, aligned, strict=True):
                merged[i] = out
        return merged

    def _languages(self, jobs: Sequence[DecodeJob], encoder_output: object) -> list[str | None]:
        if not self.is_multilingual:
            return ["en"] * len(jobs)
        langs: list[str | None] = [job.language for job in jobs]
        if any(lang is None for lang in langs):
            detected = self._model.model.detect_language(encoder_output)
            langs = [
                lang if lang is not None else detected[i][0][0][2:-2]
                for i, lang in enumerate(langs)
            ]
        return langs

    def _add_words(
        self,
        jobs: Sequence[DecodeJob],
        language: str | None,
        outputs: list[DecodeOutput],
        token_lists: list[list[int]],
        skip_tokens: list[int],
        encoder_output: object,
    ) -> list[DecodeOutput]:
        """Aligns prefix + continuation of jobs in ``language``; returns the
        continuation's words only."""
        tokenizer = self._tokenizer(language)
        frames = [min(len(job.audio) // 160, 3000) for job in jobs]
        safe = [tokens if tokens else [tokenizer.eot] for tokens in token_lists]
        try:
            alignments = self._model.find_alignment(tokenizer, safe, encoder_output, frames)
        except (RuntimeError, ValueError, IndexError) as err:  # pragma: no cover - defensive
            logger.warning("word alignment failed: %s", err)
            return outputs
        for alignment in alignments:
            merge_punctuations(alignment, _PREPEND_PUNCTUATIONS, _APPEND_PUNCTUATIONS)
        merged = []
        for out, tokens, skip, alignment in zip(
            outputs, token_lists, skip_tokens, alignments, strict=True
        ):
            words = []
            seen = 0
            for w in alignment:
                seen += len(w["tokens"])
                if seen <= skip or not tokens or not w["word"].strip():
                    continue
                words.append(
                    Word(
                        word=w["word"].strip(),
                        start=float(w["start"]),
                        end=float(w["end"]),
                        probability=float(w["probability"]),
                    )
                )
            merged.append(
                DecodeOutput(
                    text=out.text,
                    words=words,
                    avg_logprob=out.avg_logprob,
                    no_speech_prob=out.no_speech_prob,
                    compression_ratio=out.compression_ratio,
                    language=out.language,
                )
            )
        return merged


def _compression_ratio(text: str) -> float:
    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw)) if raw else 1.0
