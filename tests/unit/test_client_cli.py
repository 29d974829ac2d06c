"""The ``voxmesh`` CLI's rendering: finals as lines, interim text and a progress bar on a TTY."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from google.protobuf import duration_pb2

from voxmesh.client import cli
from voxmesh.client.cli import TranscriptView, format_status, main
from voxmesh.client.terminal import fit_head, fit_tail, same_terminal, text_width
from voxmesh.stt.v1 import stt_pb2


class Tty(io.StringIO):
    """A string buffer that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def result(
    text: str, final: bool, start_ms: int = 0, end_ms: int = 0
) -> stt_pb2.StreamingRecognizeResponse:
    res = stt_pb2.StreamingRecognitionResult(is_final=final)
    res.start_offset.FromMilliseconds(start_ms)
    res.end_offset.FromMilliseconds(end_ms)
    res.alternatives.add(transcript=text)
    return stt_pb2.StreamingRecognizeResponse(result=res)


def test_pipe_output_has_only_final_lines() -> None:
    out, err = io.StringIO(), io.StringIO()
    view = TranscriptView(out, err, total_s=60.0)
    view.on_response(result("hello", False))
    view.on_progress(1.0)
    view.on_response(result(" hello world ", True, 0, 1500))
    view.close()
    assert out.getvalue() == "[00:00.0 - 00:01.5] hello world\n"
    assert err.getvalue() == ""


def test_terminal_shows_interim_text_and_a_progress_bar_for_long_files() -> None:
    out, err = Tty(), Tty()
    view = TranscriptView(out, err, total_s=60.0)
    view.on_progress(30.0)
    view.on_response(result("hello wor", False))
    assert "... hello wor" in out.getvalue()
    assert "[" + "#" * 15 + "." * 15 + "] 00:30.0 / 01:00.0" in err.getvalue()
    view.on_response(result("hello world", True, 61_000, 62_500))
    view.close()
    assert "[01:01.0 - 01:02.5] hello world\n" in out.getvalue()
    assert out.getvalue().endswith("\r\x1b[K")


def test_short_files_get_no_progress_bar() -> None:
    err = Tty()
    view = TranscriptView(Tty(), err, total_s=5.0)
    view.on_progress(2.0)
    assert err.getvalue() == ""


class Screen:
    """A terminal model: rows of cells, ``\\r``, ``\\n`` (as the tty's ``onlcr`` makes it),
    erase to end of row (``ESC [ K``) and autowrap at the last column, as a VT100 does."""

    def __init__(self, columns: int) -> None:
        self.columns = columns
        self.rows = [""]
        self._row, self._col = 0, 0

    def feed(self, text: str) -> None:
        i = 0
        while i < len(text):
            if text.startswith("\x1b[K", i):
                self.rows[self._row] = self.rows[self._row][: self._col]
                i += 3
                continue
            char, i = text[i], i + 1
            if char == "\r":
                self._col = 0
            elif char == "\n":
                self._next_row()
            else:
                if self._col == self.columns:  # the wrap is taken when the next one comes
                    self._next_row()
                row = self.rows[self._row].ljust(self._col)
                self.rows[self._row] = row[: self._col] + char + row[self._col + 1 :]
                self._col += 1

    def _next_row(self) -> None:
        self._row, self._col = self._row + 1, 0
        if self._row == len(self.rows):
            self.rows.append("")


class ScreenStream(io.StringIO):
    """A stream on a :class:`Screen` (stdout and stderr of one terminal share one)."""

    def __init__(self, screen: Screen) -> None:
        super().__init__()
        self.screen = screen

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.screen.feed(text)
        return super().write(text)


