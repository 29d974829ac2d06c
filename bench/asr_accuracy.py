"""Accuracy: WER of streaming recognition vs offline ``WhisperModel.transcribe`` on
the same model and the same audio (issue 2 §7; target: streaming at most 1.0
point above offline).

Streaming runs through a real asr_small instance (its own process) over gRPC,
the audio sent as fast as the instance takes it. Offline runs faster-whisper's
``transcribe`` in this process, int8 on CPU, with VAD filter, at beam 5 (the
eval README's reference) and at beam 1 (the same greedy decoding streaming
uses). WER is corpus-level (all errors over all reference words) after the
normalisation of tests/speech.py.

    python -m bench.asr_accuracy [--model tiny.en]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import grpc
import jiwer
import numpy as np
from faster_whisper import WhisperModel

from bench.common import write_result
from bench.speech_sets import Clip, espeak_set, real_set
from tests.speech import normalise_text
from tests.streaming import config_request, run_stream
from voxmesh.asr.audio import Linear16Decoder
from voxmesh.asr.models import resolve_model
from voxmesh.mesh.process import ServiceProcess
from voxmesh.rpc import aio_compat


def corpus_wer(refs: list[str], hyps: list[str]) -> float:
    """All word errors over all reference words."""
    return float(jiwer.wer([normalise_text(r) for r in refs], [normalise_text(h) for h in hyps]))


async def streaming(clips: list[Clip], model: str, pool: str) -> list[str]:
    proc = ServiceProcess(
        f"services.{pool}", ["--model", model, "--cpu-threads", "2", "--metrics-port", "-1"]
    )
    await proc.start()
    try:
        async with grpc.aio.insecure_channel(proc.target) as channel:
            texts = []
            for clip in clips:
                run = await run_stream(
                    channel, clip.pcm, clip.rate, first=config_request(clip.rate), timeout=600
                )
                if run.error is not None:
                    raise RuntimeError(f"{clip.name}: {run.error}")
                texts.append(run.text)
        return texts
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
    args = parser.parse_args()
    aio_compat.install()
    sets = {"real": real_set(), "espeak_long": espeak_set()}
    report: dict[str, dict[str, float | int]] = {}
    print(f"model {args.model}: streaming (greedy) vs offline transcribe (int8, VAD filter)")
    print(
        f"{'set':<12} {'audio s':>8} {'stream WER':>11} {'offl b5':>8} {'offl b1':>8} "
        f"{'Δ vs b5':>8} {'Δ vs b1':>8}"
    )
    for name, clips in sets.items():
        refs = [c.text for c in clips]
        started = time.monotonic()
        stream_texts = asyncio.run(streaming(clips, args.model, args.pool))
        stream_seconds = time.monotonic() - started
        b5 = corpus_wer(refs, offline(clips, args.model, 5))
        b1 = corpus_wer(refs, offline(clips, args.model, 1))
        sw = corpus_wer(refs, stream_texts)
        audio = sum(c.seconds for c in clips)
        report[name] = {
            "clips": len(clips),
            "audio_seconds": round(audio, 1),
            "streaming_wer": round(sw, 4),
            "offline_beam5_wer": round(b5, 4),
            "offline_beam1_wer": round(b1, 4),
            "points_above_offline_beam5": round(100 * (sw - b5), 2),
            "points_above_offline_beam1": round(100 * (sw - b1), 2),
            "streaming_wall_seconds": round(stream_seconds, 1),
        }
        print(
            f"{name:<12} {audio:8.1f} {100 * sw:10.2f}% {100 * b5:7.2f}% {100 * b1:7.2f}% "
            f"{100 * (sw - b5):+7.2f} {100 * (sw - b1):+7.2f}"
        )
    worst = max(r["points_above_offline_beam5"] for r in report.values())
    print(
        f"target: streaming WER <= offline + 1.0 point; worst set: {worst:+.2f} points "
        f"({'met' if worst <= 1.0 else 'NOT met'})"
    )
    write_result(
        "asr_accuracy",
        {"model": args.model, "sets": report, "target_points": 1.0, "target_met": worst <= 1.0},
    )


if __name__ == "__main__":
    main()
