"""Resampling decoded audio frames to one format, layout and rate (libswresample).

PyAV's ``AudioResampler`` is set up by the first frame it sees and refuses any frame
in another format, layout or rate (``ValueError``). Files and streams change them
midway: MP3s joined at different rates, mono and stereo parts, HE-AAC switching
layout. :class:`Resampler` flushes and replaces it when the input changes.
"""

from __future__ import annotations

import av

__all__ = ["Resampler"]


class Resampler:
    """Resamples frames of any format, layout and rate to ``format`` mono at ``rate``."""

    def __init__(self, format: str, rate: int) -> None:
        self._format = format
        self._rate = rate
        self._resampler: av.AudioResampler | None = None
        self._input: tuple[str, str, int] | None = None

    def resample(self, frame: av.AudioFrame | None) -> list[av.AudioFrame]:
        """The output frames for ``frame``; None flushes what is buffered."""
        if frame is None:
            return [] if self._resampler is None else self._resampler.resample(None)
        shape = (frame.format.name, frame.layout.name, frame.sample_rate)
        out: list[av.AudioFrame] = []
        if self._resampler is None or shape != self._input:
            if self._resampler is not None:
                out += self._resampler.resample(None)
            self._resampler = av.AudioResampler(format=self._format, layout="mono", rate=self._rate)
            self._input = shape
        out += self._resampler.resample(frame)
        return out