def test_on_one_terminal_the_interim_text_and_the_bar_share_a_status_line() -> None:
    """Stdout and stderr on one terminal: each live line used to erase the other."""
    screen = Screen(80)
    tty = ScreenStream(screen)
    view = TranscriptView(tty, tty, total_s=600.0, columns=lambda stream: screen.columns)
    bar = "[" + "." * 30 + "] 00:10.0 / 10:00.0"
    view.on_progress(10.0)
    view.on_response(result("hello", False))
    assert screen.rows == ["... hello" + " " * (79 - 9 - len(bar)) + bar]
    view.on_progress(10.2)
    view.on_response(result("hello world", False))
    assert screen.rows[0].startswith("... hello world ")
    assert screen.rows[0].endswith("] 00:10.2 / 10:00.0")
    view.on_response(result("hello world.", True, 0, 1500))
    assert screen.rows[0] == "[00:00.0 - 00:01.5] hello world."
    assert screen.rows[1].strip().startswith("[....") and len(screen.rows) == 2
    long = " ".join(f"word{i}" for i in range(40))
    view.on_response(result(long, False))
    assert len(screen.rows) == 2 and len(screen.rows[1]) == 79
    assert screen.rows[1].startswith("... ") and "word39 [" in screen.rows[1]
    view.close()
    assert screen.rows == ["[00:00.0 - 00:01.5] hello world.", ""]


def test_a_live_line_never_wraps_so_redrawing_it_leaves_nothing_behind() -> None:
    """An 82-column interim line wrapped on an 80-column terminal, and its redraw
    erased only the wrapped part."""
    screen, bar_screen = Screen(80), Screen(40)  # the bar on another, narrower terminal
    out, err = ScreenStream(screen), ScreenStream(bar_screen)
    columns = {id(out): 80, id(err): 40}
    view = TranscriptView(out, err, total_s=60.0, columns=lambda stream: columns[id(stream)])
    view.on_response(result("word " * 40, False))
    assert screen.rows == ["... " + ("word " * 40).strip()[-75:]]
    view.on_response(result("short", False))
    assert screen.rows == ["... short"]
    view.on_progress(30.0)
    assert bar_screen.rows == ["[" + "#" * 15 + "." * 15 + "] 00:30."]


def test_a_piped_stdout_gets_plain_final_lines_beside_a_terminal_bar() -> None:
    out, err = io.StringIO(), Tty()
    view = TranscriptView(out, err, total_s=60.0)
    view.on_progress(30.0)
    view.on_response(result("hello", False))
    view.on_response(result("hello world", True, 0, 1500))
    view.close()
    assert out.getvalue() == "[00:00.0 - 00:01.5] hello world\n"
    assert "00:30.0 / 01:00.0" in err.getvalue()


def test_streams_on_one_terminal_device_are_told_from_others() -> None:
    leader, follower = os.openpty()
    read, write = os.pipe()
    with (
        open(os.dup(follower), "w") as stdout,
        open(os.dup(follower), "w") as stderr,
        open(write, "w") as pipe,
    ):
        assert same_terminal(stdout, stderr)
        assert not same_terminal(stdout, pipe)
        assert not same_terminal(io.StringIO(), io.StringIO())
    for fd in (leader, follower, read):
        os.close(fd)


def test_wide_characters_take_two_columns() -> None:
    text = "... " + "日本語のテキスト"
    assert text_width(text) == 4 + 16
    assert fit_tail(text, 12) == fit_tail(text, 13) == "... テキスト"
    assert fit_tail(text, 14) == "... のテキスト"
    assert fit_head("[##] 日本", 7) == "[##] 日"


def test_router_status_lists_pools() -> None:
    snap = stt_pb2.TelemetrySnapshot(
        instance_id="router-1",
        role=stt_pb2.ROLE_ROUTER,
        state=stt_pb2.SERVING_STATE_SERVING,
        active_streams=3,
        max_streams=8,
        pending_work=2,
    )
    snap.queues.add(
        pool="asr_small", instances=2, active_streams=3, capacity_streams=8,
        queued_realtime=1, queued_batch=1, oldest_wait_seconds=1.25, admitted_total=10,
        rejected_total=1,
    )  # fmt: skip
    text = format_status(snap)
    assert text.startswith("router router-1: serving, 3/8 streams, 2 pending")
    row = next(line for line in text.splitlines() if line.startswith("asr_small"))
    assert row.split() == ["asr_small", "2", "3/8", "1/1", "1.2", "s", "10", "1"]
    assert len(text.splitlines()) == 4  # no instance rows: no instance table


