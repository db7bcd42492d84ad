"""One way to configure every command: a YAML file, ``key=value`` overrides, typed dataclasses.

Precedence, highest first, the same for ``generate``, ``label``, ``bon`` and ``train``:
command-line flags and ``key=value`` overrides, then the ``--config`` YAML file, then the
defaults. Keys are the settings' names, dotted for nested ones (``engine.backend=fake``,
``label.ensemble=8``, ``lora.enabled=true``); values are read as YAML (``lr=1e-5``,
``keep_ties=true``). A key the command does not know is refused with the file (or
"override") and the key named, and the valid keys listed. Files are read with
``yaml.safe_load`` (no code runs), as UTF-8 with an optional byte-order mark and CRLF lines.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from rlaif.data import textio


class SettingsError(ValueError):
    """A settings file, key or value that cannot be used; the message says which and why."""


def read_yaml(path: str | Path, error: type[Exception] = SettingsError) -> dict[str, Any]:
    """A YAML mapping from ``path``; every problem raised as ``error`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise error(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(textio.read_text(path, error)) or {}
    except yaml.YAMLError as exc:
        raise error(f"{path}: YAML syntax error: {exc}") from None
    if not isinstance(data, dict):
        raise error(f"{path}: a config file must be a YAML mapping")
    return data


def parse_override(item: str) -> tuple[str, Any]:
    """``a.b=value`` -> ("a.b", value parsed as YAML)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or key.startswith("-"):
        raise SettingsError(f"override {item!r} is not key=value")
    try:
        return key, yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise SettingsError(f"override {item!r}: the value is not valid YAML ({exc})") from None


def apply_overrides(d: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """A copy of nested mapping ``d`` with ``a.b=value`` overrides applied."""
    d = dict(d)
    for item in overrides:
        key, value = parse_override(item)
        *parents, leaf = key.split(".")
        node = d
        for p in parents:
            if node.get(p) is not None and not isinstance(node[p], dict):
                raise SettingsError(f"override {item!r}: {p!r} is a value, not a group of settings")
            node[p] = dict(node.get(p) or {})
            node = node[p]
        node[leaf] = value
    return d


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"engine": {"backend": "fake"}}`` -> ``{"engine.backend": "fake"}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def check_keys(keys: Iterable[str], allowed: Iterable[str], where: str) -> None:
    allowed = set(allowed)
    unknown = sorted(set(keys) - allowed)
    if unknown:
        raise SettingsError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(allowed)}")


def _coerce(tp: Any, value: Any, where: str, default: Any = None) -> Any:
    """Build nested dataclasses (over ``default``, the field's own default) and promote ints to
    floats where a float is declared."""
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return build(tp, value, where, base=default if dataclasses.is_dataclass(default) else None)
    args = typing.get_args(tp)
    if value is not None and type(None) in args and float in args and str not in args:
        tp = float  # an optional number (e.g. "target_kl: 1e-3") is a number when set
    if tp is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        # YAML 1.1 reads "1e-5" (no dot) as a string; a float field accepts it.
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{where}: expected a number, got {value!r}") from None
    if typing.get_origin(tp) is tuple and isinstance(value, list):
        return tuple(value)
    return value


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def build(cls, d: Mapping[str, Any], where: str = "", base: Any = None):
    """Dataclass ``cls`` from a plain (nested) mapping; unknown keys are an error naming their path.

    A nested section fills in over the field's default (``judge.engine: {dtype: float32}`` keeps the
    judge engine's other defaults); ``base``, an instance of ``cls``, supplies the values not given.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        at = f" under {where!r}" if where else ""
        raise ValueError(f"unknown {cls.__name__} key(s) {unknown}{at}; valid keys: {sorted(fields)}")
    values = {k: getattr(base, k) for k in fields} if base is not None else {}
    for k, v in d.items():
        default = values.get(k) if base is not None else _default(fields[k])
        values[k] = _coerce(hints[k], v, f"{where}.{k}" if where else k, default)
    return cls(**values)


def to_yaml(data: Mapping[str, Any]) -> str:
    """Resolved settings as YAML, in the order given (what run folders store)."""
    return yaml.safe_dump(dict(data), sort_keys=False, allow_unicode=True)
