"""Accuracy: WER of streaming recognition vs offline ``WhisperModel.transcribe`` on
the same model and the same audio (issue 2 §7; target: streaming at most 1.0
point above offline).

Streaming runs through a real asr_small instance (its own process) over gRPC,
the audio sent at real time as a live source sends it (``--speed``), twice: with
the default final beam (5) and with greedy finals (``--final-beam-size 1``). The
instance decodes a final greedily when other decode work is waiting (sent faster
than real time, a stream queues its own work), so the run reports how many finals
that happened to (``voxmesh_asr_finals_narrowed_total``). Offline runs
faster-whisper's ``transcribe`` in this process, int8 on CPU, with VAD filter,
at beam 5 (its default and the eval README's reference) and at beam 1. WER is
corpus-level (all errors over all reference words) after the normalisation of
tests/speech.py. The espeak-ng set is 120 Harvard sentences in 24 clips (one word
is about 0.1 point of it); the difference to offline comes with a 95% interval from a
paired bootstrap over clips, because a few words decide a point.

    python -m bench.asr_accuracy [--model tiny.en] [--speed 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

import grpc
import jiwer
import numpy as np
from faster_whisper import WhisperModel

from bench.common import metric_value, write_result
from bench.speech_sets import Clip, espeak_set, real_set
from tests.speech import normalise_text
from tests.streaming import config_request, run_stream
from voxmesh.asr.audio import Linear16Decoder
from voxmesh.asr.models import resolve_model
from voxmesh.mesh.process import ServiceProcess
from voxmesh.rpc import aio_compat

FINAL_BEAMS = (5, 1)
"""Final beam sizes streamed: the default first (the target is judged on it)."""
BOOTSTRAP_SAMPLES = 2000


def corpus_wer(refs: list[str], hyps: list[str]) -> float:
    """All word errors over all reference words."""
    return float(jiwer.wer([normalise_text(r) for r in refs], [normalise_text(h) for h in hyps]))


def clip_errors(refs: list[str], hyps: list[str]) -> list[tuple[int, int]]:
    """(word errors, reference words) of each clip."""
    counts = []
    for ref, hyp in zip(refs, hyps, strict=True):
        out = jiwer.process_words(normalise_text(ref), normalise_text(hyp))
        counts.append((out.substitutions + out.deletions + out.insertions, len(out.references[0])))
    return counts


def difference_interval(
    a: list[tuple[int, int]], b: list[tuple[int, int]], seed: int = 1
) -> tuple[float, float]:
    """95% interval of corpus WER(a) - WER(b) in points, resampling clips (paired)."""
    rng = random.Random(seed)
    n = len(a)
    diffs = []
    for _ in range(BOOTSTRAP_SAMPLES):
        pick = [rng.randrange(n) for _ in range(n)]
        words = sum(a[i][1] for i in pick)
        diffs.append(100 * (sum(a[i][0] for i in pick) - sum(b[i][0] for i in pick)) / words)
    diffs.sort()
    return diffs[int(0.025 * len(diffs))], diffs[int(0.975 * len(diffs)) - 1]


async def streaming(
    clips: list[Clip], model: str, pool: str, final_beam: int, speed: float
) -> tuple[list[str], int]:
    """The streamed transcripts, and how many finals the instance narrowed to greedy."""
    proc = ServiceProcess(
        f"services.{pool}",
        ["--model", model, "--cpu-threads", "2", "--metrics-port", "0",
         "--final-beam-size", str(final_beam)],
    )  # fmt: skip
    await proc.start()
    try:
        async with grpc.aio.insecure_channel(proc.target) as channel:
            texts = []
            for clip in clips:
                run = await run_stream(
                    channel,
                    clip.pcm,
                    clip.rate,
                    speed=speed,
                    first=config_request(clip.rate),
                    timeout=600,
                )
                if run.error is not None:
                    raise RuntimeError(f"{clip.name}: {run.error}")
                texts.append(run.text)
        narrowed = await asyncio.to_thread(
            metric_value, proc.ready["metrics_port"], "voxmesh_asr_finals_narrowed_total"
        )
        return texts, int(narrowed)
    finally:
        await proc.terminate()


def offline(clips: list[Clip], model: str, beam: int) -> list[str]:
    whisper = WhisperModel(
        str(resolve_model(model)), device="cpu", compute_type="int8", cpu_threads=2
    )
    texts = []
    for clip in clips:
        decoder = Linear16Decoder(clip.rate)
        audio = np.concatenate([decoder.feed(clip.pcm), decoder.finish()])
        segments, _ = whisper.transcribe(audio, beam_size=beam, vad_filter=True, language="en")
        texts.append(" ".join(s.text.strip() for s in segments))
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--pool", default="asr_small")
    parser.add_argument(
        "--speed", type=float, default=1.0, help="1.0: real time; 0: as fast as taken"
    )
    args = parser.parse_args()
    aio_compat.install()
    sets = {"real": real_set(), "espeak_long": espeak_set()}
    report: dict[str, dict[str, object]] = {}
    gaps: list[float] = []  # points above offline beam 5, default final beam, per set
    print(f"model {args.model}: streaming vs offline transcribe (int8, VAD filter)")
    print(
        f"{'set':<12} {'audio s':>8} {'final beam':>10} {'stream WER':>11} {'offl b5':>8} "
        f"{'offl b1':>8} {'Δ vs b5 [95% interval]':>24} {'Δ vs b1':>8} {'narrowed':>8}"
    )
    for name, clips in sets.items():
        refs = [c.text for c in clips]
        b5_texts = offline(clips, args.model, 5)
        b1_texts = offline(clips, args.model, 1)
        b5, b1 = corpus_wer(refs, b5_texts), corpus_wer(refs, b1_texts)
        audio = sum(c.seconds for c in clips)
        row: dict[str, object] = {
            "clips": len(clips),
            "reference_words": sum(n for _, n in clip_errors(refs, refs)),
            "audio_seconds": round(audio, 1),
            "offline_beam5_wer": round(b5, 4),
            "offline_beam1_wer": round(b1, 4),
        }
        for beam in FINAL_BEAMS:
            started = time.monotonic()
            texts, narrowed = asyncio.run(streaming(clips, args.model, args.pool, beam, args.speed))
            wall = time.monotonic() - started
            sw = corpus_wer(refs, texts)
            low, high = difference_interval(clip_errors(refs, texts), clip_errors(refs, b5_texts))
            row[f"final_beam_{beam}"] = {
                "streaming_wer": round(sw, 4),
                "points_above_offline_beam5": round(100 * (sw - b5), 2),
                "points_above_offline_beam5_95pct_interval": [round(low, 2), round(high, 2)],
                "points_above_offline_beam1": round(100 * (sw - b1), 2),
                "streaming_wall_seconds": round(wall, 1),
                "finals_narrowed_to_greedy": narrowed,
            }
            if beam == FINAL_BEAMS[0]:
                gaps.append(100 * (sw - b5))
            interval = f"{100 * (sw - b5):+6.2f} [{low:+.2f}, {high:+.2f}]"
            print(
                f"{name:<12} {audio:8.1f} {beam:10d} {100 * sw:10.2f}% {100 * b5:7.2f}% "
                f"{100 * b1:7.2f}% {interval:>24} {100 * (sw - b1):+7.2f} {narrowed:>8}"
            )
        report[name] = row
    worst = max(gaps)
    print(
        f"target: streaming WER <= offline + 1.0 point (default final beam "
        f"{FINAL_BEAMS[0]}); worst set: {worst:+.2f} points "
        f"({'met' if worst <= 1.0 else 'NOT met'})"
    )
    write_result(
        "asr_accuracy",
        {
            "model": args.model,
            "speed": args.speed,
            "sets": report,
            "target_points": 1.0,
            "target_met": worst <= 1.0,
        },
    )


if __name__ == "__main__":
    main()
