"""Where streaming loses accuracy to offline decoding: the context a decode hears.

A study behind the espeak-ng accuracy gap of ``bench/asr_accuracy.py``: its
espeak-ng set (120 sentences in 24 clips), decoded sentence by sentence with the
engine's own decoder (tiny.en int8, beam 5 as finals are) and different audio
around each sentence, against offline ``transcribe`` (same beam) of each whole
clip in one window:

* ``none``: the sentence alone;
* ``none, earlier text as prompt``: the sentence alone, the earlier sentences'
  hypotheses (their last 40 words) as the previous-text prompt: what a stream's
  first decode on a new instance hears after a failover;
* ``left``: up to 15 s of earlier audio in front, the earlier sentences' own
  hypotheses forced as the decoder prefix (what a streaming final does);
* ``left+right 2 s`` / ``4 s``: the same plus audio after the sentence, keeping
  only the words that start before its end (a final delayed by that much);
* ``left, speech only``: the earlier audio with its pauses cut out (as offline's
  VAD filter does);
* ``offline``: ``WhisperModel.transcribe`` of the whole clip, VAD filter on.

    python -m bench.asr_context [--beam 5] [--recordings 24]

(The first study, greedy on the first 20 sentences, found later context worth
2.5-3.8 points; at beam 5 on all 120 it is within noise: see the results.)
"""

from __future__ import annotations

import argparse

import numpy as np

from bench.asr_accuracy import corpus_wer, offline
from bench.common import write_result
from bench.speech_sets import Clip, espeak_set
from voxmesh.asr.decoder import DecodeJob, WhisperDecoder, WhisperOptions
from voxmesh.asr.models import resolve_model

SR = 16000
PAD = 0.2
CONTEXT_S = 15.0
PROMPT_WORDS = 40
VARIANTS = (
    "none",
    "none, earlier text as prompt",
    "left",
    "left+right 2 s",
    "left+right 4 s",
    "left, speech only",
)


def _samples(clip: Clip) -> np.ndarray:
    return np.frombuffer(clip.pcm, dtype="<i2").astype(np.float32) / 32768


def _sentences(clip: Clip) -> list[str]:
    return [s.strip() + "." for s in clip.text.split(".") if s.strip()]


def sentence_by_sentence(decoder: WhisperDecoder, clip: Clip, variant: str) -> list[str]:
    """Each sentence of ``clip`` decoded with the audio ``variant`` puts around it."""
    audio = _samples(clip)

    def cut(start: float, end: float) -> np.ndarray:
        return audio[int(max(0.0, start) * SR) : int(min(len(audio) / SR, end) * SR)]

    texts: list[str] = []
    for i, (start, end) in enumerate(clip.spans):
        first = i
        if not variant.startswith("none"):
            while first > 0 and start - clip.spans[first - 1][0] <= CONTEXT_S:
                first -= 1
        window_start = clip.spans[first][0] - PAD
        right = {"left+right 2 s": 2.0, "left+right 4 s": 4.0}.get(variant, 0.0)
        if variant == "left, speech only":
            parts = [cut(s - PAD, e + PAD) for s, e in clip.spans[first : i + 1]]
            window = np.concatenate(parts)
        else:
            window = cut(window_start, end + PAD + right)
        prefix = " ".join(texts[first:i])
        prompt = ""
        if variant == "none, earlier text as prompt":
            prompt = " ".join(" ".join(texts).split()[-PROMPT_WORDS:])
        job = DecodeJob(audio=window, prompt=prompt, prefix=prefix, words=right > 0)
        out = decoder.decode([job])[0]
        if right > 0:
            boundary = end + PAD - max(0.0, window_start)
            text = " ".join(w.word for w in out.words if w.start < boundary)
        else:
            text = out.text
        texts.append(text.strip())
    return texts


def main() -> None:
    """Prints and writes the WER of every variant."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--beam", type=int, default=5, help="beam size (finals use 5)")
    parser.add_argument("--recordings", type=int, default=24, help="clips of 5 sentences")
    args = parser.parse_args()
    clips = espeak_set(recordings=args.recordings)
    refs = [s for c in clips for s in _sentences(c)]
    model_dir = resolve_model(args.model)
    decoder = WhisperDecoder(
        model_dir, args.model, WhisperOptions(cpu_threads=2, beam_size=args.beam)
    )
    report: dict[str, float] = {}
    for variant in VARIANTS:
        hyps = [t for c in clips for t in sentence_by_sentence(decoder, c, variant)]
        report[variant] = round(100 * corpus_wer(refs, hyps), 2)
    report["offline (whole clip, one window)"] = round(
        100 * corpus_wer([c.text for c in clips], offline(clips, args.model, beam=args.beam)), 2
    )
    print(
        f"{args.model}, espeak-ng set ({len(refs)} sentences), beam {args.beam}: "
        "WER by the audio a decode hears"
    )
    for name, value in report.items():
        print(f"  {name:<34} {value:6.2f}%")
    write_result(
        "asr_context",
        {
            "model": args.model,
            "set": "espeak_long",
            "sentences": len(refs),
            "beam_size": args.beam,
            "wer_percent": report,
        },
    )


if __name__ == "__main__":
    main()
