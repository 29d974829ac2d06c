"""Audio input: LINEAR16 at any common rate, or a compressed container, to
16 kHz mono float32 as the model wants it.

Both decoders are incremental: ``feed`` takes one chunk of the stream and
returns the samples it completed, ``finish`` flushes the rest. A
:class:`ContainerDecoder` hands out what a chunk decodes to in bounded pieces
(the rest with ``more`` while ``pending``). Errors in the input raise
:class:`voxmesh.errors.InvalidArgument` with a message that says what was wrong.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

import av
import numpy as np
import numpy.typing as npt

from voxmesh.errors import InvalidArgument
from voxmesh.resample import Resampler

__all__ = [
    "MAX_SAMPLE_RATE",
    "MIN_SAMPLE_RATE",
    "MODEL_SAMPLE_RATE",
    "AudioDecoder",
    "ContainerDecoder",
    "Linear16Decoder",
    "Samples",
]

logger = logging.getLogger(__name__)

MODEL_SAMPLE_RATE = 16000
"""The rate Whisper and Silero VAD consume."""

MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 48000
"""The sample rates taken, of LINEAR16 (see :mod:`voxmesh.asr.config`) and containers."""

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
        self._resampler = Resampler("flt", MODEL_SAMPLE_RATE)

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


_PROBE_BYTES = 4096
"""How much of a container FFmpeg reads to learn its streams before decoding
starts (5 MB by default: over 4 s of a 48 kHz WAV stream held back)."""

_MAX_STREAMS = 8
"""The most streams a container may have. FFmpeg makes up to its ``max_streams``
(1000 by default) and opens a decoder for each while probing, some 220 KB for
Opus, held while the container is open: 1000 Ogg start pages (184 KB of input,
a separate Opus stream each) held 220 MB per request. A voice file has one
audio stream; 8 leave room for what a recording tool may add beside it (a video
track, an Ogg Skeleton, subtitles, a cover image) and keep a hostile input's
cost to a couple of MB.

