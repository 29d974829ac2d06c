"""LocalAgreement-2 (Macháček, Dabre and Bojar, 2023, "Turning Whisper into
Real-Time Transcription System"): a word of the open utterance is committed
once two consecutive hypotheses agree on it and on everything before it.

Committed words never change, which is what makes interim results stable; the
rest of the newest hypothesis is shown as a tentative tail.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["LocalAgreement", "normalise_word"]

_STRIP = re.compile(r"[^\w']+")


def normalise_word(word: str) -> str:
    """Compares words without case and punctuation."""
    return _STRIP.sub("", word.lower())


@dataclass
class LocalAgreement:
    """Tracks the committed prefix of one utterance."""

    committed: list[str] = field(default_factory=list)
    """Words agreed on, as first seen (with punctuation)."""
    _previous: list[str] = field(default_factory=list)

    def update(self, hypothesis: list[str]) -> tuple[list[str], list[str]]:
        """Takes a new hypothesis (words); returns (committed, tentative tail).

        The committed prefix only grows: if the new hypothesis contradicts a
        committed word, the committed words are kept and the tail is the
        hypothesis beyond the committed length.
        """
        agreed = 0
        limit = min(len(hypothesis), len(self._previous))
        while agreed < limit and normalise_word(hypothesis[agreed]) == normalise_word(
            self._previous[agreed]
        ):
            agreed += 1
        if agreed > len(self.committed):
            self.committed = list(hypothesis[:agreed])
        self._previous = list(hypothesis)
        tail = list(hypothesis[len(self.committed) :])
        return list(self.committed), tail

    def stability(self, tail: list[str]) -> float:
        """Share of the shown words that are committed, in [0, 1]."""
        total = len(self.committed) + len(tail)
        return 1.0 if total == 0 else len(self.committed) / total

    def reset(self) -> None:
        """Starts a new utterance."""
        self.committed = []
        self._previous = []
