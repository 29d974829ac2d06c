"""What failover needs, per stream: the audio to replay and the results already sent.

:class:`ReplayLog` keeps the audio of a stream from its resume point on and
is also the stream's send queue (a cursor marks what the current instance has
received). The resume point is the end of the last final result:

* LINEAR16 can be cut anywhere, so the log drops everything before the end
  of each final result; a new instance gets the rest with the metadata
  ``voxmesh-offset-ms: N`` ("your first byte is at stream time N ms").
  N is rounded down to a time that is both a whole millisecond and a whole
  sample (multiples of 10 ms at 44.1 kHz, 40 ms at 11.025 kHz, up to 1 s at an
  odd rate such as 11127 Hz); the audio between N and the final's end is a
  lead-in (below), so nothing already final is recognised again.
  With ``context_ms``, the log also keeps the final utterances of the last
  ``context_ms`` before the resume point (at most ``MAX_CONTEXT_FINALS``), and
  a new instance gets them in front (a lead-in, ``voxmesh-context-bin``:
  already final, context only): an instance decodes an utterance behind the
  audio of the earlier ones, and without it the first utterance after a
  failover is transcribed worse (``bench/asr_context.py``: 20.6% WER alone
  against 16.8% with it).
* A container cannot be cut, so the log keeps the whole stream; a new
  instance gets all of it with ``voxmesh-skip-ms: N`` ("decode from the start
  but discard the first N ms"). With ``context_ms`` it gets the same lead-in:
  N is then where the lead-in starts, and ``voxmesh-context-bin`` names it.

Past ``replay_max_bytes`` of kept audio the log drops what the instance has
already received; the stream is not replayable until a final result moves
the resume point past the dropped audio (a container never again).

:class:`ResultTracker` turns the responses of successive instances into one
consistent stream for the client: utterance indices continue, interim
results of utterances already final are dropped, a final is never sent twice,
a speech start (or end) already announced is not announced again, and the
summary counts the failovers and the finals the client actually got.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from google.protobuf import duration_pb2

from voxmesh.rpc.metadata import (
    CONTEXT_KEY,
    MAX_CONTEXT_FINALS,
    OFFSET_KEY,
    SKIP_KEY,
    ReplayContext,
    extend_prompt,
)
from voxmesh.stt.v1 import stt_pb2

__all__ = ["ReplayLog", "ResultTracker"]


@dataclass(frozen=True)
class _Entry:
    start: int
    request: stt_pb2.StreamingRecognizeRequest

    @property
    def end(self) -> int:
        return self.start + len(self.request.audio_content)


def duration_ms(d: duration_pb2.Duration) -> float:
    """A protobuf duration in milliseconds."""
    return d.seconds * 1000.0 + d.nanos / 1e6


class ReplayLog:
    """The audio of one stream from its resume point on, with a send cursor."""

    def __init__(
        self, linear16: bool, sample_rate: int, replay_max_bytes: int, context_ms: int = 0
    ) -> None:
        self._linear16 = linear16
        self._context_ms = context_ms
        # Finals in the last context_ms before the resume point: (start_ms, end_ms, text).
        self._finals: deque[tuple[int, int, str]] = deque()
        # The text of the finals before those: the decode's prompt.
        self._prompt = ""
        self._replay_from = 0
        self._rate = sample_rate
        self._bytes_per_second = 2 * sample_rate
        self._step_ms = 1000 // math.gcd(sample_rate, 1000) if linear16 else 1
        self._max_kept = replay_max_bytes
        self._entries: deque[_Entry] = deque()
        self._next = 0
        self._base = 0  # byte of the resume point: _end_ms rounded down to the grid
        self._end_ms = 0  # where the recognised audio ends: the last final's end
        self._sent = 0
        self._kept = 0
        self._dropped_to = 0
        self.total_bytes = 0
        """Audio bytes received from the client."""
        self.half_closed = False
        """True once the client sent all its audio."""

    @property
    def replayable(self) -> bool:
        """False while audio after the resume point was dropped to honour the bound."""
        return self._base >= self._dropped_to

    def _grid(self, ms: int) -> int:
        """``ms`` rounded down to a whole millisecond that is also a whole sample."""
        return ms // self._step_ms * self._step_ms

    @property
    def _lead(self) -> int:
        """Byte where the lead-in starts: the start (rounded down to a whole sample) of
        the first kept final whose audio the bound has not dropped, or the resume point
        when there is none."""
        for start_ms, _, _ in self._finals:
            lead = self._grid(start_ms) * self._bytes_per_second // 1000
            if lead >= self._dropped_to:
                return min(lead, self._base)
        return self._base

    @property
    def pending(self) -> bool:
        """True while audio after the last final's end is kept: not every byte received
        has its final result (a container's audio is kept whole, so always once it has
        any)."""
        # A final's end is known to the millisecond: the rest of it counts as recognised.
        recognised = (self._end_ms + 1) * self._rate // 1000 * 2 if self._linear16 else 0
        return bool(self._entries) and self._entries[-1].end > recognised

    def append(self, request: stt_pb2.StreamingRecognizeRequest) -> None:
        """Adds a client audio request at the end of the stream.

        An empty chunk carries nothing to recognise or replay (an instance only restarts
        its idle timer for one), and counts nothing against any bound: it is kept only
        while nothing else waits to be sent, and only until it is sent; otherwise it is
        dropped (the instance hears from the client anyway with what waits). So a
        client's empty chunks hold no memory."""
        if not request.audio_content and self._next < len(self._entries):
            return
        entry = _Entry(self.total_bytes, request)
        self._entries.append(entry)
        self.total_bytes = entry.end
        self._kept += len(request.audio_content)
        self._enforce_bound()

    def unsent_bytes(self) -> int:
        """Bytes received but not yet sent to the current instance."""
        return self.total_bytes - self._sent

    def restart(self) -> bool:
        """Rewinds the cursor to the resume point for a new instance.

        Returns False when audio the new instance needs was already dropped
        (the stream outgrew its replay bound), so it cannot be replayed.
        """
        if not self.replayable:
            return False
        # The lead-in goes too, from its first final the bound left whole.
        self._sent = self._lead
        self._replay_from = self._sent
        self._next = 0
        # What ends by the cursor was received; an empty chunk at the cursor was not yet
        # sent.
        entries = self._entries
        while (
            self._next < len(entries)
            and entries[self._next].end <= self._sent
            and entries[self._next].request.audio_content
        ):
            self._next += 1
        return True

    def resume_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        """The metadata that tells a new instance where the replay (from the last
        :meth:`restart`) starts, and which part of it is a lead-in: from its start to
        the last final's end."""
        if self._linear16:
            key, start_ms = OFFSET_KEY, self._replay_from * 1000 // self._bytes_per_second
        else:  # the whole container is replayed: the instance discards up to start_ms
            key, start_ms = SKIP_KEY, self._finals[0][0] if self._finals else self._end_ms
        metadata: list[tuple[str, str | bytes]] = []
        if start_ms:
            metadata.append((key, str(start_ms)))
        if start_ms < self._end_ms:
            earlier = [t for s, _, t in self._finals if s < start_ms]  # dropped by the bound
            lead_in = ReplayContext(
                lead_in_ms=self._end_ms - start_ms,
                finals=tuple(f for f in self._finals if f[0] >= start_ms),
                prompt=extend_prompt(self._prompt, earlier),
            )
            metadata.append((CONTEXT_KEY, lead_in.encode()))
        return tuple(metadata)

    def next_request(self) -> stt_pb2.StreamingRecognizeRequest | None:
        """The next request for the current instance (None when it has everything)."""
        if self._next >= len(self._entries):
            return None
        entry = self._entries[self._next]
        if not entry.request.audio_content:  # sent once, never replayed (append)
            del self._entries[self._next]
            return entry.request
        self._next += 1
        request = entry.request
        if entry.start < self._sent:
            cut = request.audio_content[self._sent - entry.start :]
            request = stt_pb2.StreamingRecognizeRequest(audio_content=cut)
        self._sent = entry.end
        if self._kept > self._max_kept:
            self._drop_sent()
        return request

    def commit(self, end_ms: float, start_ms: float = 0.0, text: str = "") -> None:
        """A final result over [``start_ms``, ``end_ms``) with ``text``: nothing before
        its end needs recognising again, and it is context for the next utterance."""
        end = int(end_ms)
        if self._linear16:  # never past what the instance was sent
            end = min(end, self._sent * 1000 // self._bytes_per_second)
        if end <= self._end_ms:
            return
        self._end_ms = end
        if self._context_ms and text:
            self._finals.append((min(int(start_ms), end), end, text))
        while self._finals and (
            len(self._finals) > MAX_CONTEXT_FINALS
            or self._grid(self._finals[0][0]) < end - self._context_ms
        ):
            self._prompt = extend_prompt(self._prompt, [self._finals.popleft()[2]])
        if not self._linear16:
            return
        self._base = max(self._base, self._grid(end) * self._bytes_per_second // 1000)
        lead = self._lead
        while self._entries and self._entries[0].end <= lead:
            self._kept -= len(self._entries.popleft().request.audio_content)
            # Only an empty chunk can end at the lead unsent: the cursor stays put.
            if self._next > 0:
                self._next -= 1

    def audio_seconds(self) -> float:
        """Seconds of LINEAR16 audio received (0 for containers, whose rate is unknown)."""
        return self.total_bytes / self._bytes_per_second if self._linear16 else 0.0

    def _enforce_bound(self) -> None:
        if self._kept > self._max_kept:
            self._drop_sent()

    def _drop_sent(self) -> None:
        # The lead-in goes first: without it the stream still fails over.
        while self._kept > self._max_kept and self._next > 0 and self._entries[0].end <= self._base:
            self._pop_sent()
        if self._kept > self._max_kept:
            while self._next > 0:
                self._pop_sent()

    def _pop_sent(self) -> None:
        entry = self._entries.popleft()
        self._kept -= len(entry.request.audio_content)
        self._next -= 1
        self._dropped_to = max(self._dropped_to, entry.end)


class ResultTracker:
    """Makes the responses of successive instances one consistent stream."""

    def __init__(self) -> None:
        self.final_results = 0
        """Final results sent to the client."""
        self.failovers = 0
        """Times the stream moved to another instance after a failure."""
        self._last_index = -1
        self._last_end_ms = -1.0
        self._base = 0
        self._in_speech = False
        # Offset of the speech end the client has had without a final after it.
        self._ended_at: float | None = None
        self._suppress_start = False
        self._suppress_end = False

    def begin_attempt(self, resumed: bool) -> None:
        """A new instance takes the stream; ``resumed`` when results were sent before.

        It replays from the last final: an utterance the client has heard start (and
        maybe end) is announced again by the new instance; those repeats are dropped.
        """
        self._base = self._last_index + 1
        self._suppress_start = resumed and (self._in_speech or self._ended_at is not None)
        self._suppress_end = False

    def on_response(
        self, response: stt_pb2.StreamingRecognizeResponse
    ) -> stt_pb2.StreamingRecognizeResponse | None:
        """The response to send on (renumbered in place), or None to drop it."""
        kind = response.WhichOneof("streaming_response")
        if kind == "result":
            return self._on_result(response)
        if kind == "speech_event":
            return self._on_event(response)
        return response

    def _on_result(
        self, response: stt_pb2.StreamingRecognizeResponse
    ) -> stt_pb2.StreamingRecognizeResponse | None:
        result = response.result
        index = self._base + result.utterance_index
        if index <= self._last_index:
            return None
        if result.is_final:
            end_ms = duration_ms(result.end_offset)
            if end_ms <= self._last_end_ms:
                # Replayed audio that only repeats what a final already covered.
                self._base -= 1
                return None
            self._last_index = index
            self._last_end_ms = end_ms
            self._ended_at = None
            self.final_results += 1
        if index != result.utterance_index:
            result.utterance_index = index
        return response

    def _on_event(
        self, response: stt_pb2.StreamingRecognizeResponse
    ) -> stt_pb2.StreamingRecognizeResponse | None:
        offset_ms = duration_ms(response.speech_event.offset)
        if response.speech_event.type == stt_pb2.SPEECH_EVENT_TYPE_SPEECH_STARTED:
            # A repeat: the utterance open at the failure, or one whose end the
            # client has had (it starts before that end), not the next one.
            repeat = self._ended_at is None or offset_ms < self._ended_at
            if self._suppress_start and repeat:
                self._suppress_start = False
                self._suppress_end = self._ended_at is not None
                return None
            self._suppress_start = False
            self._in_speech, self._ended_at = True, None
            return response
        self._suppress_start = False
        if self._suppress_end:  # the end of the repeated start
            self._suppress_end = False
            return None
        self._in_speech, self._ended_at = False, offset_ms
        return response

    def fix_summary(
        self, summary: stt_pb2.StreamSummary, stream_id: str, audio_seconds: float
    ) -> None:
        """Rewrites the stream-level figures of the last instance's summary in place."""
        summary.final_results = self.final_results
        summary.failovers = self.failovers
        summary.stream_id = stream_id
        if audio_seconds > 0:
            summary.audio_processed.FromNanoseconds(round(audio_seconds * 1e9))
