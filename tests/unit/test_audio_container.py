"""Compressed audio: :class:`~voxmesh.asr.audio.ContainerDecoder` on containers
encoded here with PyAV, and the servicer's use of it.

No sockets and no model: the servicer tests run on the fake model and VAD of
:mod:`tests.unit.test_asr_unary_and_end`. A test that must catch the decoder's
worker inside a frame (as on a loaded machine) holds it there with a
:class:`Gate` on its resampler. No decoder's worker thread outlives its test.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import logging
import os
import struct
import subprocess
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any, cast

import av
import grpc
import numpy as np
import pytest

from tests.conditions import wait_until, wait_until_async
from tests.streaming import config_request
from tests.unit.test_asr_unary_and_end import SMALL_ROOM, FakeContext, recognizer
from voxmesh.asr import audio
from voxmesh.asr.audio import MODEL_SAMPLE_RATE, ContainerDecoder, Samples
from voxmesh.asr.session import SessionOptions
from voxmesh.client.audio import decode_file
from voxmesh.errors import InvalidArgument
from voxmesh.stt.v1 import stt_pb2

SR = MODEL_SAMPLE_RATE
WORKER = "voxmesh-container-decoder"
CONTAINER = stt_pb2.AUDIO_ENCODING_CONTAINER
Req = stt_pb2.StreamingRecognizeRequest


def tone(seconds: float, rate: int) -> Samples:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def pcm16(samples: Samples) -> bytes:
    return (samples * 32767).astype("<i2").tobytes()


def encode(
    fmt: str,
    codec: str,
    samples: Samples,
    rate: int,
    *,
    bit_rate: int = 0,
    options: dict[str, str] | None = None,
) -> bytes:
    """``samples`` (mono, ``rate`` Hz) encoded with ``codec`` in a ``fmt`` container."""
    out = io.BytesIO()
    with av.open(out, "w", format=fmt, options=options or {}) as container:
        stream = cast(av.AudioStream, container.add_stream(codec, rate=rate))
        stream.layout = "mono"
        if bit_rate:
            stream.bit_rate = bit_rate
        for i in range(0, len(samples), 960):
            frame = av.AudioFrame.from_ndarray(samples[None, i : i + 960], "flt", "mono")
            frame.sample_rate = rate
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return out.getvalue()


def wav(rate: int, pcm: bytes, *, bits: int = 16) -> bytes:
    """16-bit mono PCM behind a WAV header that declares ``rate`` Hz and ``bits`` per
    sample, whatever they are."""
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, rate, 2 * rate, 2, bits)
    body = b"WAVEfmt " + fmt + b"data" + struct.pack("<I", len(pcm)) + pcm
    return b"RIFF" + struct.pack("<I", len(body)) + body


FORMATS: dict[str, tuple[str, str, int, int, dict[str, str]]] = {
    # name: (container, codec, rate, bit rate, muxer options)
    "wav": ("wav", "pcm_s16le", 48000, 0, {}),
    # Streaming encoders (browsers, gateways) send short Ogg pages; FFmpeg's are 1 s.
    "ogg-opus": ("ogg", "libopus", 48000, 12000, {"page_duration": "100000"}),
    "webm-opus": ("webm", "libopus", 48000, 16000, {}),
    "mp3": ("mp3", "libmp3lame", 16000, 24000, {}),
    "flac": ("flac", "flac", 16000, 0, {}),
}


def encoded(name: str, seconds: float) -> bytes:
    fmt, codec, rate, bit_rate, options = FORMATS[name]
    return encode(fmt, codec, tone(seconds, rate), rate, bit_rate=bit_rate, options=options)


def split(data: bytes, sizes: Iterable[int]) -> Iterator[bytes]:
    """``data`` in chunks of ``sizes`` (cycled), the last one what is left."""
    start = 0
    for size in itertools.cycle(sizes):
        if start >= len(data):
            return
        yield data[start : start + size]
        start += size


def drain(decoder: ContainerDecoder) -> list[Samples]:
    """The pieces the decoder has left from the input given so far."""
    pieces = []
    while decoder.pending:
        pieces.append(decoder.more())
    return pieces


def decode(chunks: Iterable[bytes]) -> Samples:
    """A stream of ``chunks`` decoded, as the servicer does it."""
    decoder = ContainerDecoder()
    try:
        pieces: list[Samples] = []
        for chunk in chunks:
            pieces += [decoder.feed(chunk), *drain(decoder)]
        pieces += [decoder.finish(), *drain(decoder)]
        return np.concatenate(pieces)
    finally:
        decoder.close()


def workers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == WORKER]


@pytest.fixture(autouse=True)
def no_worker_left() -> Iterator[None]:
    """Every decoder a test made is closed or finished, and its worker ends."""
    yield
    wait_until(lambda: not workers(), timeout=10)


class Gate:
    """Once ``armed``, holds the decoder's worker in its next frame until ``opened``;
    ``entered`` tells that it is held, ``pushes`` counts the frames it let through."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.armed = threading.Event()
        self.entered = threading.Event()
        self.opened = threading.Event()
        self.pushes = 0
        original = audio._Resampler.push

        def push(resampler: audio._Resampler, frame: av.AudioFrame | None) -> Samples:
            if self.armed.is_set():
                self.entered.set()
                self.opened.wait(30)  # bounded, should a failing test never open it
                self.pushes += 1
            return original(resampler, frame)

        monkeypatch.setattr(audio._Resampler, "push", push)


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    held = Gate(monkeypatch)
    yield held
    held.opened.set()


