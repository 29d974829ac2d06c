"""Stand-ins for a stream session's model and VAD network, for tests without either."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np

from voxmesh.asr.decoder import DecodeJob, DecodeOutput, Decoder
from voxmesh.asr.instance import AsrInstance, InstanceIdentity
from voxmesh.asr.metrics import AsrMetrics
from voxmesh.asr.scheduler import DecodeScheduler, SchedulerOptions
from voxmesh.asr.session import SessionOptions, StreamParams, StreamSession
from voxmesh.asr.vad import FRAME_SAMPLES, StreamingVad

__all__ = [
    "SR",
    "GatedDecoder",
    "LoudnessVad",
    "fake_instance",
    "open_session",
    "silence",
    "speech",
]

SR = 16000


class LoudnessVad:
    """Stands in for the Silero ONNX session: probability 1 for a loud frame, else 0."""

    def run(self, _outputs: Any, inputs: dict[str, np.ndarray]) -> tuple[Any, Any, Any]:
        frames = inputs["input"][:, -FRAME_SAMPLES:]
        probs = (np.abs(frames).max(axis=1) > 0.1).astype(np.float32)
        return probs, inputs["h"], inputs["c"]


class GatedDecoder:
    """A fake model that blocks every decode until ``gate`` opens; records the jobs."""

    name = "fake"
    is_multilingual = False

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.jobs: list[DecodeJob] = []

    def supports_language(self, code: str) -> bool:
        return code == "en"

    def decode(self, jobs: Sequence[DecodeJob]) -> list[DecodeOutput]:
        if not self.gate.wait(timeout=10):
            raise TimeoutError("test never opened the gate")
        self.jobs.extend(jobs)
        return [DecodeOutput(text="hello world", avg_logprob=-0.1) for _ in jobs]


def fake_instance(
    decoder: Decoder | None = None,
    options: SessionOptions | None = None,
    *,
    max_streams: int = 4,
    **kwargs: Any,
) -> AsrInstance:
    """An instance (not started) on ``decoder`` (default: a gated fake model), with
    ``kwargs`` for the rest of :class:`AsrInstance`'s options (``metrics`` has a fresh
    default)."""
    kwargs.setdefault("metrics", AsrMetrics.create())
    return AsrInstance(
        InstanceIdentity(instance_id="asr-1", pool="fake", model="fake"),
        decoder or GatedDecoder(),
        SchedulerOptions(max_batch=1),
        options or SessionOptions(),
        max_streams=max_streams,
        retry_after=1.0,
        **kwargs,
    )


def speech(seconds: float) -> np.ndarray:
    return np.full(int(seconds * SR), 0.5, dtype=np.float32)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), dtype=np.float32)


@contextlib.asynccontextmanager
async def session_on(
    decoder: Decoder, params: StreamParams, options: SessionOptions, **session: Any
) -> AsyncIterator[StreamSession]:
    """A session of ``params`` (``session``: its other keyword arguments, such as
    ``offset``) on ``decoder``, one job per model call, and the loudness VAD."""
    scheduler = DecodeScheduler(decoder, SchedulerOptions(max_batch=1))
    scheduler.start()
    stream = StreamSession(
        params, options, scheduler, vad=StreamingVad(session=LoudnessVad()), **session
    )
    try:
        yield stream
    finally:
        await stream.close()
        await scheduler.shutdown()


@contextlib.asynccontextmanager
async def open_session(
    options: SessionOptions, **session: Any
) -> AsyncIterator[tuple[StreamSession, GatedDecoder]]:
    """A session (``session``: its keyword arguments, such as ``offset``) on a fake
    model that decodes at once (its gate open)."""
    decoder = GatedDecoder()
    decoder.gate.set()
    async with session_on(decoder, StreamParams(stream_id="s1"), options, **session) as stream:
        yield stream, decoder
