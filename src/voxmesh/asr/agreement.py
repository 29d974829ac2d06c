"""LocalAgreement-2 (Macháček, Dabre and Bojar, 2023, "Turning Whisper into
Real-Time Transcription System"): a word of the open utterance is committed
once two consecutive hypotheses agree on it and on everything before it.

Committed words never change, which is what makes interim results stable; the
rest of the newest hypothesis is shown as a tentative tail. A hypothesis that no
longer starts with the committed words commits nothing: the words it puts in
their place are dropped from what is shown, and its tail starts after the part
of it that best matches them (see :meth:`LocalAgreement.update`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["LocalAgreement", "normalise_word"]

_STRIP = re.compile(r"[^\w']+")


def normalise_word(word: str) -> str:
    """Compares words without case and punctuation."""
    return _STRIP.sub("", word.lower())


def _agreed(a: list[str], b: list[str]) -> int:
    """How many leading words ``a`` and ``b`` share (normalised)."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _aligned_end(committed: list[str], hypothesis: list[str]) -> int:
    """Length of the prefix of ``hypothesis`` that best matches ``committed``: fewest
    word edits (insertions, deletions, substitutions), the longest prefix on a tie.
    Both are normalised word lists."""
    # costs[j]: edits between the committed words so far and hypothesis[:j]
    costs = list(range(len(hypothesis) + 1))
    for i, word in enumerate(committed, start=1):
        previous, costs = costs, [i]
        for j, other in enumerate(hypothesis, start=1):
            costs.append(min(previous[j] + 1, costs[j - 1] + 1, previous[j - 1] + (word != other)))
    best = min(costs)
    return max(j for j, cost in enumerate(costs) if cost == best)


@dataclass
class LocalAgreement:
    """Tracks the committed prefix of one utterance."""

    committed: list[str] = field(default_factory=list)
    """Words agreed on, as first committed (with punctuation); they only grow."""
    _previous: list[str] = field(default_factory=list)
    """The previous hypothesis, normalised."""

    def update(self, hypothesis: list[str]) -> tuple[list[str], list[str]]:
        """Takes a new hypothesis (words); returns (committed, tentative tail).

        The committed prefix only grows, and only while hypotheses start with it:
        when this one and the previous one both do, the words after it that they
        share are committed too. A hypothesis that does not start with the committed
        words (normalised) commits nothing and leaves them as they are; its tail is
        what follows the prefix of it that best matches them (fewest word edits, the
        longest prefix on a tie), so the words shown are the committed ones and the
        hypothesis' continuation, never a committed word twice or replaced.
        """
        words = [normalise_word(w) for w in hypothesis]
        done = [normalise_word(w) for w in self.committed]
        if words[: len(done)] == done:
            agreed = _agreed(words, self._previous)
            if agreed > len(done):
                self.committed += hypothesis[len(done) : agreed]
            start = len(self.committed)
        else:
            start = _aligned_end(done, words)
        self._previous = words
        return list(self.committed), list(hypothesis[start:])

    def stability(self, tail: list[str]) -> float:
        """Share of the shown words that are committed, in [0, 1]."""
        total = len(self.committed) + len(tail)
        return 1.0 if total == 0 else len(self.committed) / total

    def reset(self) -> None:
        """Starts a new utterance."""
        self.committed = []
        self._previous = []