# The sample rate, and memory.


@pytest.mark.parametrize("rate", [1, 4000, 96000, 2_000_000_000])
def test_a_container_sample_rate_out_of_range_is_invalid(rate: int) -> None:
    """A WAV header declaring 1 Hz was taken and resampled to 16 kHz: 2 KB of audio
    became 16 million samples (a 1 MiB chunk some 33 GB)."""
    decoder = ContainerDecoder()
    try:
        with pytest.raises(InvalidArgument, match=f"sample rate of {rate} Hz, out of range"):
            decoder.feed(wav(rate, bytes(2000)))
            decoder.finish()
    finally:
        decoder.close()


@pytest.mark.parametrize("rate", [8000, 48000])
def test_a_container_at_a_supported_rate_is_resampled(rate: int) -> None:
    samples = decode([wav(rate, pcm16(tone(1.0, rate)))])
    assert abs(len(samples) - SR) < 32


def ogg_page(serial: int, sequence: int, packet: bytes, flags: int = 0) -> bytes:
    """An Ogg page of logical stream ``serial`` holding one ``packet`` (under 255 bytes)."""
    header = struct.pack("<4sBBqIIIB", b"OggS", 0, flags, 0, serial, sequence, 0, 1)
    page = header + bytes([len(packet)]) + packet
    crc = 0  # Ogg's CRC-32 (0x04C11DB7, unreflected) of the page with its CRC field 0
    for byte in page:
        crc ^= byte << 24
        for _ in range(8):  # the 1 << 32 of 0x104C11DB7 clears the bit shifted out
            crc = (crc << 1) ^ 0x104C11DB7 if crc & 0x80000000 else crc << 1
    return page[:22] + struct.pack("<I", crc) + page[26:]


def ogg_opus_streams(count: int) -> bytes:
    """An Ogg file of ``count`` logical Opus streams, multiplexed (``count`` start
    pages first, as the format has it), each with its tags and a packet of silence."""
    head = b"OpusHead" + struct.pack("<BBHIhB", 1, 1, 312, 48000, 0, 0)
    tags = b"OpusTags" + struct.pack("<II", 0, 0)
    packets = [(head, 0x02), (tags, 0), (b"\xf8\xff\xfe", 0)]
    return b"".join(
        ogg_page(serial, sequence, packet, flags)
        for sequence, (packet, flags) in enumerate(packets)
        for serial in range(count)
    )


def matroska_tracks(count: int) -> bytes:
    """A Matroska file of ``count`` tracks of 1 s of FLAC (16 kHz mono) each."""
    out = io.BytesIO()
    samples = tone(1.0, 16000)
    with av.open(out, "w", format="matroska") as container:
        streams = [container.add_stream("flac", rate=16000) for _ in range(count)]
        for stream in streams:
            stream.layout = "mono"
        for i in range(0, len(samples), 960):
            for stream in streams:
                frame = av.AudioFrame.from_ndarray(samples[None, i : i + 960], "flt", "mono")
                frame.sample_rate = 16000
                frame.pts = i
                container.mux(stream.encode(frame))
        for stream in streams:
            container.mux(stream.encode(None))
    return out.getvalue()


