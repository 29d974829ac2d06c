"""Test audio: synthetic speech (espeak-ng + sox), noise, the real recordings in
../shared/eval/speech, and WER with the normalisation the eval README asks for.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import av
import jiwer
import numpy as np

__all__ = [
    "EVAL_DIR",
    "Recording",
    "decode_to_pcm16",
    "espeak_pcm",
    "eval_recordings",
    "noise_pcm",
    "normalise_text",
    "silence_pcm",
    "spell_number",
    "wer",
]

EVAL_DIR = Path(__file__).resolve().parents[2] / "shared" / "eval" / "speech"
_CACHE = Path(tempfile.gettempdir()) / "voxmesh-test-audio"


@dataclass(frozen=True)
class Recording:
    """One manifest entry with its audio as 16-bit PCM at its own rate."""

    name: str
    text: str
    pcm: bytes
    rate: int

    @property
    def seconds(self) -> float:
        """Duration."""
        return len(self.pcm) / 2 / self.rate


_ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def spell_number(n: int) -> str:
    """``n`` (0 to 999,999) in words, as the references write numbers: 'fifty',
    'one hundred twenty three'; larger numbers stay digits."""
    if n >= 1_000_000:
        return str(n)
    if n >= 1000:
        thousands, rest = divmod(n, 1000)
        tail = f" {spell_number(rest)}" if rest else ""
        return f"{spell_number(thousands)} thousand{tail}"
    if n >= 100:
        hundreds, rest = divmod(n, 100)
        tail = f" {spell_number(rest)}" if rest else ""
        return f"{_ONES[hundreds]} hundred{tail}"
    if n >= 20:
        tens, rest = divmod(n, 10)
        return _TENS[tens] + (f" {_ONES[rest]}" if rest else "")
    return _ONES[n]


def normalise_text(text: str) -> str:
    """Lower case, no punctuation, 'mr.' spelled out, whole numbers spelled out
    (the eval references spell them: Whisper writes '50' where they say 'fifty'),
    single spaces."""
    text = text.lower().replace("mr.", "mister").replace("mrs.", "missus")
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # 1,000 -> 1000
    text = re.sub(r"\b\d+\b", lambda m: spell_number(int(m.group())), text)
    text = re.sub(r"[^a-z0-9' ]+", " ", text.replace("-", " "))
    return " ".join(text.replace("'", "").split())


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate after normalisation."""
    ref, hyp = normalise_text(reference), normalise_text(hypothesis)
    return float(jiwer.wer(ref, hyp)) if ref else float(bool(hyp))


def decode_to_pcm16(path: Path, rate: int | None = None) -> tuple[bytes, int]:
    """Decodes any audio file to mono 16-bit PCM (at ``rate``, or its own)."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        out_rate = rate or stream.rate
        resampler = av.AudioResampler(format="s16", layout="mono", rate=out_rate)
        chunks: list[bytes] = []
        for frame in container.decode(stream):
            frame.pts = None
            chunks.extend(f.to_ndarray().tobytes() for f in resampler.resample(frame))
        chunks.extend(f.to_ndarray().tobytes() for f in resampler.resample(None))
    return b"".join(chunks), out_rate


@cache
def eval_recordings() -> tuple[Recording, ...]:
    """The real recordings of ../shared/eval/speech, in manifest order."""
    items = []
    for line in (EVAL_DIR / "manifest.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        entry = json.loads(line)
        pcm, rate = decode_to_pcm16(EVAL_DIR / entry["audio"])
        items.append(Recording(entry["audio"], entry["text"], pcm, rate))
    return tuple(items)


def utterance_recording() -> Recording:
    """One real single-utterance recording (LibriSpeech, 16 kHz, 17 words, 5.4 s) for
    tests that bound a stream's WER. Not the 8-word ls_1089-134686-0001: its "stuff it"
    is a knife-edge for tiny.en ("stuffed it" / "suffered", by beam size and by 0.1 s of
    leading audio), so one word decided a 0.25 bound there."""
    return next(r for r in eval_recordings() if r.name == "ls_1089-134691-0001.flac")


def espeak_pcm(text: str, rate: int = 16000, voice: str = "en-us", pause_s: float = 0.0) -> bytes:
    """Synthetic speech as 16-bit mono PCM at ``rate`` (cached on disk)."""
    _CACHE.mkdir(parents=True, exist_ok=True)
    # A stable key (str hashes change per process) and no dither: the same text gives the
    # same samples in every run, so WER figures do not move with sox's random dither.
    key = hashlib.sha256(repr((text, rate, voice, pause_s)).encode()).hexdigest()[:24]
    out = _CACHE / f"{key}.raw"
    if not out.exists():
        wav = _CACHE / f"{key}.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", str(wav), text], check=True)
        cmd = ["sox", "-D", str(wav), *_raw_output(rate, out)]
        if pause_s:
            cmd += ["pad", "0", str(pause_s)]
        subprocess.run(cmd, check=True)
        wav.unlink()
    return out.read_bytes()


def _raw_output(rate: int, out: Path) -> list[str]:
    """sox arguments for 16-bit signed mono raw PCM at ``rate`` into ``out``."""
    return ["-r", str(rate), "-c", "1", "-b", "16", "-e", "signed-integer", "-t", "raw", str(out)]


def silence_pcm(seconds: float, rate: int = 16000) -> bytes:
    """Digital silence."""
    return bytes(int(seconds * rate) * 2)


def noise_pcm(
    kind: str, seconds: float, rate: int = 16000, volume: float = 0.3, seed: int = 1
) -> bytes:
    """sox-generated noise (``whitenoise``, ``pinknoise``, ``brownnoise``) as PCM."""
    _CACHE.mkdir(parents=True, exist_ok=True)
    out = _CACHE / f"noise-{kind}-{seconds}-{rate}-{volume}-{seed}.raw"
    if not out.exists():
        subprocess.run(
            [
                "sox",
                "-R",
                "-n",
                *_raw_output(rate, out),
                "synth",
                str(seconds),
                kind,
                "vol",
                str(volume),
            ],
            check=True,
        )
    data = out.read_bytes()
    if seed != 1:  # a different but reproducible noise: rotate the samples
        arr = np.frombuffer(data, dtype="<i2")
        data = np.roll(arr, seed * 977).tobytes()
    return data
