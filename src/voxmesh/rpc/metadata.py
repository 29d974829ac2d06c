"""Request metadata keys the router and the ASR instances exchange (one definition).

A client never sets these; the router adds them to the streams it opens on
instances:

* ``voxmesh-offset-ms: N``: a failed-over LINEAR16 stream; its first audio byte is
  at stream time N ms, so every offset is shifted by N.
* ``voxmesh-skip-ms: N``: a failed-over compressed stream, replayed from its
  start; the first N ms of decoded audio were already recognised: skip them.
* ``voxmesh-context-bin``: a failed-over stream whose replay starts with audio
  that is context only (:class:`ReplayContext`, JSON): the earlier final
  utterances a decode hears in front of the next one, as on the instance that
  failed. The instance decodes none of it as an utterance of its own. The
  replay starts at ``voxmesh-offset-ms`` (LINEAR16) or, for a container, after
  the ``voxmesh-skip-ms`` discarded (then the start of the lead-in, not its end).
* ``voxmesh-last-resort: 1``: no accepting instance of the pool had room, so a
  router with its (opt-in) last resort on sends the stream to a draining one; it
  takes it while its drain has long enough left
  (``TelemetrySnapshot.drain_remaining``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeGuard

from voxmesh.errors import InvalidArgument

__all__ = [
    "CONTEXT_KEY",
    "LAST_RESORT_KEY",
    "MAX_CONTEXT_FINALS",
    "MAX_STREAM_MS",
    "OFFSET_KEY",
    "PROMPT_WORDS",
    "SKIP_KEY",
    "ReplayContext",
    "extend_prompt",
    "last_resort_asked",
    "replay_context_of",
    "value_of",
]

OFFSET_KEY = "voxmesh-offset-ms"
SKIP_KEY = "voxmesh-skip-ms"
LAST_RESORT_KEY = "voxmesh-last-resort"
CONTEXT_KEY = "voxmesh-context-bin"

MAX_STREAM_MS = 10**11
"""Largest stream time in milliseconds any of these values may carry (some three years):
more is not a stream time, and would overflow the offsets' ``Duration`` (and a float
conversion, for integers of hundreds of digits that JSON allows)."""
MAX_CONTEXT_FINALS = 64
"""Most finals a lead-in may name (a router keeps the latest)."""
PROMPT_WORDS = 40
"""Most words of earlier text a decode is prompted with: the text of the finals too old
to be context (an instance keeps as many, and a lead-in carries as many)."""
_MAX_PROMPT_CHARS = 4096


@dataclass(frozen=True)
class ReplayContext:
    """The start of a replay that is context only.

    The first ``lead_in_ms`` of the replayed audio (which starts at the stream time
    ``voxmesh-offset-ms`` names, or after the ``voxmesh-skip-ms`` a container
    discards) were already recognised; ``finals`` are the final
    utterances within it, as ``(start_ms, end_ms, text)`` in stream time.
    """

    lead_in_ms: int
    finals: tuple[tuple[int, int, str], ...]
    prompt: str = ""
    """The text of the stream's finals before the lead-in (their last ``PROMPT_WORDS``
    words): the prompt the instance that failed decoded with."""

    def encode(self) -> bytes:
        """The metadata value (UTF-8 JSON)."""
        body: dict[str, object] = {
            "lead_in_ms": self.lead_in_ms,
            "finals": [list(f) for f in self.finals],
        }
        if self.prompt:
            body["prompt"] = self.prompt
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> ReplayContext:
        """Parses a metadata value; ValueError says what is wrong with it."""
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as err:
            raise ValueError(f"{CONTEXT_KEY} is not JSON: {err}") from None
        lead_in = body.get("lead_in_ms") if isinstance(body, dict) else None
        finals = body.get("finals") if isinstance(body, dict) else None
        if not _is_count(lead_in) or not isinstance(finals, list):
            raise ValueError(
                f"{CONTEXT_KEY} needs lead_in_ms (an integer from 0 to {MAX_STREAM_MS}) and finals"
            )
        if len(finals) > MAX_CONTEXT_FINALS:
            raise ValueError(f"{CONTEXT_KEY} has more than {MAX_CONTEXT_FINALS} finals")
        parsed = []
        for final in finals:
            if not _is_final(final):
                raise ValueError(
                    f"{CONTEXT_KEY}: a final is [start_ms, end_ms >= start_ms, text] with times "
                    f"up to {MAX_STREAM_MS} ms, not {final!r:.80}"
                )
            parsed.append((final[0], final[1], final[2]))
        prompt = body.get("prompt", "")
        if not isinstance(prompt, str) or len(prompt) > _MAX_PROMPT_CHARS:
            raise ValueError(f"{CONTEXT_KEY}: prompt is text of at most {_MAX_PROMPT_CHARS} chars")
        return cls(lead_in_ms=lead_in, finals=tuple(parsed), prompt=prompt)


def extend_prompt(prompt: str, texts: Iterable[str]) -> str:
    """``prompt`` followed by ``texts`` (finals leaving the context, oldest first), cut to
    its last ``PROMPT_WORDS`` words: the one shape of a decode's prompt, kept alike by an
    instance and by a router carrying it to another instance."""
    words = " ".join([prompt, *texts]).split()
    return " ".join(words[-PROMPT_WORDS:])


def _is_count(value: object) -> TypeGuard[int]:
    """An integer stream time in milliseconds: 0 to :data:`MAX_STREAM_MS`."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_STREAM_MS


def _is_final(value: object) -> TypeGuard[list[Any]]:
    return (
        isinstance(value, list)
        and len(value) == 3
        and _is_count(value[0])
        and _is_count(value[1])
        and value[1] >= value[0]
        and isinstance(value[2], str)
    )


def value_of(metadata: Iterable[tuple[str, str | bytes]] | None, key: str) -> str | None:
    """The value of ``key`` in gRPC invocation metadata (text), or None."""
    for k, v in metadata or ():
        if k == key:
            return v if isinstance(v, str) else v.decode()
    return None


def replay_context_of(metadata: Iterable[tuple[str, str | bytes]] | None) -> ReplayContext | None:
    """The lead-in a router sent with a failed-over stream, or None; INVALID_ARGUMENT
    (:class:`~voxmesh.errors.InvalidArgument`) when it is malformed."""
    for k, v in metadata or ():
        if k == CONTEXT_KEY:
            try:
                return ReplayContext.decode(v if isinstance(v, bytes) else v.encode())
            except ValueError as err:
                raise InvalidArgument(f"metadata {err}") from None
    return None


def last_resort_asked(metadata: Iterable[tuple[str, str | bytes]] | None) -> bool:
    """True when a router sent this stream to a draining instance as a last resort."""
    return value_of(metadata, LAST_RESORT_KEY) == "1"
