"""Any audio file to 16 kHz mono LINEAR16, with PyAV (FFmpeg)."""

from __future__ import annotations

import os

import av

from voxmesh.errors import InvalidArgument
from voxmesh.resample import Resampler

__all__ = ["SAMPLE_RATE", "decode_file"]

SAMPLE_RATE = 16000
"""The rate files are decoded to (the rate the models consume)."""


def decode_file(path: str | os.PathLike[str], rate: int = SAMPLE_RATE) -> bytes:
    """Decodes the first audio track of ``path`` to mono 16-bit PCM at ``rate`` Hz.

    Raises :class:`~voxmesh.errors.InvalidArgument` when the file cannot be
    read or has no audio track.
    """
    try:
        with av.open(os.fspath(path)) as container:
            if not container.streams.audio:
                raise InvalidArgument(f"{path}: no audio track")
            stream = container.streams.audio[0]
            resampler = Resampler("s16", rate)
            parts: list[bytes] = []
            for frame in container.decode(stream):
                parts.extend(out.to_ndarray().tobytes() for out in resampler.resample(frame))
            parts.extend(out.to_ndarray().tobytes() for out in resampler.resample(None))
    except (av.FFmpegError, ValueError) as err:
        raise InvalidArgument(f"{path}: cannot decode audio: {err}") from err
    return b"".join(parts)
