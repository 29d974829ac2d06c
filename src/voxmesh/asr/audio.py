"""Audio input: LINEAR16 at any common rate, or a compressed container, to
16 kHz mono float32 as the model wants it.

Both decoders are incremental: ``feed`` takes one chunk of the stream and
returns the samples it completed, ``finish`` flushes the rest. Errors in the
input raise :class:`voxmesh.errors.InvalidArgument` with a message that says
what was wrong.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from typing import Protocol

import av
import numpy as np
import numpy.typing as npt

from voxmesh.errors import InvalidArgument

__all__ = [
    "MODEL_SAMPLE_RATE",
    "AudioDecoder",
    "ContainerDecoder",
    "Linear16Decoder",
    "Samples",
]

logger = logging.getLogger(__name__)

MODEL_SAMPLE_RATE = 16000
"""The rate Whisper and Silero VAD consume."""

Samples = npt.NDArray[np.float32]

_EMPTY: Samples = np.zeros(0, dtype=np.float32)


class AudioDecoder(Protocol):
    """Turns a stream's bytes into 16 kHz float32 samples."""

    def feed(self, data: bytes) -> Samples:
        """Decodes one chunk; returns the samples it completed (may be empty)."""

    def finish(self) -> Samples:
        """Flushes what is left at the end of the stream."""

    def close(self) -> None:
        """Releases resources (idempotent)."""


def _concat(frames: list[Samples]) -> Samples:
    if not frames:
        return _EMPTY
    return np.concatenate(frames).astype(np.float32, copy=False)


class _Resampler:
    """Incremental resampling to 16 kHz mono float32 with libswresample."""

    def __init__(self) -> None:
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=MODEL_SAMPLE_RATE)

    def push(self, frame: av.AudioFrame | None) -> Samples:
        return _concat(
            [f.to_ndarray().reshape(-1).astype(np.float32) for f in self._resampler.resample(frame)]
        )


class Linear16Decoder:
    """16-bit signed little-endian mono PCM at ``sample_rate`` Hz."""

    def __init__(self, sample_rate: int) -> None:
        self._rate = sample_rate
        self._resampler = _Resampler() if sample_rate != MODEL_SAMPLE_RATE else None

    def feed(self, data: bytes) -> Samples:
        if len(data) % 2:
            raise InvalidArgument(
                f"LINEAR16 audio chunk has an odd length ({len(data)} bytes): "
                "chunks must hold whole 16-bit samples"
            )
        if not data:
            return _EMPTY
        pcm = np.frombuffer(data, dtype="<i2")
        if self._resampler is None:
            return (pcm.astype(np.float32) / 32768.0).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self._rate
        return self._resampler.push(frame)

    def finish(self) -> Samples:
        return self._resampler.push(None) if self._resampler is not None else _EMPTY

    def close(self) -> None:
        self._resampler = None


class _ChunkReader:
    """A blocking, read-only file object fed from another thread (for PyAV)."""

    def __init__(self, max_chunks: int) -> None:
        self._chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=max_chunks)
        self._buffer = b""
        self._eof = False

    def put(self, data: bytes | None) -> None:
        self._chunks.put(data)

    def read(self, size: int = -1) -> bytes:
        while not self._eof and (size < 0 or len(self._buffer) < size):
            chunk = self._chunks.get()
            if chunk is None:
                self._eof = True
            else:
                self._buffer += chunk
        if size < 0:
            size = len(self._buffer)
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out


class ContainerDecoder:
    """Compressed audio in a streamable container (Ogg/Opus, MP3, FLAC, WAV, WebM).

    PyAV reads the container on a worker thread from a blocking reader that
    ``feed`` fills, so the stream is decoded while it arrives. The worker is
    bounded: ``feed`` blocks when ``max_pending_chunks`` chunks wait.
    """

    def __init__(self, max_pending_chunks: int = 64) -> None:
        self._reader = _ChunkReader(max_pending_chunks)
        self._out: queue.Queue[Samples] = queue.Queue()
        self._error: str | None = None
        self._fed_bytes = 0
        self._thread = threading.Thread(
            target=self._run, name="voxmesh-container-decoder", daemon=True
        )
        self._thread.start()
        self._closed = False

    def _run(self) -> None:
        resampler = _Resampler()
        try:
            with av.open(self._reader, mode="r") as container:
                if not container.streams.audio:
                    raise InvalidArgument("compressed audio has no audio track")
                for frame in container.decode(audio=0):
                    frame.pts = None
                    self._out.put(resampler.push(frame))
            self._out.put(resampler.push(None))
        except InvalidArgument as err:
            self._error = str(err)
        except (av.FFmpegError, ValueError, OSError) as err:
            self._error = f"malformed compressed audio: {err}"
        finally:
            # Unblock a producer that may wait on a full reader queue.
            self._reader._eof = True
            while True:
                try:
                    self._reader._chunks.get_nowait()
                except queue.Empty:
                    break

    def _drain(self) -> Samples:
        frames: list[Samples] = []
        while True:
            try:
                frames.append(self._out.get_nowait())
            except queue.Empty:
                break
        if self._error is not None and not frames:
            raise InvalidArgument(self._error)
        return _concat(frames)

    def feed(self, data: bytes) -> Samples:
        if self._error is not None:
            raise InvalidArgument(self._error)
        if data:
            self._fed_bytes += len(data)
            self._reader.put(data)
        return self._drain()

    def finish(self) -> Samples:
        self._reader.put(None)
        self._thread.join(timeout=30)
        out = self._drain()
        if self._error is not None:
            raise InvalidArgument(self._error)
        if self._fed_bytes == 0:
            raise InvalidArgument("no compressed audio was received")
        return out

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._thread.is_alive():
            with contextlib.suppress(queue.Full):
                self._reader.put(None)
            self._thread.join(timeout=5)
