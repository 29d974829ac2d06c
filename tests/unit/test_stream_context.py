"""StreamContext: which earlier audio and text a decode gets (no model)."""

from __future__ import annotations

from voxmesh.asr.context import StreamContext


def test_window_takes_earlier_finals_that_fit_and_forces_their_text() -> None:
    ctx = StreamContext(context_samples=100, window_samples=300)
    assert ctx.window(50, 80) == (50, ""), "no finals yet: the utterance alone"
    ctx.add(0, 40, "one")
    ctx.add(45, 90, "two")
    ctx.add(95, 99, "")  # noise finals carry no text and no context
    assert ctx.window(120, 150) == (45, "two"), "0 is more than 100 samples before 120"
    assert ctx.window(90, 150) == (0, "one two")
    # a long utterance leaves less room for context in the window
    assert ctx.window(120, 400) == (120, "")


def test_history_follows_the_worker_and_old_text_becomes_the_prompt() -> None:
    ctx = StreamContext(context_samples=100, window_samples=300)
    for i in range(10):
        ctx.add(i * 50, i * 50 + 40, f"w{i}")
    assert ctx.prompt == "w0 w1", "finals beyond the newest eight become the prompt"
    ctx.advance(200)
    assert ctx.keep_from(default=999) == 100, "keep the audio still usable as context"
    assert ctx.prompt == "w0 w1", "w2 (at 100) is still usable as context"
    ctx.advance(1000)
    assert ctx.keep_from(default=999) == 999, "all history is too old: keep nothing extra"
    assert ctx.prompt == " ".join(f"w{i}" for i in range(10)), "its text is in the prompt"
    assert ctx.window(1000, 1050) == (1000, "")


def test_finals_that_age_out_of_the_context_reach_the_prompt_bounded() -> None:
    sr = 16_000
    ctx = StreamContext(context_samples=15 * sr, window_samples=30 * sr)
    position = 0
    for i in range(12):  # 3 s utterances 10 s apart: one fits in the 15 s context
        ctx.add(position, position + 3 * sr, f"utt{i} one two three four")
        position += 13 * sr
        ctx.advance(position)
        ctx.keep_from(default=position)
    assert ctx.window(position, position + 2 * sr) == (143 * sr, "utt11 one two three four")
    expected = " ".join(f"utt{i} one two three four" for i in range(11)).split()[-40:]
    assert ctx.prompt == " ".join(expected), "the last 40 words of the older finals"
