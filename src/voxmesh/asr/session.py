"""One recognition stream: audio in, speech events and results out.

``feed`` (called by the RPC handler for every chunk) appends audio and runs
the VAD; a per-stream worker task turns VAD events into decodes and results,
strictly in order, so finals are never duplicated or reordered::

    RECEIVING ──finish()──▶ HALF_CLOSED ──open utterance finalised──▶ DONE
        │                                                           ▲
        └──────────────── close() (cancel, error) ──────────────────┘

Inside RECEIVING the worker follows the endpointer (see :mod:`.vad`):

* while someone speaks, an interim decode of the open utterance every
  ``interim_interval`` seconds of new speech (stretched when the scheduler
  is loaded); LocalAgreement-2 commits the prefix two hypotheses share;
* when a pause reaches ``speculative_pause`` (shorter while the model is idle), a
  decode of the utterance up to the pause (and as much of its pad as has arrived);
  if the pause then ends the utterance with no new speech, that decode is the
  final result (no second decode: this is most of the final latency saved);
* an utterance longer than ``max_utterance`` is cut after its last committed
  word, and goes on as a new utterance;
* silence is never decoded; output that looks like noise (Whisper's
  no-speech and log-probability rules) is dropped;
* under load (adaptive mode), a decode still queued when it becomes pointless
  is withdrawn: an interim once a pause begins (the speculative final goes
  first), a speculative final once speech resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from voxmesh import tasks
from voxmesh.asr.agreement import LocalAgreement
from voxmesh.asr.audio import MODEL_SAMPLE_RATE, Samples
from voxmesh.asr.context import StreamContext
from voxmesh.asr.decoder import DecodeJob, DecodeOutput, Word
from voxmesh.asr.scheduler import DecodeScheduler
from voxmesh.asr.vad import Endpointer, EndpointerOptions, StreamingVad, VadEvent, VadState
from voxmesh.errors import InvalidArgument, OutOfRange, ResourceExhausted
from voxmesh.rpc.metadata import ReplayContext

__all__ = [
    "Final",
    "Interim",
    "SessionEvent",
    "SessionOptions",
    "SpeechEnded",
    "SpeechStarted",
    "StreamParams",
    "StreamSession",
]

logger = logging.getLogger(__name__)

SR = MODEL_SAMPLE_RATE
_WINDOW = int(29.5 * SR)
"""Whisper hears 30 s at most; context plus utterance stay below it."""
_PAUSING = (VadEvent.PAUSE_STARTED, VadEvent.SPEECH_ENDED)
"""Endpointer events after which a queued interim decode is not worth running."""
_IDLE_UTILIZATION = 0.5
"""The model's busy share of the last 5 s under which it counts as idle."""


@dataclass(frozen=True)
class StreamParams:
    """What a validated config asks of a stream."""

    stream_id: str
    language: str | None = None
    interim_results: bool = True
    word_offsets: bool = False
    realtime: bool = True


@dataclass(frozen=True)
class SessionOptions:
    """Streaming behaviour (seconds)."""

    endpointer: EndpointerOptions = field(default_factory=EndpointerOptions)
    pad_before: float = 0.4
    """Audio kept before an utterance's first speech frame (faster-whisper's offline
    VAD pads 0.4 s too). Silero's onset lags the first phoneme; with 0.2 s, first
    words of espeak-ng sentences came out wrong ("hoist" as "high speed")."""
    pad_after: float = 0.2
    """Audio kept after an utterance's last speech frame."""
    interim_interval: float = 1.0
    """New speech between two interim decodes (unloaded)."""
    first_interim: float = 0.5
    """Speech before an utterance's first interim decode."""
    speculative_pause: float = 0.2
    """Pause after which the utterance so far is decoded ahead, up to the pause plus
    ``pad_after`` or as much of it as has arrived; if the pause ends the utterance,
    that decode is the final. The least audio after the last speech frame a final
    is decoded with (all of it silence by the VAD). Shorter pauses lower an idle
    instance's final latency and cost density: more decodes ahead of pauses that
    speech resumes after (0.1 s: p50 0.68 s against 0.83 s on one stream; 3 streams
    at p95 2.4 s against 1.9 s; ``bench/README.md``)."""
    speculative_pause_idle: float = 0.1
    """``speculative_pause`` while the model is idle (adaptive mode: no decode waits for
    it and it was busy less than half of the last 5 s), if shorter: an idle instance
    spends its spare time on decodes ahead of shorter pauses and gives lower final
    latency; a loaded one keeps its time for the decodes that are due."""
    max_utterance: float = 25.0
    """Longest utterance before it is cut at a committed word."""
    max_stream: float = 4 * 3600.0
    """Longest stream; more audio fails it with OUT_OF_RANGE."""
    adaptive: bool = True
    """Shed interim decodes under load (none while jobs wait for the model, rarer the
    busier it was, withdrawn if a pause begins before the model takes them); False
    decodes at a fixed cadence."""
    condition_on_previous: bool = True
    """Prompt each utterance with the stream's previous final text."""
    context: float = 15.0
    """Audio of earlier (final) utterances decoded in front of the open one, with
    their text forced as a prefix: Whisper transcribes an utterance better when it
    hears what came before (as offline decoding of 30 s windows does)."""


