"""The WER normalisation the accuracy tests and benchmarks share (tests/speech.py)."""

from __future__ import annotations

import pytest

from tests.speech import normalise_text, spell_number, wer


@pytest.mark.parametrize(
    ("n", "words"),
    [
        (0, "zero"),
        (7, "seven"),
        (19, "nineteen"),
        (50, "fifty"),
        (42, "forty two"),
        (100, "one hundred"),
        (123, "one hundred twenty three"),
        (2000, "two thousand"),
        (12_045, "twelve thousand forty five"),
        (999_999, "nine hundred ninety nine thousand nine hundred ninety nine"),
        (1_000_000, "1000000"),
    ],
)
def test_numbers_are_spelled_as_the_references_write_them(n: int, words: str) -> None:
    assert spell_number(n) == words


def test_digits_in_a_hypothesis_match_a_spelled_out_reference() -> None:
    assert normalise_text("The girl sold 50 bonds, for $1,200.") == (
        "the girl sold fifty bonds for one thousand two hundred"
    )
    assert (
        wer("the girl at the booth sold fifty bonds", "The girl at the booth sold 50 bonds.") == 0
    )


def test_case_punctuation_and_titles_are_normalised() -> None:
    assert normalise_text("Mr. Quilter's  gospel-MAN!") == "mister quilters gospel man"
    assert wer("a rod is used", "a rod was used") == pytest.approx(0.25)