def resident() -> int:
    """The bytes of this process in memory (FFmpeg's allocations too, which
    tracemalloc does not see)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads Linux's /proc")
def test_a_container_of_many_streams_is_invalid_as_it_opens() -> None:
    """FFmpeg made a stream of each of up to 1000 Ogg start pages and opened a
    decoder for each as it probed them: 1000 (122 KB of input here) held some 230 MB
    for as long as the stream lasted. The container is refused as it opens."""
    assert len(decode([ogg_opus_streams(8)])) > 0  # up to 8 are taken
    data = ogg_opus_streams(1000)
    decoder = ContainerDecoder()
    before = resident()
    error = None
    try:
        try:
            decoder.feed(data)
            drain(decoder)
        except InvalidArgument as err:
            error = str(err)
        grown = resident() - before
    finally:
        decoder.close()
    assert grown < 64 << 20, f"{grown >> 20} MiB held"
    assert error is not None
    assert error.startswith("malformed compressed audio: more than 8 streams"), error


def test_a_container_just_past_the_streams_bound_is_invalid_not_cut_short() -> None:
    """FFmpeg drops the Matroska tracks past its bound, then gives up on the blocks
    of the dropped ones: a file of 9 tracks, cut at 8, decoded the first 0.07 s of
    its first track as if that were all."""
    assert len(decode([matroska_tracks(8)])) == SR
    with pytest.raises(InvalidArgument, match=r"more than 8 streams in the container$"):
        decode([matroska_tracks(9)])


@pytest.mark.parametrize("bits", [0, 65535])
def test_a_container_codec_without_a_decoder_is_invalid(
    bits: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A WAV header of 0 bits per sample declares a codec FFmpeg has no decoder for:
    reading the stream's sample rate raised ``AttributeError``, logged with its
    traceback (at ERROR, on every such request) and told to the client."""
    decoder = ContainerDecoder()
    try:
        with (
            caplog.at_level(logging.ERROR),
            pytest.raises(InvalidArgument, match="unsupported codec") as raised,
        ):
            decoder.feed(wav(16000, bytes(2000), bits=bits))
            decoder.finish()
    finally:
        decoder.close()
    assert "AttributeError" not in str(raised.value)
    assert not caplog.records


def joined_mp3(tmp_path: Path) -> bytes:
    """Two MP3s joined (``cat a.mp3 b.mp3``), made with sox: 1 s of mono at 44.1 kHz,
    then 1 s of stereo at 22.05 kHz."""
    parts = []
    for rate, channels in ((44100, 1), (22050, 2)):
        path = tmp_path / f"part-{rate}.mp3"
        subprocess.run(
            [
                "sox",
                "-n",
                "-r",
                str(rate),
                "-c",
                str(channels),
                str(path),
                "synth",
                "1",
                "sine",
                "440",
            ],
            check=True,
        )
        parts.append(path.read_bytes())
    return b"".join(parts)


def test_a_sample_rate_that_changes_midway_is_followed(tmp_path: Path) -> None:
    """The resampler took its rate and layout from the first frame and refused the
    first frame with others (``ValueError``): the stream failed as malformed."""
    samples = decode([joined_mp3(tmp_path)])
    assert 2 * SR <= len(samples) < 2.2 * SR  # MP3 pads each part with some silence


def test_the_client_decodes_a_file_whose_rate_changes_midway(tmp_path: Path) -> None:
    """``voxmesh transcribe`` on such a file ended in a traceback."""
    path = tmp_path / "joined.mp3"
    path.write_bytes(joined_mp3(tmp_path))
    pcm = decode_file(path)
    assert 2 * SR <= len(pcm) // 2 < 2.2 * SR


@pytest.mark.parametrize("name", ["mp3", "ogg-opus", "flac"])
def test_a_damaged_packet_mid_stream_is_skipped_not_the_whole_stream(name: str) -> None:
    """64 bytes lost in the middle of 6 s: the MP3 decoder refused that packet, which
    failed the stream as malformed, with everything sent before it."""
    data = encoded(name, 6.0)
    mid = len(data) // 2
    damaged = data[:mid] + bytes(64) + data[mid + 64 :]
    assert len(decode(split(damaged, [3200]))) > 5.5 * SR