def test_router_status_lists_instances_after_the_pools() -> None:
    snap = stt_pb2.TelemetrySnapshot(instance_id="router-1", role=stt_pb2.ROLE_ROUTER)
    snap.queues.add(pool="asr_small", instances=2)
    age = duration_pb2.Duration()
    age.FromMilliseconds(300)
    snap.instances.add(
        instance_id="small-a", pool="asr_small", capacity_class="on-demand", region="eu",
        gpu_type="L4", state=stt_pb2.SERVING_STATE_SERVING, accepting=True, listed=True,
        active_streams=3, router_streams=2, max_streams=4, pending_work=1,
        gpu_available=True, gpu_utilization_ratio=0.42, telemetry_age=age,
    )  # fmt: skip
    snap.instances.add(
        instance_id="small-b-with-a-long-id", pool="asr_small", capacity_class="preemptible",
        region="eu", gpu_type="cpu", accepting=True, listed=True, max_streams=8,
    )  # fmt: skip
    snap.instances.add(
        instance_id="small-c", pool="asr_small", capacity_class="on-demand", region="eu",
        gpu_type="cpu", state=stt_pb2.SERVING_STATE_DRAINING, router_streams=1, max_streams=4,
        active_streams=1, telemetry_age=age, drain_remaining=duration_pb2.Duration(seconds=62),
    )  # fmt: skip
    lines = format_status(snap).splitlines()
    table = lines[lines.index("") + 1 : -1]  # between the pool table and the host line
    assert table[0].split() == [
        "instance", "pool", "class", "region", "gpu", "state", "accepts",
        "streams", "router", "pending", "gpu", "util", "telemetry",
    ]  # fmt: skip
    assert [line.split() for line in table[1:]] == [
        ["small-a", "asr_small", "on-demand", "eu", "L4", "serving", "yes",
         "3/4", "2", "1", "42%", "0.3", "s", "ago"],
        ["small-b-with-a-long-id", "asr_small", "preemptible", "eu", "cpu", "unknown", "yes",
         "0/8", "0", "0", "-", "none", "yet"],
        ["small-c", "asr_small", "on-demand", "eu", "cpu", "draining", "62s", "gone",
         "1/4", "1", "0", "-", "0.3", "s", "ago"],
    ]  # fmt: skip
    # Columns line up: every text column starts where its header does, the last
    # (right-aligned) column ends where its header ends.
    pool_at = table[0].index("pool")
    assert all(line[pool_at:].startswith("asr_small") for line in table[1:])
    assert len({len(line) for line in table}) == 1


def test_instance_status_has_no_instance_table() -> None:
    snap = stt_pb2.TelemetrySnapshot(
        instance_id="small-a", role=stt_pb2.ROLE_ASR, pool="asr_small", model="tiny.en",
        state=stt_pb2.SERVING_STATE_SERVING, active_streams=1, max_streams=4,
        gpu_unavailable_reason="no NVML",
    )  # fmt: skip
    lines = format_status(snap).splitlines()
    assert lines[0].startswith("instance small-a: serving, 1/4 streams, 0 pending")
    assert lines[1].startswith("pool asr_small, model tiny.en")
    assert lines[2:] == ["no GPU: no NVML", lines[-1]] and lines[-1].startswith("host: ")


def test_a_client_certificate_without_its_key_is_bad_usage(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["status", "--cert", "client.pem"])
    assert exited.value.code == 2
    assert "--cert and --key go together" in capsys.readouterr().err


def test_a_reader_gone_away_ends_quietly_with_the_sigpipe_status(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`voxmesh status --watch | head` printed "error: [Errno 32] Broken pipe" and
    exited 1 once head had its lines."""

    async def reader_gone(args: object) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "_status", reader_gone)
    assert main(["status", "--target", "127.0.0.1:1"]) == 141
    assert capsys.readouterr().err == ""


def test_an_unreadable_ca_file_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "absent-ca.pem"
    assert main(["status", "--target", "127.0.0.1:1", "--ca", str(missing)]) == 1
    assert capsys.readouterr().err == f"error: No such file or directory: {missing}\n"
