"""Typed settings: one frozen dataclass per service, built once at start-up.

Each field of a settings dataclass may be given, in increasing precedence, by
its default, an environment variable ``<PREFIX>_<FIELD>`` (for example
``VOXMESH_ASR_MAX_STREAMS``) or a command-line flag ``--max-streams``. The help
text of a flag is the field's ``metadata["help"]``. Values are converted to the
field's type and validated; errors name the setting and the value. A float setting
must be finite: ``nan`` or ``inf`` given as a string is refused (no setting means
"forever" by ``inf``; one that ever needs it must say so with its own sentinel).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from voxmesh.errors import SettingsError

__all__ = ["load", "pairs", "setting"]

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def setting(default: Any, help: str, **metadata: Any) -> Any:
    """A dataclass field with its help text (shown by ``--help``)."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


def _convert(name: str, raw: str, kind: Any) -> Any:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if raw == "" or raw.lower() == "none":
            return None
        return _convert(name, raw, args[0])
    if origin is tuple:
        (inner, *_rest) = typing.get_args(kind)
        return tuple(_convert(name, part.strip(), inner) for part in raw.split(",") if part.strip())
    try:
        if kind is bool:
            low = raw.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError(raw)
        if kind is int:
            return int(raw)
        if kind is float:
            value = float(raw)
            if not math.isfinite(value):
                raise SettingsError(f"setting {name}={raw!r}: expected a finite number")
            return value
        if kind is str:
            return raw
    except ValueError:
        raise SettingsError(
            f"setting {name}={raw!r}: expected {getattr(kind, '__name__', kind)}"
        ) from None
    raise SettingsError(f"setting {name}: unsupported type {kind!r}")


def load(
    cls: type[T],
    *,
    prefix: str,
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
    description: str | None = None,
) -> T:
    """Builds ``cls`` from ``defaults`` (else the class's), ``env``, ``argv`` and
    ``overrides``, each overriding the one before.

    ``cls`` may define ``validate(self) -> None`` raising :class:`SettingsError`.
    An environment variable under ``prefix`` that names no setting is an error, not
    ignored: a misspelt one would otherwise leave its setting at the default unseen.
    """
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
    values: dict[str, Any] = dict(defaults or {})
    env = env or {}
    known = [f"{prefix}_{f.name.upper()}" for f in fields]
    for key in sorted(env):
        if key.startswith(f"{prefix}_") and key not in known:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.85)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise SettingsError(f"environment variable {key} is not a setting{hint}")
    for f in fields:
        key = f"{prefix}_{f.name.upper()}"
        if key in env:
            values[f.name] = _convert(key, env[key], hints[f.name])
    if argv is not None:
        parser = argparse.ArgumentParser(description=description or cls.__doc__)
        for f in fields:
            parser.add_argument(
                "--" + f.name.replace("_", "-"),
                dest=f.name,
                default=None,
                help=f"{f.metadata.get('help', '')} (env {prefix}_{f.name.upper()}, "
                f"default {values.get(f.name, f.default)!r})",
            )
        parsed = parser.parse_args(list(argv))
        for f in fields:
            raw = getattr(parsed, f.name)
            if raw is not None:
                values[f.name] = _convert("--" + f.name.replace("_", "-"), raw, hints[f.name])
    values.update(overrides or {})
    obj = cls(**values)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def pairs(name: str, items: Sequence[str], form: str = "key=value") -> dict[str, str]:
    """A ``key=value`` list setting as a dict; an item without both sides raises
    SettingsError naming the setting and the expected ``form``."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise SettingsError(f"setting {name}: {item!r} is not {form}")
        out[key.strip()] = value.strip()
    return out
