"""From a stream's config to a pool: validation and model/pool resolution.

Configs are checked with the instances' own rules
(:mod:`voxmesh.asr.config`), and audio chunks with the same limits, so a bad
stream gets the same status through the router as from an instance, and is
refused before it takes a queue slot.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from voxmesh.asr.config import validate_streaming_config
from voxmesh.errors import InvalidArgument, NotFound, ResourceExhausted
from voxmesh.stt.v1 import stt_pb2

__all__ = ["AUTO_MODEL", "PoolResolver", "Route", "check_chunk", "no_audio_error"]

AUTO_MODEL = "auto"


@dataclass(frozen=True)
class Route:
    """Where a validated stream goes and what the relay must know about it."""

    pool: str
    """The pool that serves it."""
    realtime: bool
    """True for realtime priority."""
    linear16: bool
    """True for LINEAR16 (cuttable by byte offset), False for a container."""
    sample_rate: int
    """LINEAR16 sample rate in hertz (0 for containers)."""
    stream_id: str
    """The client's stream id, or one generated here."""


def check_chunk(size: int, linear16: bool, max_chunk_bytes: int) -> None:
    """Raises for an audio chunk of ``size`` bytes an instance would refuse (too
    large, odd PCM)."""
    if size > max_chunk_bytes:
        raise ResourceExhausted(
            f"audio chunk of {size} bytes exceeds the maximum chunk size "
            f"of {max_chunk_bytes} bytes",
            retry_after=0.0,
        )
    if linear16 and size % 2:
        raise InvalidArgument(
            f"LINEAR16 audio chunk has an odd length ({size} bytes): "
            "chunks must hold whole 16-bit samples"
        )


def no_audio_error() -> InvalidArgument:
    """The error of a stream whose client half-closed without sending any audio."""
    return InvalidArgument("empty stream: no audio was sent after the config")


class PoolResolver:
    """Maps a requested model (pool name, model name or ``auto``) to a pool.

    ``auto`` (or an empty model) follows the configured policy:

    * ``priority``: realtime streams go to ``realtime_pool``, batch streams to
      ``batch_pool``;
    * ``language``: the pool of the stream's language in ``language_pools``
      (exact code, then its primary subtag, then ``*``), else as ``priority``.
    """

    def __init__(
        self,
        *,
        pools: Collection[str],
        aliases: Mapping[str, str],
        policy: str,
        realtime_pool: str,
        batch_pool: str,
        language_pools: Mapping[str, str],
    ) -> None:
        self._pools = frozenset(pools)
        self._aliases = dict(aliases)
        self._policy = policy
        self._realtime_pool = realtime_pool
        self._batch_pool = batch_pool
        self._language_pools = {k.lower(): v for k, v in language_pools.items()}

    def auto_pool(self, realtime: bool, language_code: str) -> str:
        """The pool the ``auto`` policy picks."""
        if self._policy == "language":
            lang = language_code.lower()
            for key in (lang, lang.split("-")[0], "*"):
                if key and key in self._language_pools:
                    return self._language_pools[key]
        return self._realtime_pool if realtime else self._batch_pool

    def resolve(self, config: stt_pb2.RecognitionConfig, served_models: Mapping[str, str]) -> str:
        """The pool for ``config``; ``served_models`` maps discovered model -> pool."""
        model = config.model.strip()
        if model in ("", AUTO_MODEL):
            return self.auto_pool(
                config.priority == stt_pb2.PRIORITY_REALTIME, config.language_code
            )
        if model in self._pools:
            return model
        pool = self._aliases.get(model) or served_models.get(model)
        if pool is None or pool not in self._pools:
            raise NotFound(
                f"model {model!r} is not served: use a pool ({', '.join(sorted(self._pools))}), "
                f"a model a pool serves, or {AUTO_MODEL!r}"
            )
        return pool

    def route(
        self, config: stt_pb2.StreamingRecognitionConfig, served_models: Mapping[str, str]
    ) -> Route:
        """Validates ``config`` and returns its route (raises on a bad config)."""
        valid = validate_streaming_config(config)
        linear16 = valid.encoding == stt_pb2.AUDIO_ENCODING_LINEAR16
        return Route(
            pool=self.resolve(config.config, served_models),
            realtime=valid.realtime,
            linear16=linear16,
            sample_rate=valid.sample_rate if linear16 else 0,
            stream_id=valid.stream_id,
        )

    def open_stream(
        self,
        first: stt_pb2.StreamingRecognizeRequest | None,
        served_models: Mapping[str, str],
    ) -> tuple[Route, stt_pb2.StreamingRecognizeRequest]:
        """Checks a stream's ``first`` request (None: the client sent none) and returns
        its route and the request that opens it on an instance: the config with the
        pool as its model and the stream id filled in. Raises on a bad first request."""
        if first is None:
            raise InvalidArgument("empty stream: the first request must carry streaming_config")
        if first.WhichOneof("streaming_request") != "streaming_config":
            raise InvalidArgument(
                "audio before config: the first request must carry streaming_config"
            )
        route = self.route(first.streaming_config, served_models)
        forwarded = stt_pb2.StreamingRecognizeRequest()
        forwarded.CopyFrom(first)
        forwarded.streaming_config.config.model = route.pool
        forwarded.streaming_config.stream_id = route.stream_id
        return route, forwarded
