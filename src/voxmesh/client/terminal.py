"""What the CLI needs to know of a terminal: which streams share one, how wide it is,
and how much of a text fits on one of its lines."""

from __future__ import annotations

import contextlib
import os
import shutil
import unicodedata
from typing import TextIO

__all__ = ["fit_head", "fit_tail", "same_terminal", "terminal_columns", "text_width"]


def same_terminal(out: TextIO, err: TextIO) -> bool:
    """Whether ``out`` and ``err`` write to the same terminal device."""
    if out is err:
        return True
    try:
        return os.path.samestat(os.fstat(out.fileno()), os.fstat(err.fileno()))
    except (AttributeError, OSError, ValueError):  # no file descriptor (io.StringIO)
        return False


def terminal_columns(stream: TextIO) -> int:
    """The width of the terminal ``stream`` shows on: ``$COLUMNS`` if set, else the
    terminal's own, else shutil's fallback (80)."""
    if not os.environ.get("COLUMNS"):
        with contextlib.suppress(AttributeError, OSError, ValueError):
            columns = os.get_terminal_size(stream.fileno()).columns
            if columns > 0:
                return columns
    return shutil.get_terminal_size().columns


def _char_width(char: str) -> int:
    if unicodedata.combining(char):
        return 0
    return 2 if unicodedata.east_asian_width(char) in "WF" else 1


def text_width(text: str) -> int:
    """Terminal columns ``text`` takes (wide East Asian characters take two)."""
    return sum(_char_width(c) for c in text)


def fit_tail(text: str, columns: int) -> str:
    """The end of ``text`` that fits in ``columns``, after ``"... "`` if cut."""
    if text_width(text) <= columns:
        return text
    if columns <= 4:
        return ""
    kept, used = [], 4
    for char in reversed(text):
        used += _char_width(char)
        if used > columns:
            break
        kept.append(char)
    return "... " + "".join(reversed(kept))


def fit_head(text: str, columns: int) -> str:
    """The start of ``text`` that fits in ``columns``."""
    kept, used = [], 0
    for char in text:
        used += _char_width(char)
        if used > columns:
            break
        kept.append(char)
    return "".join(kept)