FFmpeg is let make one stream more, so that a container past the bound is seen
and refused: some demuxers drop the tracks past ``max_streams`` and then give up
on the blocks of the dropped ones (a Matroska file of 9 tracks, cut at 8, gave
the first 0.07 s of its first track as if that were all). Others (Ogg) fail with
``ENOMEM`` on the stream past it, at once, before any decoder is opened."""

_MAX_BAD_PACKETS = 16
"""The most packets in a row the codec may refuse before the stream is malformed. A
damaged packet (bytes lost in transit, two MP3 files joined, an ID3 tag in mid-stream)
is skipped as FFmpeg's own tools skip it, rather than failing all the audio that came
before it; only a run this long, or a stream of which nothing decodes, is refused."""
_TOO_MANY_STREAMS = f"malformed compressed audio: more than {_MAX_STREAMS} streams in the container"


class _Closed(Exception):
    """Ends the worker of a :class:`ContainerDecoder` that was closed."""


class _Reader:
    """The read-only file object PyAV reads a container from."""

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self.read = read


class ContainerDecoder:
    """Compressed audio in a streamable container (Ogg/Opus, MP3, FLAC, WAV, WebM).

    PyAV decodes the container on a worker thread, reading whatever input has
    arrived: a read waits only while there is none (a read that waited for the
    32 KiB PyAV asks for would hold a 16 kbit/s stream back for seconds).
    ``feed`` and ``finish`` wait until the worker has decoded all the input given
    so far, or until it holds ``max_output_seconds`` of audio, and return that
    audio. The worker decodes no further until the audio is taken: while
    :attr:`pending`, :meth:`more` takes the next piece. A chunk that decodes to
    hours of audio (compressed silence) is thus never in memory at once, and the
    caller's duration limit applies as it decodes. A container must declare a
    sample rate from ``MIN_SAMPLE_RATE`` to ``MAX_SAMPLE_RATE`` Hz.

    The worker::

        reading ──(input)──► decoding ──(output full)──► waiting for more()
           ▲                   │  │  ▲                        │
           └───(no input)──────┘  │  └────────(taken)─────────┘
                                  ▼
                 ended (end of input) | failed | closed

    Whatever ends the worker, other than the end of its input or ``close``, is
    kept and raised as :class:`~voxmesh.errors.InvalidArgument` by the next call.
    ``close`` is immediate: the worker stops at its next read or frame.
    """

    def __init__(self, max_output_seconds: float = 10.0) -> None:
        self._max_output = int(max_output_seconds * MODEL_SAMPLE_RATE)
        self._lock = threading.Condition()
        self._input = bytearray()
        self._output: list[Samples] = []
        self._output_samples = 0
        self._fed_bytes = 0
        self._end_of_input = False
        self._closed = False
        self._reading = False
        """The worker waits for input (whoever gives it some clears this)."""
        self._ended = False
        """The worker has ended (``_error`` says whether it failed)."""
        self._error: str | None = None
        self._thread = threading.Thread(
            target=self._run, name="voxmesh-container-decoder", daemon=True
        )
        self._thread.start()

    # The worker thread.

    def _run(self) -> None:
        error: str | None = "the compressed audio decoder stopped unexpectedly"
        try:
            self._decode()
            error = None
        except _Closed:
            error = None
        except InvalidArgument as err:
            error = str(err)
        except av.error.MemoryError as err:
            # FFmpeg's answer to a stream past max_streams, as it opens the
            # container or finds a new stream in it; rarely a true lack of memory.
            error = f"{_TOO_MANY_STREAMS} (or FFmpeg ran out of memory: {err.strerror})"
        except (av.FFmpegError, ValueError, OSError) as err:
            error = f"malformed compressed audio: {err}"
        except Exception as err:
            logger.exception("the compressed audio decoder failed")
            error = f"compressed audio could not be decoded ({type(err).__name__}: {err})"
        finally:
            with self._lock:
                self._error = None if self._closed else error
                self._ended = True
                self._input.clear()
                self._lock.notify_all()

    def _decode(self) -> None:
        resampler = _Resampler()
        options = {"probesize": str(_PROBE_BYTES), "max_streams": str(_MAX_STREAMS + 1)}
        with av.open(_Reader(self._read), mode="r", container_options=options) as container:
            if len(container.streams) > _MAX_STREAMS:
                raise InvalidArgument(_TOO_MANY_STREAMS)
            if not container.streams.audio:
                raise InvalidArgument("compressed audio has no audio track")
            stream = container.streams.audio[0]
            if stream.codec_context is None:
                # FFmpeg has no decoder for the codec the header declares (a WAV
                # of 0 bits per sample): the stream has no codec context, and
                # reading its sample rate raised AttributeError.
                raise InvalidArgument(
                    "compressed audio: unsupported codec in the audio track "
                    f"of the {container.format.name} container (no decoder for it)"
                )
            if stream.sample_rate:
                _check_rate(stream.sample_rate)
            bad_run, bad, decoded = 0, 0, False
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.error.InvalidDataError as err:
                    bad_run, bad = bad_run + 1, bad + 1
                    if bad_run > _MAX_BAD_PACKETS:
                        raise InvalidArgument(
                            f"malformed compressed audio: {bad_run} packets in a row could "
                            f"not be decoded ({err})"
                        ) from None
                    continue
                bad_run = 0
                for frame in frames:
                    decoded = True
                    _check_rate(frame.sample_rate)
                    frame.pts = None
                    self._emit(resampler.push(frame))
            if bad and not decoded:
                raise InvalidArgument(
                    f"malformed compressed audio: none of its {bad} packets could be decoded"
                )
            if bad:
                logger.info("compressed audio: %d damaged packets skipped", bad)
        self._emit(resampler.push(None))

    def _read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes of the input that has arrived; waits only while there
        is none. Empty at the end of the input (and once closed)."""
        with self._lock:
            while not self._input and not self._end_of_input and not self._closed:
                self._reading = True
                self._lock.notify_all()
                self._lock.wait()
            self._reading = False
            if self._closed:
                return b""
            if size < 0:
                size = len(self._input)
            out = bytes(self._input[:size])
            del self._input[:size]
            return out

    def _emit(self, samples: Samples) -> None:
        """Hands decoded audio out; waits while ``max_output_seconds`` are not taken."""
        if not len(samples):
            return
        with self._lock:
            while self._output_samples >= self._max_output and not self._closed:
                self._lock.wait()
            if self._closed:
                raise _Closed
            self._output.append(samples)
            self._output_samples += len(samples)
            self._lock.notify_all()

    # The caller's side.

    def _settled(self) -> bool:
        idle = self._reading and not self._input
        return idle or self._ended or self._closed or self._output_samples >= self._max_output

    def _take(self) -> Samples:
        with self._lock:
            self._lock.wait_for(self._settled)
            if self._error is not None:
                raise InvalidArgument(self._error)
            frames, self._output, self._output_samples = self._output, [], 0
            self._lock.notify_all()
        return _concat(frames)

    @property
    def pending(self) -> bool:
        """More audio is decoded from the input given so far: call :meth:`more`."""
        with self._lock:
            if self._closed:
                return False
            if self._error is not None:
                return True  # more() raises it
            return bool(self._output) or not (self._ended or (self._reading and not self._input))

    def feed(self, data: bytes) -> Samples:
        """Decodes ``data``; returns the first ``max_output_seconds`` of what it gave."""
        with self._lock:
            self._fed_bytes += len(data)
            if data and not self._ended and not self._closed:
                self._input += data
                self._reading = False
                self._lock.notify_all()
        return self._take()

    def more(self) -> Samples:
        """The next ``max_output_seconds`` of audio decoded from the input given."""
        return self._take()

    def finish(self) -> Samples:
        """Ends the input; returns the first ``max_output_seconds`` of the rest."""
        with self._lock:
            self._end_of_input = True
            self._reading = False
            self._lock.notify_all()
        if self._fed_bytes == 0:
            raise InvalidArgument("no compressed audio was received")
        return self._take()

    def close(self) -> None:
        """Stops the worker at once (it ends at its next read or frame)."""
        with self._lock:
            self._closed = True
            self._input.clear()
            self._output, self._output_samples = [], 0
            self._lock.notify_all()


def _check_rate(rate: int) -> None:
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise InvalidArgument(
            f"compressed audio has a sample rate of {rate} Hz, out of range "
            f"({MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz)"
        )