@dataclass(frozen=True)
class SpeechStarted:
    """Voice activity began at ``offset`` seconds."""

    offset: float


@dataclass(frozen=True)
class SpeechEnded:
    """Voice activity ended at ``offset`` seconds; the final follows."""

    offset: float


@dataclass(frozen=True)
class Interim:
    """The current hypothesis of the open utterance."""

    utterance: int
    text: str
    stability: float
    start: float
    end: float
    language: str = ""
    """The language decoded (detected, on a multilingual model without one set)."""


@dataclass(frozen=True)
class Final:
    """The final result of an utterance."""

    utterance: int
    text: str
    confidence: float
    start: float
    end: float
    language: str
    words: list[Word] = field(default_factory=list)


SessionEvent = SpeechStarted | SpeechEnded | Interim | Final


class StreamSession:
    """State of one stream. Create, ``feed`` chunks, ``finish``, read events with
    ``next_event`` (``events`` ends with ``None`` only when the stream ends normally)."""

    def __init__(
        self,
        params: StreamParams,
        options: SessionOptions,
        scheduler: DecodeScheduler,
        *,
        offset: float = 0.0,
        skip: float = 0.0,
        replay: ReplayContext | None = None,
        vad: StreamingVad | None = None,
        max_events: int = 64,
    ) -> None:
        """``offset``: stream time of the first sample; ``skip``: seconds of audio to
        drop first (a replayed container); ``replay``: the first ``lead_in_ms`` of the
        audio (after ``skip``) are context only, see :meth:`_past_lead_in`."""
        self.params = params
        self._opt = options
        self._scheduler = scheduler
        self._vad = vad or StreamingVad()
        self._endpointer = Endpointer(options.endpointer)
        self._time_base = offset + skip
        self._pad_before = int(options.pad_before * SR)
        self._pad_after = int(options.pad_after * SR)
        self._skip_left = round(skip * SR)
        self.events: asyncio.Queue[SessionEvent | None] = asyncio.Queue(max_events)
        # Audio since sample index _buf_start (indices count from the first kept sample).
        self._buf = np.zeros(0, dtype=np.float32)
        self._buf_start = 0
        self._total = 0
        self._vad_events: list[tuple[VadEvent, int]] = []
        self._wake = asyncio.Event()
        # Set by feed() for each batch of endpointer events: a decode still queued
        # when they make it pointless is withdrawn.
        self._vad_changed = asyncio.Event()
        # Buffer size above which feeding waits: an utterance is cut before it
        # grows this long, so the worker always frees room without new audio.
        self._room_limit = int((options.max_utterance + options.context + 1.0) * SR)
        self._room = asyncio.Event()
        self._room.set()
        self._finished = False
        self.received_seconds = 0.0
        self.finals = 0
        # Utterance state (owned by the worker).
        self._utt_open = False
        self._utt_start = 0
        self._final_end = 0  # where the last published final ends: the next starts after
        self._speech_end = 0
        self._paused_at: int | None = None
        # A decode ahead of the endpoint: (utterance start, pause start, decoded end,
        # (output, window start)); the final reuses it if the endpoint confirms it.
        self._speculative: tuple[int, int, tuple[DecodeOutput, int]] | None = None
        self._decoded_until = 0
        self._interim_sent = False
        self._agreement = LocalAgreement()
        self._context = StreamContext(
            context_samples=int(options.context * SR), window_samples=_WINDOW
        )
        # A replay's lead-in: audio already final, decoded only as context.
        self._lead_end = 0
        self._lead_pending = False
        if replay is not None and replay.lead_in_ms:
            self._start_after_lead_in(replay)
        self._task = asyncio.create_task(self._work(), name=f"voxmesh-session-{params.stream_id}")

    # -- producer side (RPC handler) ---------------------------------------
    def feed(self, samples: Samples) -> None:
        """Adds decoded 16 kHz audio; raises OUT_OF_RANGE / RESOURCE_EXHAUSTED."""
        self.raise_worker_error()
        self.received_seconds += len(samples) / SR
        if self.received_seconds > self._opt.max_stream:
            raise OutOfRange(
                f"stream is longer than the maximum stream duration of {self._opt.max_stream:g} s"
            )
        if self._skip_left:
            dropped = min(self._skip_left, len(samples))
            self._skip_left -= dropped
            samples = samples[dropped:]
        if not len(samples):
            return
        self._buf = np.concatenate([self._buf, samples])
        self._total += len(samples)
        limit = self._room_limit + 15 * SR
        if len(self._buf) > limit:
            raise ResourceExhausted("instance overloaded: decoding fell behind this stream", 2.0)
        events = self._endpointer.push(self._vad.process(samples))
        if self._lead_end:
            events = self._past_lead_in(events)
        if events:
            self._vad_changed.set()
        self._vad_events.extend(events)
        self._wake.set()

    async def wait_for_room(self) -> None:
        """Waits until the buffer is short enough to take more audio (offline feeding)."""
        if len(self._buf) >= self._room_limit:
            self._room.clear()
            await self._room.wait()

    def finish(self) -> None:
        """The client half-closed: finalise the open utterance, then end."""
        self._finished = True
        self._wake.set()

    async def next_event(self, producer: asyncio.Task[None] | None = None) -> SessionEvent | None:
        """The next event, or None once the stream has ended and every event before
        the end was read, however the worker ended: a failed or cancelled worker may
        have had no room left for the ``None`` that ends ``events``, so a reader that
        waits on ``events`` alone could wait forever. The error of a failed worker
        is then on :attr:`worker` (:meth:`raise_worker_error`).

        ``producer``, the task feeding the session, has its error raised as soon as it
        fails: the worker would otherwise wait for its audio forever."""
        while True:
            if producer is not None and producer.done():
                producer.result()  # raises its error, if it failed
            if not self.events.empty():
                return self.events.get_nowait()
            if self._task.done():
                return None
            getter = asyncio.ensure_future(self.events.get())
            waiting: set[asyncio.Future[Any]] = {getter, self._task}
            if producer is not None and not producer.done():
                waiting.add(producer)
            try:
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            finally:
                # An event not taken yet stays queued for the next call.
                await tasks.stop(getter)
            if getter.done() and not getter.cancelled():
                if producer is not None and producer.done():
                    producer.result()  # a failed producer comes first
                return getter.result()

    async def close(self) -> None:
        """Stops the worker (idempotent); pending decodes are dropped."""
        await tasks.stop(self._task)

    def raise_worker_error(self) -> None:
        """Raises the error the worker failed with, if it has failed."""
        if self._task.done() and not self._task.cancelled():
            err = self._task.exception()
            if err is not None:
                raise err

    @property
    def caught_up(self) -> bool:
        """Whether the worker has processed all audio fed so far and waits for more."""
        return not self._wake.is_set() and not self._vad_events

    @property
    def worker(self) -> asyncio.Task[None]:
        """The worker task (done when the stream's results are all out)."""
        return self._task

    def _start_after_lead_in(self, replay: ReplayContext) -> None:
        """Takes the lead-in of a replay: no utterance starts in it, and its finals are
        the stream's context, as they were on the instance that failed."""
        lead_end = round(replay.lead_in_ms * SR / 1000)
        if lead_end > _WINDOW:
            raise InvalidArgument(
                f"replay context of {replay.lead_in_ms} ms is longer than Whisper's window"
            )
        self._lead_end = lead_end
        self._lead_pending = True
        self._final_end = lead_end
        self._context.prompt = replay.prompt
        base_ms = self._time_base * 1000.0
        for start_ms, end_ms, text in replay.finals:
            start = round((start_ms - base_ms) * SR / 1000)
            end = round((end_ms - base_ms) * SR / 1000)
            if 0 <= start <= end <= lead_end:
                self._context.add(start, end, text)

    def _past_lead_in(self, events: list[tuple[VadEvent, int]]) -> list[tuple[VadEvent, int]]:
        """The VAD events of a replay, given its lead-in: the VAD hears the lead-in
        (so its state where the lead-in ends is as it was on the failed instance), but
        what happened inside it was final already. Until the first event past the
        lead-in, events inside it are dropped, and what is open where it ends decides
        how the first utterance starts: speech going on there (an utterance cut at
        ``max_utterance``) starts one at the end of the lead-in; speech resuming
        after a pause begun inside it starts one where it resumes. After that, an
        event reported late with a position inside the lead-in is moved to its end."""
        lead_end = self._lead_end
        kept: list[tuple[VadEvent, int]] = []
        for kind, pos in events:
            if not self._lead_pending:
                kept.append((kind, max(pos, lead_end)))
            elif pos >= lead_end:
                self._lead_pending = False
                if kind is VadEvent.SPEECH_RESUMED:
                    kept.append((VadEvent.SPEECH_STARTED, pos))
                elif kind is VadEvent.SPEECH_STARTED:
                    kept.append((kind, pos))
                else:  # speech went on past the lead-in
                    kept += [(VadEvent.SPEECH_STARTED, lead_end), (kind, pos)]
        if self._lead_pending and self._endpointer.position >= lead_end:
            state = self._endpointer.state
            if state is VadState.SPEAKING:
                kept.append((VadEvent.SPEECH_STARTED, lead_end))
            # In a pause, the next event decides: speech resuming, or the end (dropped).
            self._lead_pending = state is VadState.TRAILING
        return kept

    # -- worker --------------------------------------------------------------
    def _t(self, sample: int) -> float:
        return self._time_base + sample / SR

    def _audio(self, start: int, end: int) -> Samples:
        lo = max(0, start - self._buf_start)
        hi = max(lo, min(len(self._buf), end - self._buf_start))
        return self._buf[lo:hi]

    def _trim(self, keep_from: int) -> None:
        keep_from = max(self._buf_start, min(keep_from, self._total))
        self._buf = self._buf[keep_from - self._buf_start :]
        self._buf_start = keep_from
        if len(self._buf) < self._room_limit:
            self._room.set()

    async def _emit(self, event: SessionEvent | None) -> None:
        await self.events.put(event)

    async def _work(self) -> None:
        ended = False
        try:
            while True:
                while self._vad_events:
                    kind, pos = self._vad_events.pop(0)
                    await self._on_vad(kind, pos)
                if self._finished and not self._vad_events:
                    end = self._endpointer.force_end()
                    if end is not None and self._utt_open:
                        await self._emit(SpeechEnded(self._t(end)))
                        await self._finalise(end)
                    break
                if not await self._step():
                    self._wake.clear()
                    if not self._vad_events and not self._finished:
                        await self._wake.wait()
            # The end follows every result, waiting for room like they do.
            await self._emit(None)
            ended = True
        finally:
            if not ended:
                # Failed or cancelled: ``next_event`` sees the worker done; readers of
                # ``events`` alone get the end too if there is room for it.
                with contextlib.suppress(asyncio.QueueFull):
                    self.events.put_nowait(None)

    async def _on_vad(self, kind: VadEvent, pos: int) -> None:
        self._context.advance(pos)
        if kind is VadEvent.SPEECH_STARTED:
            self._utt_open = True
            self._utt_start = max(self._buf_start, self._final_end, pos - self._pad_before)
            self._trim(min(self._utt_start, self._context.keep_from(self._total)))
            self._speech_end = pos
            self._decoded_until = pos
            self._paused_at = None
            self._speculative = None
            self._interim_sent = False
            self._agreement.reset()
            await self._emit(SpeechStarted(self._t(pos)))
        elif kind is VadEvent.PAUSE_STARTED:
            self._paused_at = pos
        elif kind is VadEvent.SPEECH_RESUMED:
            self._paused_at = None
        elif kind is VadEvent.SPEECH_ENDED and self._utt_open:
            await self._emit(SpeechEnded(self._t(pos)))
            await self._finalise(pos)

    async def _step(self) -> bool:
        """Does one piece of decode work if any is due; False when idle."""
        if not self._utt_open:
            # The next utterance starts at its lead pad or later: context older than
            # that can go, however long no VAD event came (a long silence).
            floor = self._lead_floor()
            self._context.advance(floor)
            self._trim(min(floor, self._context.keep_from(self._total)))
            return False
        if self._total - self._utt_start >= self._opt.max_utterance * SR:
            await self._cut()
            return True
        paused = self._paused_at
        if (
            paused is not None
            and self._endpointer.state is VadState.TRAILING
            and self._total - paused >= self._speculative_pause() * SR
            and (self._speculative is None or self._speculative[1] != paused)
        ):
            end = min(self._total, paused + self._pad_after)
            decoded = await self._decode_unless(
                self._utt_start, end, final=True, stale_after=(VadEvent.SPEECH_RESUMED,)
            )
            if decoded is not None:
                self._speculative = (self._utt_start, paused, decoded)
            return True
        if self.params.interim_results and self._interim_due():
            end = self._total
            interim = await self._decode_unless(
                self._utt_start, end, final=False, stale_after=_PAUSING
            )
            if interim is None:
                return True  # withdrawn: the pause's decode comes first
            output, _ = interim
            self._decoded_until = end
            if not output.looks_like_noise():
                committed, tail = self._agreement.update(output.text.split())
                text = " ".join(committed + tail)
                self._interim_sent = True
                await self._emit(
                    Interim(
                        utterance=self.finals,
                        text=text,
                        stability=self._agreement.stability(tail),
                        start=self._t(self._utt_start),
                        end=self._t(end),
                        language=output.language,
                    )
                )
            return True
        return False

    def _speculative_pause(self) -> float:
        """The pause after which the utterance is decoded ahead, as loaded as the
        model is now."""
        pause = self._opt.speculative_pause
        if (
            self._opt.adaptive
            and self._scheduler.pending == 0
            and self._scheduler.utilization() < _IDLE_UTILIZATION
        ):
            return min(pause, self._opt.speculative_pause_idle)
        return pause

    def _interim_due(self) -> bool:
        if self._endpointer.state is not VadState.SPEAKING:
            return False
        first = not self._interim_sent
        interval = self._opt.first_interim if first else self._opt.interim_interval
        if self._opt.adaptive:
            # Interims are the work to shed: while jobs wait for the model, finals
            # and other streams go first; the busier the model was lately, the
            # rarer the interims (up to 5x the interval at full load).
            if self._scheduler.pending > 0:
                return False
            if not first:
                interval *= 1.0 + 4.0 * self._scheduler.utilization()
        return self._total - self._decoded_until >= interval * SR

    def _job(self, start: int, end: int, *, words: bool, final: bool) -> tuple[DecodeJob, int]:
        """The decode of utterance [start, end) behind its context, and the sample where
        its window (and word times) start."""
        window, prefix = self._context.window(start, end)
        job = DecodeJob(
            audio=self._audio(window, end).copy(),
            language=self.params.language,
            prompt=self._context.prompt if self._opt.condition_on_previous else "",
            prefix=prefix,
            words=words,
            wide_beam=final,
        )
        return job, window

    async def _decode(
        self, start: int, end: int, *, final: bool, words: bool = False
    ) -> tuple[DecodeOutput, int]:
        """Decodes the utterance [start, end) behind its context; returns the output and
        the sample where its window (and word times) start."""
        job, window = self._job(
            start, end, words=words or (final and self.params.word_offsets), final=final
        )
        output = await self._scheduler.submit(job, realtime=self.params.realtime, final=final)
        return output, window

    async def _decode_unless(
        self, start: int, end: int, *, final: bool, stale_after: tuple[VadEvent, ...]
    ) -> tuple[DecodeOutput, int] | None:
        """Decodes [start, end) like :meth:`_decode`, except that (adaptive mode) the job
        is withdrawn, and None returned, if one of ``stale_after`` happens while it still
        waits for the model: an interim once a pause begins, a speculative final once
        speech resumes. Under load that work would only delay other streams' finals."""
        job, window = self._job(start, end, words=final and self.params.word_offsets, final=final)
        ticket = self._scheduler.enqueue(job, realtime=self.params.realtime, final=final)
        if not self._opt.adaptive:
            return await ticket.future, window
        # The worker (us) consumes no events while it waits: the ones queued from here
        # on are those that happened during the wait.
        queued = len(self._vad_events)
        try:
            while not ticket.future.done():
                self._vad_changed.clear()
                changed = asyncio.ensure_future(self._vad_changed.wait())
                waiting: set[asyncio.Future[Any]] = {ticket.future, changed}
                try:
                    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    changed.cancel()
                stale = any(kind in stale_after for kind, _ in self._vad_events[queued:])
                if stale and ticket.withdraw():
                    return None
            return ticket.future.result(), window
        finally:
            ticket.future.cancel()  # no-op once done; drops the job if we were cancelled

    async def _finalise(self, speech_end: int) -> None:
        end = min(self._total, speech_end + self._pad_after)
        # Whisper hears 30 s: an utterance that grew past the cut length before its end
        # was handled (audio sent faster than real time) is cut first, as it would have
        # been while it grew, rather than decoded whole and its tail lost.
        while end - self._utt_start > self._opt.max_utterance * SR:
            await self._cut()
        if end > self._utt_start:  # else a cut took the utterance up to its end
            decoded = self._speculated(speech_end)
            if decoded is None:
                decoded = await self._decode(self._utt_start, end, final=True)
            await self._publish_final(decoded[0], self._utt_start, end, decoded[1])
        self._utt_open = False
        self._speculative = None
        self._paused_at = None
        self._trim(min(end, self._lead_floor(), self._context.keep_from(self._total)))

    def _speculated(self, speech_end: int) -> tuple[DecodeOutput, int] | None:
        """The speculative decode of the open utterance, if it is the final's: decoded
        after the pause that turned out to end at ``speech_end``, up to the final's end
        or short of it by the pad that had not arrived (silence: the VAD heard no
        speech after ``speech_end``)."""
        spec = self._speculative
        if spec is None or spec[:2] != (self._utt_start, speech_end):
            return None
        output = spec[2][0]
        if self.params.word_offsets and output.text and not output.words:
            return None
        return spec[2]

    def _lead_floor(self) -> int:
        """The oldest sample the next utterance's lead pad may need: ``pad_before`` in
        front of its onset, queued or yet to be reported. (Onsets are reported frames
        late, so trimming from the newest sample would cut into that pad.)"""
        onsets = (pos for kind, pos in self._vad_events if kind is VadEvent.SPEECH_STARTED)
        return next(onsets, self._endpointer.onset_floor) - self._pad_before

    async def _publish_final(self, output: DecodeOutput, start: int, end: int, window: int) -> None:
        """Sends the utterance's final: with no text when it decoded as noise (a cough, a
        door), because its SPEECH_ENDED promised a final and a client may wait for it."""
        noise = output.looks_like_noise()
        text = "" if noise else output.text
        words = [] if noise else _shift(output.words, self._t(window))
        await self._emit(
            Final(
                utterance=self.finals,
                text=text,
                confidence=0.0 if noise else output.confidence,
                start=self._t(start),
                end=self._t(end),
                language=output.language,
                words=words if self.params.word_offsets else [],
            )
        )
        self.finals += 1
        self._final_end = end
        self._interim_sent = False
        self._context.add(start, end, text)

    async def _cut(self) -> None:
        """Finalises the committed part of an over-long utterance."""
        start = self._utt_start
        end = min(self._total, start + int(self._opt.max_utterance * SR))
        output, window = await self._decode(start, end, final=True, words=True)
        words = output.words
        committed, _ = self._agreement.update([w.word for w in words])
        keep = max(len(committed), len(words) - 2) if committed else max(0, len(words) - 2)
        keep = min(keep, len(words))
        if keep == 0 or not words:
            cut = end
            head_words: list[Word] = words
        else:
            head_words = words[:keep]
            cut = min(end, window + int(head_words[-1].end * SR))
            if cut <= start:  # words aligned into the context audio: no progress
                head_words, cut = words, end
        text = " ".join(w.word for w in head_words) if head_words else output.text
        head = DecodeOutput(
            text=text,
            words=head_words,
            avg_logprob=output.avg_logprob,
            no_speech_prob=output.no_speech_prob,
            compression_ratio=output.compression_ratio,
            language=output.language,
        )
        await self._publish_final(head, start, cut, window)
        self._context.advance(cut)  # what follows starts here
        self._utt_start = cut
        self._decoded_until = cut
        self._speculative = None
        self._agreement.reset()
        self._trim(min(cut, self._context.keep_from(self._total)))


def _shift(words: list[Word], by: float) -> list[Word]:
    return [Word(w.word, w.start + by, w.end + by, w.probability) for w in words]
