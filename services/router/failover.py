"""What failover needs, per stream: the audio to replay and the results already sent.

:class:`ReplayLog` keeps the audio of a stream from its resume point on and
is also the stream's send queue (a cursor marks what the current instance has
received). The resume point is the end of the last final result:

* LINEAR16 can be cut anywhere, so the log drops everything before the end
  of each final result; a new instance gets the rest with the metadata
  ``voxmesh-offset-ms: N`` ("your first byte is at stream time N ms").
  N is rounded down to a whole sample (multiples of 10 ms at 44.1 kHz).
  With ``context_ms``, the log also keeps the final utterances of the last
  ``context_ms`` before the resume point, and a new instance gets them in
  front (a lead-in, ``voxmesh-context-bin``: already final, context only):
  an instance decodes an utterance behind the audio of the earlier ones, and
  without it the first utterance after a failover is transcribed worse
  (``bench/asr_context.py``: 20.6% WER alone against 16.8% with it).
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
a speech start already announced is not announced again, and the summary
counts the failovers and the finals the client actually got.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from google.protobuf import duration_pb2

from voxmesh.rpc.metadata import CONTEXT_KEY, OFFSET_KEY, SKIP_KEY, ReplayContext
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
        self._replay_from = 0
        self._bytes_per_second = 2 * sample_rate
        self._step_ms = 1000 // math.gcd(sample_rate, 1000) if linear16 else 1
        self._max_kept = replay_max_bytes
        self._entries: deque[_Entry] = deque()
        self._next = 0
        self._base = 0
        self._base_ms = 0
        self._skip_ms = 0
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

    @property
    def _lead(self) -> int:
        """Byte where the lead-in starts: the first kept final's start (rounded down to a
        whole sample), or the resume point when there is none."""
        if not self._finals:
            return self._base
        lead_ms = self._finals[0][0] // self._step_ms * self._step_ms
        return min(lead_ms * self._bytes_per_second // 1000, self._base)

    @property
    def pending(self) -> bool:
        """True while audio after the resume point is kept: not every byte received has
        its final result (a container's audio is kept whole, so always once it has any)."""
        return bool(self._entries) and self._entries[-1].end > self._base

    def append(self, request: stt_pb2.StreamingRecognizeRequest) -> None:
        """Adds a client audio request at the end of the stream."""
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
        # The lead-in goes too, unless the bound dropped some of it.
        lead = self._lead
        self._sent = lead if lead >= self._dropped_to else self._base
        self._replay_from = self._sent
        self._next = 0
        while self._next < len(self._entries) and self._entries[self._next].end <= self._sent:
            self._next += 1
        return True

    def resume_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        """The metadata that tells a new instance where the replay (from the last
        :meth:`restart`) starts, and which part of it is a lead-in."""
        if self._linear16:
            key, resume_ms = OFFSET_KEY, self._base_ms
            start_ms = self._replay_from * 1000 // self._bytes_per_second
        else:  # the whole container is replayed: the instance discards up to start_ms
            key, resume_ms = SKIP_KEY, self._skip_ms
            start_ms = self._finals[0][0] if self._finals else resume_ms
        metadata: list[tuple[str, str | bytes]] = []
        if start_ms:
            metadata.append((key, str(start_ms)))
        if start_ms < resume_ms:
            lead_in = ReplayContext(
                lead_in_ms=resume_ms - start_ms,
                finals=tuple(
                    (s, min(e, resume_ms), t) for s, e, t in self._finals if s >= start_ms
                ),
            )
            metadata.append((CONTEXT_KEY, lead_in.encode()))
        return tuple(metadata)

    def next_request(self) -> stt_pb2.StreamingRecognizeRequest | None:
        """The next request for the current instance (None when it has everything)."""
        if self._next >= len(self._entries):
            return None
        entry = self._entries[self._next]
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
        its end needs replaying, and it is context for the next utterance."""
        if not self._linear16:
            if int(end_ms) > self._skip_ms:
                self._skip_ms = int(end_ms)
                self._keep_context(start_ms, end_ms, text, self._skip_ms)
            return
        resume_ms = int(end_ms) // self._step_ms * self._step_ms
        resume = min(resume_ms * self._bytes_per_second // 1000, self._sent)
        if resume <= self._base:
            return
        self._base = resume
        self._base_ms = resume * 1000 // self._bytes_per_second
        self._keep_context(start_ms, end_ms, text, self._base_ms)
        lead = self._lead
        while self._entries and self._entries[0].end <= lead:
            self._kept -= len(self._entries.popleft().request.audio_content)
            self._next -= 1

    def _keep_context(self, start_ms: float, end_ms: float, text: str, resume_ms: int) -> None:
        """Keeps a final with words as lead-in; forgets those older than ``context_ms``."""
        if self._context_ms and text:
            self._finals.append((int(start_ms), int(end_ms), text))
        while self._finals and self._finals[0][0] < resume_ms - self._context_ms:
            self._finals.popleft()

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
        self._suppress_start = False

    def begin_attempt(self, resumed: bool) -> None:
        """A new instance takes the stream; ``resumed`` when results were sent before."""
        self._base = self._last_index + 1
        self._suppress_start = resumed and self._in_speech

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
            self.final_results += 1
        if index != result.utterance_index:
            result.utterance_index = index
        return response

    def _on_event(
        self, response: stt_pb2.StreamingRecognizeResponse
    ) -> stt_pb2.StreamingRecognizeResponse | None:
        started = response.speech_event.type == stt_pb2.SPEECH_EVENT_TYPE_SPEECH_STARTED
        if started and self._suppress_start:
            self._suppress_start = False
            return None
        self._suppress_start = False
        self._in_speech = started
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
