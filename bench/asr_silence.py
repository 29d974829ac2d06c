"""Silence and noise: words emitted on silence-only and noise-only streams
(issue 2 §7; target: none on at least 99% of them).

100 streams of 6 s each, generated with sox: digital silence, near-silent
dither, and white, pink and brown noise at three volumes with different seeds,
sent at real time with interim results on (four at a time). A stream counts as
clean only if no result, interim or final, carried a word. Side by side in the
same run: the instance (VAD-gated, Whisper's no-speech rules) and plain offline
Whisper without VAD on the same clips (what the model alone emits on non-speech).

    python -m bench.asr_silence
"""

from __future__ import annotations

import argparse
import asyncio

import grpc
import numpy as np
from faster_whisper import WhisperModel

from bench.common import write_result
from tests.speech import noise_pcm, silence_pcm
from tests.streaming import run_stream
from voxmesh.asr.models import resolve_model
from voxmesh.mesh.process import ServiceProcess
from voxmesh.rpc import aio_compat

SECONDS = 6.0


def clips() -> list[tuple[str, bytes]]:
    out = [(f"silence-{i}", silence_pcm(SECONDS)) for i in range(10)]
    rng = np.random.default_rng(3)
    for i in range(10):
        dither = (rng.normal(0, 3, int(SECONDS * 16000))).astype("<i2").tobytes()
        out.append((f"dither-{i}", dither))
    for kind in ("whitenoise", "pinknoise", "brownnoise"):
        for volume in (0.05, 0.2, 0.6):
            for seed in range(1, 10):
                if len(out) < 100:
                    out.append(
                        (
                            f"{kind}-{volume}-{seed}",
                            noise_pcm(kind, SECONDS, volume=volume, seed=seed),
                        )
                    )
    return out


async def streaming(items: list[tuple[str, bytes]]) -> list[str]:
    proc = ServiceProcess(
        "services.asr_small", ["--cpu-threads", "2", "--metrics-port", "-1", "--max-streams", "8"]
    )
    await proc.start()
    sem = asyncio.Semaphore(4)
    try:
        async with grpc.aio.insecure_channel(proc.target) as channel:

            async def one(pcm: bytes) -> str:
                async with sem:
                    run = await run_stream(channel, pcm, speed=1.0, timeout=300)
                if run.error is not None:
                    raise RuntimeError(str(run.error))
                # Words a client saw, in interims too (a final may withdraw them).
                said = [r.alternatives[0].transcript for r in run.finals + run.interims]
                return " | ".join(t for t in said if t.strip())

            return list(await asyncio.gather(*(one(pcm) for _, pcm in items)))
    finally:
        await proc.terminate()


def offline(items: list[tuple[str, bytes]], *, guard: bool) -> list[str]:
    """Plain faster-whisper without VAD; ``guard`` keeps its no-speech/log-prob rules."""
    model = WhisperModel(
        str(resolve_model("tiny.en")), device="cpu", compute_type="int8", cpu_threads=2
    )
    texts = []
    for _, pcm in items:
        audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
        rules = {} if guard else {"no_speech_threshold": None, "log_prob_threshold": None}
        segments, _ = model.transcribe(audio, beam_size=1, vad_filter=False, language="en", **rules)
        texts.append(" ".join(s.text.strip() for s in segments))
    return texts


def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()
    aio_compat.install()
    items = clips()
    ours = asyncio.run(streaming(items))
    plain = offline(items, guard=True)
    raw = offline(items, guard=False)
    ours_clean = sum(1 for t in ours if not t.strip()) / len(items)
    plain_clean = sum(1 for t in plain if not t.strip()) / len(items)
    raw_clean = sum(1 for t in raw if not t.strip()) / len(items)
    print(f"{len(items)} non-speech streams of {SECONDS:g} s")
    print(f"  voxmesh instance:        {100 * ours_clean:5.1f}% with no words (target >= 99%)")
    print(f"  plain Whisper (no VAD):  {100 * plain_clean:5.1f}% with no words")
    print(f"  raw Whisper (no VAD, no no-speech rule): {100 * raw_clean:5.1f}% with no words")
    examples = sorted({t for t in raw if t.strip()})[:5]
    write_result(
        "asr_silence",
        {
            "streams": len(items),
            "seconds_each": SECONDS,
            "voxmesh_clean_ratio": round(ours_clean, 4),
            "plain_whisper_clean_ratio": round(plain_clean, 4),
            "raw_whisper_clean_ratio": round(raw_clean, 4),
            "voxmesh_emitted": [(n, t) for (n, _), t in zip(items, ours, strict=True) if t.strip()],
            "raw_whisper_examples": examples,
            "target_clean_ratio": 0.99,
            "target_met": ours_clean >= 0.99,
        },
    )


if __name__ == "__main__":
    main()
