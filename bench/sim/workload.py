"""Stream arrival traces: synthetic bursts, the Azure LLM inference trace, a diurnal replay.

A workload is a sorted list of stream arrival times with each stream's audio length (a real-
time stream holds an instance slot for as long as its audio lasts).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

__all__ = [
    "AZURE_TRACE_PATH",
    "AudioMapping",
    "Workload",
    "azure_trace",
    "diurnal_replay",
    "sparse_sessions",
    "synthetic_bursts",
]

AZURE_TRACE_PATH = (
    Path(__file__).resolve().parents[3]
    / "shared"
    / "eval"
    / "traces"
    / "azure_llm_inference_conv_2023.csv"
)

DAY_S = 86_400.0


@dataclass(frozen=True)
class Workload:
    """Streams to replay: arrival times (seconds, sorted) and audio lengths (seconds)."""

    name: str
    """Short name used in reports."""
    arrivals: tuple[float, ...]
    """Arrival time of each stream, non-decreasing."""
    durations: tuple[float, ...]
    """Audio length of each stream: how long it holds a slot once admitted."""
    description: str
    """How it was made, for the report (source, mapping, scaling)."""

    def __post_init__(self) -> None:
        if len(self.arrivals) != len(self.durations):
            raise ValueError("Workload.arrivals and durations differ in length")


@dataclass(frozen=True)
class AudioMapping:
    """Audio length of a trace request: ``clip(seconds_per_token * tokens, min_s, max_s)``.

    The default reads a request's total tokens (context + generated) as the size of a spoken
    exchange: 0.02 s per token puts the trace's median (about 1,400 tokens) at a 28 s
    utterance, and the clip keeps streams within 2 s to 2 min, a realistic range for
    dictation and voice-assistant turns.
    """

    seconds_per_token: float = 0.02
    """Seconds of audio per token."""
    min_s: float = 2.0
    """Shortest stream."""
    max_s: float = 120.0
    """Longest stream."""
    use_context_tokens: bool = True
    """Count context tokens as well as generated ones."""

    def seconds(self, context_tokens: int, generated_tokens: int) -> float:
        """Audio length of one request."""
        tokens = generated_tokens + (context_tokens if self.use_context_tokens else 0)
        return min(self.max_s, max(self.min_s, self.seconds_per_token * tokens))

    def describe(self) -> str:
        """The mapping in one line, for reports."""
        tokens = "context+generated" if self.use_context_tokens else "generated"
        return (
            f"audio = clip({self.seconds_per_token} s x {tokens} tokens, "
            f"{self.min_s:g} s, {self.max_s:g} s)"
        )


def azure_trace(path: Path = AZURE_TRACE_PATH, mapping: AudioMapping | None = None) -> Workload:
    """The Azure LLM inference trace (conversation, 2023; CC BY 4.0) as stream arrivals."""
    mapping = mapping or AudioMapping()
    times: list[float] = []
    durations: list[float] = []
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            stamp = datetime.fromisoformat(row["TIMESTAMP"][:26])
            times.append(stamp.timestamp())
            durations.append(
                mapping.seconds(int(row["ContextTokens"]), int(row["GeneratedTokens"]))
            )
    start = times[0]
    return Workload(
        name="azure_conv_1h",
        arrivals=tuple(t - start for t in times),
        durations=tuple(durations),
        description=(
            f"Azure LLM inference trace 2023, conversation ({len(times)} requests, "
            f"CC BY 4.0, Patel et al. ISCA 2024), timestamps as stream arrivals, real time; "
            f"{mapping.describe()}"
        ),
    )


def diurnal_replay(
    base: Workload,
    days: float,
    seed: int,
    *,
    floor: float = 0.15,
    peak_hour: float = 14.0,
    volume: float = 1.0,
) -> Workload:
    """``base``'s arrivals tiled back to back for ``days``, thinned by a daily envelope.

    Each tiled request is kept with probability ``volume * envelope(t)``, where the envelope
    is a raised cosine from ``floor`` (at night) to 1 (at ``peak_hour``); ``t = 0`` is midnight.
    """
    rng = np.random.default_rng(seed)
    base_t = np.asarray(base.arrivals) - base.arrivals[0]
    # Back to back: the next copy starts one mean inter-arrival gap after the last arrival.
    period = float(base_t[-1]) * len(base_t) / max(1, len(base_t) - 1)
    base_d = np.asarray(base.durations)
    copies = math.ceil(days * DAY_S / period)
    t = (base_t[None, :] + period * np.arange(copies)[:, None]).ravel()
    d = np.tile(base_d, copies)
    hours = (t / 3600.0) % 24.0
    envelope = floor + (1.0 - floor) * 0.5 * (1.0 + np.cos(2 * np.pi * (hours - peak_hour) / 24))
    keep = (rng.random(t.size) < volume * envelope) & (t < days * DAY_S)
    return Workload(
        name=f"azure_diurnal_{days:g}d",
        arrivals=tuple(t[keep].tolist()),
        durations=tuple(d[keep].tolist()),
        description=(
            f"{base.name} tiled every {period:.0f} s for {days:g} days, thinned by a daily "
            f"raised-cosine envelope ({floor:g} at night, 1 at {peak_hour:g}:00) x volume "
            f"{volume:g}; real time (not accelerated), seed {seed}"
        ),
    )


def _lengths(rng: np.random.Generator, n: int, median_s: float) -> np.ndarray:
    """Lognormal audio lengths clipped to 2-120 s."""
    return np.clip(rng.lognormal(math.log(median_s), 0.7, n), 2.0, 120.0)


def _poisson_arrivals(rng: np.random.Generator, rate: np.ndarray, step_s: float) -> np.ndarray:
    """Arrivals of a Poisson process whose rate is piecewise constant over ``step_s`` steps."""
    counts = rng.poisson(rate * step_s)
    starts = np.repeat(np.arange(rate.size) * step_s, counts)
    return np.sort(starts + rng.random(starts.size) * step_s)


def synthetic_bursts(
    seed: int,
    *,
    hours: float = 3.0,
    base_rate: float = 1.5,
    burst_every_s: float = 1800.0,
    burst_factor: float = 4.0,
    ramp_s: float = 180.0,
    median_s: float = 25.0,
) -> Workload:
    """A steady Poisson load with bursts: every ~``burst_every_s`` the rate ramps linearly
    over ``ramp_s`` to ``burst_factor`` x base, holds 3-10 minutes and decays over ~2 min."""
    rng = np.random.default_rng(seed)
    step = 1.0
    t = np.arange(0.0, hours * 3600.0, step)
    rate = np.full(t.size, base_rate)
    start = rng.uniform(300.0, burst_every_s)
    while start < t[-1]:
        hold = rng.uniform(180.0, 600.0)
        ramp = np.clip((t - start) / ramp_s, 0.0, 1.0)
        decay = np.exp(-np.clip(t - start - ramp_s - hold, 0.0, None) / 120.0)
        rate += base_rate * (burst_factor - 1.0) * ramp * decay
        start += rng.exponential(burst_every_s) + ramp_s + hold
    arrivals = _poisson_arrivals(rng, rate, step)
    return Workload(
        name="synthetic_bursts",
        arrivals=tuple(arrivals.tolist()),
        durations=tuple(_lengths(rng, arrivals.size, median_s).tolist()),
        description=(
            f"Poisson {base_rate:g}/s for {hours:g} h with bursts to {burst_factor:g}x about "
            f"every {burst_every_s:.0f} s ({ramp_s:.0f} s ramp, 3-10 min hold, 2 min decay); "
            f"lognormal audio, median {median_s:g} s, clipped 2-120 s; seed {seed}"
        ),
    )


def sparse_sessions(
    seed: int,
    *,
    hours: float = 12.0,
    sessions: int = 5,
    session_s: float = 1200.0,
    rate: float = 0.05,
    median_s: float = 40.0,
) -> Workload:
    """A night-time pool: a few short sessions of light traffic separated by idle hours."""
    rng = np.random.default_rng(seed)
    step = 1.0
    t = np.arange(0.0, hours * 3600.0, step)
    rates = np.zeros(t.size)
    for start in np.sort(rng.uniform(600.0, hours * 3600.0 - session_s, sessions)):
        rates[(t >= start) & (t < start + session_s)] = rate
    arrivals = _poisson_arrivals(rng, rates, step)
    return Workload(
        name="sparse_night",
        arrivals=tuple(arrivals.tolist()),
        durations=tuple(_lengths(rng, arrivals.size, median_s).tolist()),
        description=(
            f"{sessions} sessions of {session_s:.0f} s at {rate:g} streams/s over {hours:g} h, "
            f"idle otherwise (a large-model pool at night); lognormal audio, median "
            f"{median_s:g} s; seed {seed}"
        ),
    )
