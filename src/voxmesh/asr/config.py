"""Validation of client configs and requests: the same rules on every instance and the
router.

Every rejection is an :class:`~voxmesh.errors.InvalidArgument` or
:class:`~voxmesh.errors.NotFound` whose message names the field and value (a client that
sends nothing for the idle timeout: :class:`~voxmesh.errors.OutOfRange`).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

from voxmesh.asr.audio import (
    MAX_SAMPLE_RATE,
    MIN_SAMPLE_RATE,
    AudioDecoder,
    ContainerDecoder,
    Linear16Decoder,
)
from voxmesh.errors import InvalidArgument, NotFound, OutOfRange, ResourceExhausted
from voxmesh.stt.v1 import stt_pb2

__all__ = [
    "MAX_SAMPLE_RATE",
    "MIN_SAMPLE_RATE",
    "ValidatedConfig",
    "audio_chunk",
    "audio_content",
    "check_model",
    "idle_timeout_error",
    "idle_wait",
    "make_decoder",
    "serves_model",
    "validate_recognition_config",
    "validate_streaming_config",
]

T = TypeVar("T")

_STREAM_ID = re.compile(r"[\x21-\x7e]{1,128}")  # fullmatch: "$" would take a trailing newline
_LANGUAGE = re.compile(r"^[a-z]{2,3}$")
AUTO_MODELS = ("", "auto")


@dataclass(frozen=True)
class ValidatedConfig:
    """A config that passed validation."""

    model: str
    language: str | None
    encoding: int
    sample_rate: int
    word_offsets: bool
    realtime: bool
    interim_results: bool
    stream_id: str


def validate_recognition_config(
    config: stt_pb2.RecognitionConfig, *, interim_results: bool = False, stream_id: str = ""
) -> ValidatedConfig:
    """Checks encoding, sample rate, priority and language syntax."""
    if config.encoding == stt_pb2.AUDIO_ENCODING_UNSPECIFIED:
        raise InvalidArgument("config.encoding is required (AUDIO_ENCODING_LINEAR16 or _CONTAINER)")
    if config.encoding not in (stt_pb2.AUDIO_ENCODING_LINEAR16, stt_pb2.AUDIO_ENCODING_CONTAINER):
        raise InvalidArgument(f"config.encoding {config.encoding} is not supported")
    rate = config.sample_rate_hertz
    if config.encoding == stt_pb2.AUDIO_ENCODING_LINEAR16 and not (
        MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE
    ):
        raise InvalidArgument(
            f"config.sample_rate_hertz {rate} is out of range "
            f"[{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}] for LINEAR16"
        )
    if config.priority == stt_pb2.PRIORITY_UNSPECIFIED:
        raise InvalidArgument("config.priority is required (PRIORITY_REALTIME or PRIORITY_BATCH)")
    if config.priority not in (stt_pb2.PRIORITY_REALTIME, stt_pb2.PRIORITY_BATCH):
        raise InvalidArgument(f"config.priority {config.priority} is not supported")
    language = config.language_code.strip().lower() or None
    if language is not None and not _LANGUAGE.match(language):
        raise InvalidArgument(
            f"config.language_code {config.language_code!r} is not an ISO 639-1 code"
        )
    if stream_id and not _STREAM_ID.fullmatch(stream_id):
        raise InvalidArgument("stream_id must be 1-128 printable ASCII characters without spaces")
    return ValidatedConfig(
        model=config.model.strip(),
        language=language,
        encoding=config.encoding,
        sample_rate=rate,
        word_offsets=config.enable_word_time_offsets,
        realtime=config.priority == stt_pb2.PRIORITY_REALTIME,
        interim_results=interim_results,
        stream_id=stream_id or uuid.uuid4().hex[:16],
    )


def validate_streaming_config(config: stt_pb2.StreamingRecognitionConfig) -> ValidatedConfig:
    """Validates the first message of a stream."""
    if not config.HasField("config"):
        raise InvalidArgument("streaming_config.config is required")
    return validate_recognition_config(
        config.config, interim_results=config.interim_results, stream_id=config.stream_id
    )


def serves_model(requested: str, *, pool: str, model: str) -> bool:
    """Whether an instance of ``pool`` serving ``model`` takes the requested name."""
    return requested in AUTO_MODELS or requested in (pool, model)


def check_model(requested: str, *, pool: str, model: str) -> None:
    """Raises NOT_FOUND unless this instance serves ``requested``."""
    if not serves_model(requested, pool=pool, model=model):
        raise NotFound(
            f"model {requested!r} is not served here (this instance serves pool {pool!r}, "
            f"model {model!r})"
        )


def audio_content(request: stt_pb2.StreamingRecognizeRequest) -> bytes:
    """The audio of a request after the first; rejects a second config and a request
    that carries neither (the instances and the router answer both alike)."""
    kind = request.WhichOneof("streaming_request")
    if kind == "streaming_config":
        raise InvalidArgument("a stream carries exactly one streaming_config, as its first request")
    if kind is None:
        raise InvalidArgument(
            "a request carries neither streaming_config nor audio_content: every request "
            "after the first carries audio_content"
        )
    return request.audio_content


def idle_timeout_error(timeout_s: float, waiting_for: str) -> OutOfRange:
    """The error of a client that sent no ``waiting_for`` (``"streaming_config"``,
    ``"audio"``) for ``timeout_s`` seconds: what :func:`idle_wait` raises, and what the
    router's control plane answers when its native data path reports such a stall."""
    return OutOfRange(
        f"no {waiting_for} received for {timeout_s:g} s: send audio close to real time, "
        "and half-close the stream at its end"
    )


def unread_error(timeout_s: float) -> OutOfRange:
    """The error of a client that took no response for ``timeout_s`` seconds (it stopped
    reading): how an instance and the router's two data paths end its stream."""
    return OutOfRange(f"no result was read for {timeout_s:g} s: read the results as they come")


async def idle_wait(message: Awaitable[T], timeout_s: float, waiting_for: str) -> T:
    """Awaits the client's next ``message`` (or what it brings) for at most ``timeout_s``;
    OUT_OF_RANGE beyond. A client that stalls, or vanished without a reset, must not hold
    a stream (nor hold up a drain) forever; instances and the router answer it alike."""
    try:
        async with asyncio.timeout(timeout_s):
            return await message
    except TimeoutError:
        raise idle_timeout_error(timeout_s, waiting_for) from None


def audio_chunk(
    request: stt_pb2.StreamingRecognizeRequest, max_chunk_bytes: int, retry_after: float
) -> bytes:
    """The audio of a request after the first; rejects what :func:`audio_content` does and
    oversized chunks."""
    data = audio_content(request)
    if len(data) > max_chunk_bytes:
        raise ResourceExhausted(
            f"audio chunk of {len(data)} bytes exceeds the maximum chunk size of "
            f"{max_chunk_bytes} bytes",
            retry_after,
        )
    return data


def make_decoder(config: ValidatedConfig) -> AudioDecoder:
    """The audio decoder for a validated config."""
    if config.encoding == stt_pb2.AUDIO_ENCODING_CONTAINER:
        return ContainerDecoder()
    return Linear16Decoder(config.sample_rate)
