"""``--config FILE`` and ``key=value`` settings for commands whose settings are their flags.

``rlaif label`` and ``rlaif bon`` take every flag's setting from a YAML file as well, by the
flag's name with dashes as underscores (``tie_band: 0.05``; engine flags nested or dotted:
``engine: {backend: fake}`` / ``engine.backend=fake``), and as ``key=value`` words on the
command line. Precedence as everywhere in rlaif (:mod:`rlaif.settings`): a flag you typed,
then a ``key=value``, then the file, then the flag's default. Unknown keys are refused with
their source named; values are checked as the flag would check them.
"""

from __future__ import annotations

import argparse
from typing import Any

from rlaif.settings import SettingsError, check_keys, flatten, parse_override, read_yaml

NOT_SETTINGS = {"help", "config", "overrides", "overwrite", "quiet", "strict", "allow_failures", "version", "command"}


def add_config_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file with any of these settings, by flag name (flags and key=value win)")


def setting_actions(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The parser's settings by key (the flag's destination), hidden aliases left out."""
    out: dict[str, argparse.Action] = {}
    for a in p._actions:  # argparse keeps its actions here; there is no public accessor
        if a.dest in NOT_SETTINGS or a.dest == argparse.SUPPRESS or a.help == argparse.SUPPRESS:
            continue
        out.setdefault(a.dest, a)
    return out


def given_on_command_line(p: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """Destinations of the flags actually typed (parsed again with every default suppressed)."""
    saved = [(a, a.default, a.required) for a in p._actions]
    try:
        for a in p._actions:
            a.default, a.required = argparse.SUPPRESS, False
        ns, _ = p.parse_known_args(argv)
    finally:
        for a, default, required in saved:
            a.default, a.required = default, required
    return set(vars(ns))


def _convert(action: argparse.Action, key: str, value: Any, where: str) -> Any:
    bad = lambda why: SettingsError(f"{where}: {key}={value!r}: {why}")  # noqa: E731
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)):
        if not isinstance(value, bool):
            raise bad("expected true or false")
        if isinstance(action, argparse._StoreFalseAction):  # a flag that turns something off
            return not value
        return value
    if action.nargs not in (None, "?"):
        items = value if isinstance(value, (list, tuple)) else [value]
        if isinstance(action.nargs, int) and len(items) != action.nargs:
            raise bad(f"expected a list of {action.nargs} values")
        return [_convert_one(action, x, bad) for x in items]
    return _convert_one(action, value, bad)


def _convert_one(action: argparse.Action, value: Any, bad) -> Any:
    if value is not None and action.type is not None:
        if isinstance(value, bool) or isinstance(value, (list, dict)):
            raise bad(f"expected a {getattr(action.type, '__name__', 'value')}")
        try:
            value = action.type(value)
        except (TypeError, ValueError):
            raise bad(f"expected a {getattr(action.type, '__name__', 'value')}") from None
    elif value is not None and not isinstance(value, (str, int, float)):
        raise bad("expected a single value")
    elif value is not None and action.type is None:
        value = str(value)
    if action.choices is not None and value not in action.choices:
        raise bad(f"choose from {list(action.choices)}")
    return value


def apply_settings(p: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """Fill ``args`` from ``--config`` and ``key=value`` words (flags typed win); the keys applied."""
    actions = setting_actions(p)
    layers: list[tuple[str, dict[str, Any]]] = []
    if getattr(args, "config", None):
        layers.append((f"config file {args.config}", flatten(read_yaml(args.config))))
    overrides = dict(parse_override(item) for item in getattr(args, "overrides", None) or [])
    layers.append(("key=value", overrides))
    for where, values in layers:
        check_keys(values, actions, where)
    typed = given_on_command_line(p, argv)
    applied: dict[str, Any] = {}
    for where, values in layers:  # later layers win
        for key, value in values.items():
            if key not in typed:
                applied[key] = _convert(actions[key], key, value, where)
    for key, value in applied.items():
        setattr(args, key, value)
    return applied
