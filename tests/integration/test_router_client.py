"""The Python client and the ``voxmesh`` CLI against the router (fake instances)."""

from __future__ import annotations

import asyncio
import time
import wave
from pathlib import Path

import grpc
import pytest

from tests.doubles.fake_asr import expected_finals
from tests.integration.router_harness import mesh, pcm
from tests.streaming import config_request, recognize_request, run_stream
from voxmesh.client import RecognizerClient, StreamOptions, decode_file
from voxmesh.client.cli import main
from voxmesh.errors import InvalidArgument
from voxmesh.stt.v1 import stt_pb2, stt_pb2_grpc

pytestmark = pytest.mark.usefixtures("router_data_path")


def write_wav(path: Path, data: bytes, rate: int) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(data)
    return path


async def test_client_streams_and_collects_results() -> None:
    async with mesh() as m:
        await m.add("a")
        audio = pcm(2.5, 3)
        progress: list[float] = []
        async with RecognizerClient(m.router.target) as client:
            transcript = await client.transcribe_pcm(
                audio, 16000, StreamOptions(speed=0, stream_id="mine"), on_progress=progress.append
            )
            unary = await client.recognize(
                audio, 16000, StreamOptions(priority=stt_pb2.PRIORITY_REALTIME)
            )
            snapshot = await client.telemetry()
        assert transcript.text == " ".join(expected_finals(audio, 16000, 1000))
        assert transcript.interim_results > 0
        assert transcript.summary is not None and transcript.summary.stream_id == "mine"
        assert progress[-1] == pytest.approx(2.5)
        assert [r.alternatives[0].transcript for r in unary.results] == expected_finals(
            audio, 16000, 1000
        )
        assert snapshot.role == stt_pb2.ROLE_ROUTER


async def test_a_client_that_compresses_its_messages_is_served() -> None:
    """gRPC clients may compress with gzip; the native data path refused them
    (UNIMPLEMENTED) while the Python one and the instances served them."""
    async with mesh() as m:
        await m.add("a")
        audio = pcm(1.5, 3)
        async with grpc.aio.insecure_channel(
            m.router.target, compression=grpc.Compression.Gzip
        ) as channel:
            run = await run_stream(channel, audio, first=config_request(model="asr_small"))
            unary = await stt_pb2_grpc.RecognizerServiceStub(channel).Recognize(
                recognize_request(audio), timeout=10
            )
        assert run.error is None
        assert [r.alternatives[0].transcript for r in run.finals] == expected_finals(
            audio, 16000, 1000
        )
        assert [r.alternatives[0].transcript for r in unary.results] == expected_finals(
            audio, 16000, 1000
        )


async def test_a_writer_that_fails_ends_the_stream_with_its_error() -> None:
    """The reader never learnt of it: the call waited for audio that never came, until
    the server gave up (there was no deadline)."""

    def progress(seconds: float) -> None:
        raise ValueError("the progress display failed")

    async with mesh() as m:
        await m.add("a")
        async with RecognizerClient(m.router.target) as client:
            started = time.monotonic()
            with pytest.raises(ValueError, match="progress display failed"):
                async with asyncio.timeout(10):
                    await client.transcribe_pcm(
                        pcm(2.0, 4), 16000, StreamOptions(speed=0), on_progress=progress
                    )
            # Not only once the timeout cancelled the wait (the error then surfaced too).
            assert time.monotonic() - started < 5


async def test_cli_transcribes_a_file_and_shows_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    audio = pcm(2.2, 4)
    path = write_wav(tmp_path / "talk.wav", audio, 16000)
    async with mesh() as m:
        await m.add("a")
        target = m.router.target
        code = await asyncio.to_thread(
            main, ["transcribe", str(path), "--target", target, "--fast", "--model", "asr_small"]
        )
        assert code == 0
        out, err = capsys.readouterr()
        finals = expected_finals(audio, 16000, 1000)
        assert out.splitlines() == [
            "[00:00.0 - 00:01.0] " + finals[0],
            "[00:01.0 - 00:02.0] " + finals[1],
            "[00:02.0 - 00:02.2] " + finals[2],
        ]
        assert "3 final result(s)" in err and "served by a" in err
        assert await asyncio.to_thread(main, ["status", "--target", target]) == 0
        out, _ = capsys.readouterr()
        assert out.startswith("router ")
        assert any(line.startswith("asr_small") for line in out.splitlines())
        bad = await asyncio.to_thread(
            main, ["transcribe", str(path), "--target", target, "--model", "nope", "--fast"]
        )
        assert bad == 1
        assert "NOT_FOUND" in capsys.readouterr().err


def test_decode_file_resamples_and_rejects_garbage(tmp_path: Path) -> None:
    audio = pcm(1.0, 5)[: 8000 * 2]
    decoded = decode_file(write_wav(tmp_path / "8k.wav", audio, 8000))
    assert abs(len(decoded) - 2 * len(audio)) <= 64
    same = decode_file(write_wav(tmp_path / "16k.wav", audio, 16000))
    assert same == audio
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(b"not audio at all" * 100)
    with pytest.raises(InvalidArgument):
        decode_file(junk)
