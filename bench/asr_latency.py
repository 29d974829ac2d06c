"""Latency of one real-time stream on tiny.en (issue 2 §7).

Targets: final result after end of speech p50 <= 0.8 s, p95 <= 1.5 s; first
interim within 1.5 s of speech start. Audio with known speech spans (the
single-utterance real recordings, and espeak-ng sentences with pauses) is sent
at real time in 100 ms chunks, each chunk sent once its last sample would have
been captured. Measured side by side in the same run: the engine as shipped,
the same engine with speculative decoding off (finals decoded only after the
endpoint), the baseline the speculative decode is there to beat, and with
greedy finals (``--final-beam-size 1``), what the default beam-5 finals cost, and
with the speculative pause fixed at 0.2 s (``--speculative-pause-idle 0.2``: the
default before the idle model's shorter 0.1 s pause; ``bench.asr_density``
measures what the shorter pause costs under load).

The run also times one encoder pass over a 30 s window on this host (the bulk
of a final's cost), so runs on hosts of different speed can be told apart.

    python -m bench.asr_latency
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import grpc
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.audio import pad_or_trim

from bench.common import percentile, write_result
from bench.speech_sets import Clip, composed_real_set, espeak_set
from tests.streaming import StreamRun, config_request, run_stream
from voxmesh.asr.models import resolve_model
from voxmesh.mesh.process import ServiceProcess
from voxmesh.rpc import aio_compat

CONFIGS = {
    "engine": [],
    "no_speculative_decode": ["--speculative-pause", "30", "--speculative-pause-idle", "30"],
    "greedy_finals": ["--final-beam-size", "1"],
    "fixed_speculative_pause": ["--speculative-pause-idle", "0.2"],
}


def latencies(clip: Clip, run: StreamRun) -> tuple[list[float], list[float], list[float]]:
    """(final latencies after speech end, first-interim latencies after speech start,
    first-result latencies after speech start: an interim or, for an utterance too
    short to get one, its final)."""
    finals = [
        (t, r.result)
        for t, r in run.responses
        if r.WhichOneof("streaming_response") == "result" and r.result.is_final
    ]
    results = [
        (t, r.result) for t, r in run.responses if r.WhichOneof("streaming_response") == "result"
    ]
    interims = [(t, r) for t, r in results if not r.is_final]
    final_lat: list[float] = []
    interim_lat: list[float] = []
    first_lat: list[float] = []
    for start, end in clip.spans:
        covering = [
            t
            for t, f in finals
            if f.start_offset.ToMilliseconds() / 1000 <= end
            and f.end_offset.ToMilliseconds() / 1000 >= end - 0.3
        ]
        if covering:
            final_lat.append(covering[-1] - end)
        heard = [t for t, r in results if r.end_offset.ToMilliseconds() / 1000 > start]
        if heard:
            first_lat.append(heard[0] - start)
        shown = [t for t, r in interims if start < r.end_offset.ToMilliseconds() / 1000 <= end + 1]
        if shown:
            interim_lat.append(shown[0] - start)
    return final_lat, interim_lat, first_lat


async def realtime_run(channel: grpc.aio.Channel, clip: Clip, timeout: float) -> StreamRun:
    """Streams ``clip`` at real time with its own sample rate."""
    return await run_stream(
        channel, clip.pcm, clip.rate, speed=1.0, first=config_request(clip.rate), timeout=timeout
    )


async def measure(clips: list[Clip], args: list[str]) -> dict[str, Any]:
    proc = ServiceProcess(
        "services.asr_small", ["--cpu-threads", "2", "--metrics-port", "-1", *args]
    )
    await proc.start()
    finals: list[float] = []
    interims: list[float] = []
    firsts: list[float] = []
    missed = 0
    try:
        async with grpc.aio.insecure_channel(proc.target) as channel:
            for clip in clips:
                run = await realtime_run(channel, clip, timeout=600)
                if run.error is not None:
                    raise RuntimeError(f"{clip.name}: {run.error}")
                f, i, r = latencies(clip, run)
                missed += len(clip.spans) - len(f)
                finals += f
                interims += i
                firsts += r
    finally:
        await proc.terminate()
    return {
        "utterances": len(finals),
        "unmatched_utterances": missed,
        "final_p50_s": round(percentile(finals, 50), 3),
        "final_p95_s": round(percentile(finals, 95), 3),
        "final_max_s": round(max(finals), 3),
        "utterances_with_an_interim": len(interims),
        "first_interim_p50_s": round(percentile(interims, 50), 3),
        "first_interim_p95_s": round(percentile(interims, 95), 3),
        "first_interim_max_s": round(max(interims), 3),
        "first_result_p50_s": round(percentile(firsts, 50), 3),
        "first_result_p95_s": round(percentile(firsts, 95), 3),
        "first_result_max_s": round(max(firsts), 3),
    }


def encode_seconds(model: str = "tiny.en", runs: int = 5) -> float:
    """Median time of one encoder pass over a 30 s window, int8, 2 threads."""
    whisper = WhisperModel(
        str(resolve_model(model)), device="cpu", compute_type="int8", cpu_threads=2
    )
    window = np.zeros(30 * 16000, dtype=np.float32)
    features = np.stack([pad_or_trim(whisper.feature_extractor(window, padding=160))])
    whisper.encode(features)  # warm-up
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        whisper.encode(features)
        times.append(time.perf_counter() - started)
    return round(sorted(times)[runs // 2], 3)


def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()
    aio_compat.install()
    encode_s = encode_seconds()
    print(f"this host encodes a 30 s window in {encode_s:.3f} s (tiny.en int8, 2 threads)")
    clips = composed_real_set() + espeak_set(recordings=2)
    audio = sum(c.seconds for c in clips)
    print(f"{len(clips)} clips, {audio:.0f} s of audio, sent at real time, tiny.en int8, 2 threads")
    results = {name: asyncio.run(measure(clips, args)) for name, args in CONFIGS.items()}
    ours, base = results["engine"], results["no_speculative_decode"]
    greedy, fixed = results["greedy_finals"], results["fixed_speculative_pause"]
    print(
        f"{'':28}{'engine':>10}{'no-spec':>10}{'ratio':>8}{'greedy':>10}{'ratio':>8}"
        f"{'fixed-0.2':>10}{'ratio':>8}  target"
    )
    for key, target in (
        ("final_p50_s", "<= 0.8"),
        ("final_p95_s", "<= 1.5"),
        ("first_interim_p95_s", "<= 1.5"),
        ("first_interim_max_s", "<= 1.5"),
        ("first_result_max_s", "(interim, or final of a short utterance)"),
    ):
        ratio = ours[key] / base[key] if base[key] else float("nan")
        vs_greedy = ours[key] / greedy[key] if greedy[key] else float("nan")
        vs_fixed = ours[key] / fixed[key] if fixed[key] else float("nan")
        print(
            f"{key:28}{ours[key]:10.3f}{base[key]:10.3f}{ratio:8.2f}"
            f"{greedy[key]:10.3f}{vs_greedy:8.2f}{fixed[key]:10.3f}{vs_fixed:8.2f}  {target}"
        )
    met = (
        ours["final_p50_s"] <= 0.8
        and ours["final_p95_s"] <= 1.5
        and ours["first_interim_max_s"] <= 1.5
    )
    print(f"targets {'met' if met else 'NOT met'}")
    write_result(
        "asr_latency",
        {
            "audio_seconds": round(audio, 1),
            "clips": len(clips),
            "host_encode_30s_window_s": encode_s,
            "configs": results,
            "targets": {"final_p50_s": 0.8, "final_p95_s": 1.5, "first_interim_s": 1.5},
            "targets_met": met,
            "ratio_final_p50_vs_no_speculative": round(
                ours["final_p50_s"] / base["final_p50_s"], 3
            ),
            "ratio_final_p50_vs_greedy_finals": round(
                ours["final_p50_s"] / greedy["final_p50_s"], 3
            ),
            "ratio_final_p50_vs_fixed_speculative_pause": round(
                ours["final_p50_s"] / fixed["final_p50_s"], 3
            ),
        },
    )


if __name__ == "__main__":
    main()