def test_two_mp3_files_joined_decode_whole() -> None:
    """The second file's ID3 tag in mid-stream is a packet the decoder refuses."""
    one = encoded("mp3", 3.0)
    assert len(decode(split(one + one, [3200]))) > 5.5 * SR


def test_compressed_silence_is_decoded_in_bounded_pieces() -> None:
    """Ten minutes of FLAC silence fit in some 110 KB (a 1 MiB chunk: hours): it
    comes out ten seconds at a time, the next decoded only once one was taken,
    rather than all at once."""
    flac = encode("flac", "flac", np.zeros(600 * 8000, np.float32), 8000)
    decoder = ContainerDecoder(max_output_seconds=10.0)
    tracemalloc.start()
    try:
        sizes = [len(decoder.feed(flac)), len(decoder.finish())]
        while decoder.pending:
            sizes.append(len(decoder.more()))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        decoder.close()
    assert peak < 8 << 20, f"{peak >> 20} MiB at once"  # all of it: 38 MiB of samples
    assert max(sizes) <= 11 * SR
    assert abs(sum(sizes) - 600 * SR) < SR // 10


class RecordingContext(FakeContext):
    """Records the status an RPC ends with, and ends it like grpc.aio does."""

    status: grpc.Status | None = None

    async def abort_with_status(self, status: grpc.Status) -> None:
        self.status = status
        raise grpc.aio.AbortError()


async def test_a_stream_past_its_length_limit_ends_while_its_chunk_decodes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One chunk of ten minutes of compressed silence, on an instance that takes a
    minute: OUT_OF_RANGE once a minute has decoded, not after all ten are in memory."""
    flac = encode("flac", "flac", np.zeros(600 * 8000, np.float32), 8000)

    async def requests() -> AsyncIterator[Req]:
        yield config_request(0, encoding=CONTAINER)
        yield Req(audio_content=flac)

    context = RecordingContext()
    options = SessionOptions(context=0.0, max_utterance=5.0, max_stream=60.0)
    async with recognizer(monkeypatch, options) as (servicer, _):
        tracemalloc.start()
        try:
            with pytest.raises(grpc.aio.AbortError):
                async with asyncio.timeout(30):
                    async for _ in servicer.StreamingRecognize(requests(), cast(Any, context)):
                        pass
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert context.status is not None
    assert context.status.code == grpc.StatusCode.OUT_OF_RANGE, context.status.details
    assert peak < 16 << 20, f"{peak >> 20} MiB at once"


def test_an_unexpected_failure_of_the_worker_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only FFmpeg, value and OS errors were kept: any other ended the worker with no
    error, ``finish`` returned the audio so far as if complete, and ``feed`` blocked
    for ever once 64 chunks waited for the dead worker."""
    original = audio._Resampler.push
    frames = 0

    def push(resampler: audio._Resampler, frame: av.AudioFrame | None) -> Samples:
        nonlocal frames
        frames += 1
        if frames == 3:
            raise RuntimeError("a bug")
        return original(resampler, frame)

    monkeypatch.setattr(audio._Resampler, "push", push)
    decoder = ContainerDecoder()
    raised: list[InvalidArgument] = []

    def feed_all() -> None:
        for chunk in split(wav(16000, pcm16(tone(5.0, 16000))), [512]):  # 313 chunks
            try:
                decoder.feed(chunk)
            except InvalidArgument as err:
                raised.append(err)
                return

    feeder = threading.Thread(target=feed_all, daemon=True)
    feeder.start()
    try:
        wait_until(lambda: not feeder.is_alive(), timeout=10)
        assert raised, "every chunk was taken"
        assert "could not be decoded (RuntimeError: a bug)" in str(raised[0])
        with pytest.raises(InvalidArgument, match="RuntimeError: a bug"):
            decoder.finish()
    finally:
        decoder.close()


# Closing and finishing.


