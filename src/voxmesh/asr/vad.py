"""Streaming voice activity detection with the Silero VAD that faster-whisper ships.

:class:`StreamingVad` runs the ONNX model frame by frame (512 samples = 32 ms
at 16 kHz), carrying the LSTM state and the 64-sample context across chunks,
so a stream's probabilities equal those of one pass over the whole audio.

:class:`Endpointer` turns probabilities into utterance boundaries::

        p >= threshold for min_speech
    IDLE ───────────────────────────────▶ SPEAKING
     ▲                                     │  ▲
     │ silence >= min_silence              │  │ p >= threshold
     │ (utterance ends)                    ▼  │
     └──────────────────────────────── TRAILING
                                      (p < neg_threshold)

TRAILING means the speaker paused: the session may decode speculatively;
the utterance ends only when the pause reaches ``min_silence``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import numpy as np
from faster_whisper.vad import get_vad_model

from voxmesh.asr.audio import Samples

__all__ = [
    "FRAME_SAMPLES",
    "Endpointer",
    "EndpointerOptions",
    "StreamingVad",
    "VadEvent",
    "VadState",
]

FRAME_SAMPLES = 512
_CONTEXT = 64


class StreamingVad:
    """Incremental Silero VAD for one stream."""

    def __init__(self, session: Any = None) -> None:
        self._session = session if session is not None else get_vad_model().session
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(_CONTEXT, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)

    def process(self, audio: Samples) -> Samples:
        """Returns one speech probability per completed 32 ms frame."""
        buf = np.concatenate([self._pending, audio]) if len(self._pending) else audio
        n = len(buf) // FRAME_SAMPLES
        self._pending = buf[n * FRAME_SAMPLES :].copy()
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        frames = buf[: n * FRAME_SAMPLES].reshape(n, FRAME_SAMPLES)
        contexts = np.empty((n, _CONTEXT), dtype=np.float32)
        contexts[0] = self._context
        if n > 1:
            contexts[1:] = frames[:-1, -_CONTEXT:]
        self._context = frames[-1, -_CONTEXT:].copy()
        batch = np.concatenate([contexts, frames], axis=1).astype(np.float32, copy=False)
        probs, self._h, self._c = self._session.run(
            None, {"input": batch, "h": self._h, "c": self._c}
        )
        return np.asarray(probs, dtype=np.float32).reshape(-1)


class VadState(enum.Enum):
    """Where the endpointer is (see the module diagram)."""

    IDLE = "idle"
    SPEAKING = "speaking"
    TRAILING = "trailing"


class VadEvent(enum.Enum):
    """What a frame changed."""

    SPEECH_STARTED = "speech_started"
    PAUSE_STARTED = "pause_started"
    SPEECH_RESUMED = "speech_resumed"
    SPEECH_ENDED = "speech_ended"


@dataclass(frozen=True)
class EndpointerOptions:
    """Endpointing thresholds (times in seconds)."""

    threshold: float = 0.5
    """Probability at or above which a frame is speech."""
    neg_threshold: float = 0.35
    """Probability below which a frame is silence (hysteresis)."""
    min_speech: float = 0.1
    """Speech needed before an utterance starts (filters clicks)."""
    min_silence: float = 0.45
    """Pause that ends an utterance."""


class Endpointer:
    """Utterance boundaries from per-frame probabilities; positions are sample indices."""

    def __init__(self, options: EndpointerOptions) -> None:
        self.options = options
        self.state = VadState.IDLE
        self._frames_seen = 0
        self._run = 0
        self._run_start = 0
        self.speech_start = 0
        """Sample index where the open utterance's speech began."""
        self.last_speech_end = 0
        """Sample index after the last speech frame of the open utterance."""
        self._min_speech = max(1, round(options.min_speech * 16000 / FRAME_SAMPLES))
        self._min_silence = max(1, round(options.min_silence * 16000 / FRAME_SAMPLES))

    def push(self, probs: Samples) -> list[tuple[VadEvent, int]]:
        """Advances over ``probs``; returns the events with their sample positions."""
        events: list[tuple[VadEvent, int]] = []
        for p in probs:
            start = self._frames_seen * FRAME_SAMPLES
            self._frames_seen += 1
            end = self._frames_seen * FRAME_SAMPLES
            if self.state is VadState.IDLE:
                if p >= self.options.threshold:
                    if self._run == 0:
                        self._run_start = start
                    self._run += 1
                    if self._run >= self._min_speech:
                        self.state = VadState.SPEAKING
                        self.speech_start = self._run_start
                        self.last_speech_end = end
                        self._run = 0
                        events.append((VadEvent.SPEECH_STARTED, self.speech_start))
                else:
                    self._run = 0
            elif self.state is VadState.SPEAKING:
                if p < self.options.neg_threshold:
                    self.state = VadState.TRAILING
                    self._run = 1
                    events.append((VadEvent.PAUSE_STARTED, self.last_speech_end))
                else:
                    self.last_speech_end = end
            elif p >= self.options.threshold:
                self.state = VadState.SPEAKING
                self.last_speech_end = end
                self._run = 0
                events.append((VadEvent.SPEECH_RESUMED, start))
            else:
                self._run += 1
                if self._run >= self._min_silence:
                    self.state = VadState.IDLE
                    self._run = 0
                    events.append((VadEvent.SPEECH_ENDED, self.last_speech_end))
        return events

    @property
    def position(self) -> int:
        """Samples judged so far (whole frames)."""
        return self._frames_seen * FRAME_SAMPLES

    @property
    def onset_floor(self) -> int:
        """The earliest sample a future SPEECH_STARTED can report: the start of the
        speech run being counted towards ``min_speech``, else the next frame. (Onsets
        are reported a few frames late; audio before this is never an utterance's.)"""
        if self.state is VadState.IDLE and self._run:
            return self._run_start
        return self.position

    def force_end(self) -> int | None:
        """Ends an open utterance (end of stream); returns its speech end or None."""
        if self.state is VadState.IDLE:
            return None
        self.state = VadState.IDLE
        self._run = 0
        return self.last_speech_end
