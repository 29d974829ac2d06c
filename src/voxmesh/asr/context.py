"""What a stream's earlier final results give the decoding of the next utterance.

Whisper transcribes an utterance better when it hears what came before (as
offline decoding of 30 s windows does). :class:`StreamContext` keeps the recent
final utterances (sample spans and text) and answers, for a new decode, where
its window starts and which text to force as the decoder prefix (the text of
the audio in front of the utterance); older text becomes the plain prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from voxmesh.rpc.metadata import extend_prompt

__all__ = ["StreamContext"]

_MAX_HISTORY = 8


@dataclass
class StreamContext:
    """Recent finals of one stream; positions are sample indices."""

    context_samples: int
    """Most earlier audio put in front of an utterance."""
    window_samples: int
    """Whisper's window: context plus utterance stay below it."""
    prompt: str = ""
    """Text of finals too old to be context, whether evicted by count or by age (its
    last ``voxmesh.rpc.metadata.PROMPT_WORDS`` words)."""
    _history: list[tuple[int, int, str]] = field(default_factory=list)
    _cursor: int = 0

    def advance(self, position: int) -> None:
        """No decode will start before ``position`` any more: the worker reached it (the
        history is kept relative to that, not to the newest audio, which runs ahead when
        audio arrives faster than real time). Never moves back."""
        self._cursor = max(self._cursor, position)

    def add(self, start: int, end: int, text: str) -> None:
        """A final result covering [start, end)."""
        if not text:
            return
        self._history.append((start, end, text))
        if len(self._history) > _MAX_HISTORY:
            self._retire([self._history.pop(0)])

    def window(self, start: int, end: int) -> tuple[int, str]:
        """Where the decode window of utterance [start, end) starts, and the prefix."""
        room = min(self.context_samples, self.window_samples - (end - start))
        first = len(self._history)
        while first > 0 and start - self._history[first - 1][0] <= room:
            first -= 1
        if first == len(self._history):
            return start, ""
        return self._history[first][0], " ".join(t for _, _, t in self._history[first:])

    def keep_from(self, default: int) -> int:
        """The oldest sample a future decode may need (``default`` when none)."""
        horizon = self._cursor - self.context_samples
        old = [h for h in self._history if h[0] < horizon]
        if old:  # the history is in stream order: the old ones lead
            self._retire(old)
            del self._history[: len(old)]
        return self._history[0][0] if self._history else default

    def _retire(self, finals: list[tuple[int, int, str]]) -> None:
        """Finals leaving the history (the oldest first): their text joins the prompt,
        which keeps its last ``voxmesh.rpc.metadata.PROMPT_WORDS`` words."""
        self.prompt = extend_prompt(self.prompt, (text for _, _, text in finals))