def test_close_is_immediate_and_stops_the_worker(gate: Gate) -> None:
    """``close`` queued the end behind the chunks waiting and joined the worker for
    up to 5 s (on the event loop, stalling every stream of the instance); the
    worker then decoded whatever was left."""
    decoder = ContainerDecoder()
    gate.armed.set()
    feeder = threading.Thread(target=decoder.feed, args=(wav(16000, pcm16(tone(10.0, SR))),))
    feeder.start()
    wait_until(gate.entered.is_set)
    started = time.monotonic()
    decoder.close()
    assert time.monotonic() - started < 1.0
    wait_until(lambda: not feeder.is_alive())  # a feed waiting for the worker returns
    gate.opened.set()
    wait_until(lambda: not workers())
    assert gate.pushes == 1, "the worker went on decoding after close"


def test_finish_waits_for_a_slow_worker(gate: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
    """``finish`` joined the worker for at most 30 s, then returned what it had as
    the whole audio. The join here expires at once, as it would under load."""
    original_join = threading.Thread.join

    def join(thread: threading.Thread, timeout: float | None = None) -> None:
        if thread.name != WORKER:
            original_join(thread, timeout)

    monkeypatch.setattr(threading.Thread, "join", join)
    data = encoded("ogg-opus", 10.0)
    expected = len(decode([data]))
    decoder = ContainerDecoder()
    pieces: list[Samples] = []

    def finish() -> None:
        pieces.append(decoder.feed(data))
        gate.armed.set()  # from here each frame waits, as on a loaded machine
        pieces.append(decoder.finish())
        pieces.extend(drain(decoder))

    finisher = threading.Thread(target=finish)
    finisher.start()
    try:
        wait_until(gate.entered.is_set)
        gate.opened.set()
        wait_until(lambda: not finisher.is_alive())
    finally:
        decoder.close()
    assert sum(len(p) for p in pieces) == expected > 9 * SR


async def test_ending_a_container_stream_does_not_block_the_event_loop(
    gate: Gate, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client cancels while the worker is busy: the stream's end closed the
    decoder on the event loop, which waited up to 5 s for the worker."""
    data = wav(16000, pcm16(tone(10.0, SR)))
    never = asyncio.Event()

    async def requests() -> AsyncIterator[Req]:
        yield config_request(0, encoding=CONTAINER)
        yield Req(audio_content=data)
        await never.wait()  # the client keeps the stream open

    async with recognizer(monkeypatch, SMALL_ROOM) as (servicer, _):

        async def consume() -> None:
            async for _ in servicer.StreamingRecognize(requests(), cast(Any, FakeContext())):
                pass

        gate.armed.set()
        stream = asyncio.create_task(consume())
        await wait_until_async(gate.entered.is_set)
        started = time.monotonic()
        stream.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stream
        assert time.monotonic() - started < 1.0
        gate.opened.set()
        await wait_until_async(lambda: not workers())


# Decoding as the audio arrives.


@pytest.mark.parametrize("name", ["wav", "ogg-opus", "webm-opus"])
def test_audio_is_decoded_as_it_arrives(name: str) -> None:
    """Fed 20 ms at a time (an Opus chunk of 12 kbit/s is 30 bytes), the audio comes
    out within half a second once the container's header is in. Reads waited for
    the 32 KiB PyAV asks for (20 s of such Opus) and FFmpeg read 5 MB to learn the
    streams (over 4 s of 48 kHz WAV) before the first frame."""
    data = encoded(name, 6.0)
    decoder = ContainerDecoder()
    decoded = 0
    behind: list[float] = []
    try:
        step = len(data) / 300
        for k in range(300):
            chunk = data[int(k * step) : int((k + 1) * step)]
            decoded += sum(len(p) for p in [decoder.feed(chunk), *drain(decoder)])
            behind.append((k + 1) * 0.02 - decoded / SR)
    finally:
        decoder.close()
    assert max(behind[75:]) < 0.5, f"{max(behind[75:]):.2f} s behind after 1.5 s"


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_a_container_in_small_chunks_decodes_as_it_does_whole(name: str) -> None:
    data = encoded(name, 3.0)
    whole = decode([data])
    sizes = np.random.default_rng(7).integers(1, 200, size=97).tolist()
    assert np.array_equal(decode(split(data, sizes)), whole)
    assert abs(len(whole) - 3 * SR) < SR // 10
