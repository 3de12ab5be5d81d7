"""Typed configs: dataclass defaults, overridden by a YAML file, then by ``--field value`` flags.

Every command's config is a dataclass (fields documented where declared, choices as
``Literal``). Nested dataclasses are addressed with dots (``--model.hidden_size 256``). An
unknown field, a value of the wrong type or a bad choice raises :class:`ConfigError` naming the
flag or the YAML file and key, before any compute starts (DESIGN §1).

Numbers: every float must be finite, and a field may declare its range where it is declared,
``lr: float = field(default=2e-5, metadata=POSITIVE)`` (:class:`Range`); one generic check
refuses a value outside it, naming the flag (``--lr``) and what the field accepts. The field
machinery (ranges, conversion, groups, presets) is :mod:`tabom.config_fields`, re-exported here;
this module reads flags and YAML files (:func:`load_config`).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from tabom.config_fields import (
    AT_LEAST_1,
    LEARNING_RATE,
    NON_NEGATIVE,
    NONE_WORDS,
    POSITIVE,
    PROBABILITY,
    UNIT,
    C,
    ConfigError,
    Range,
    build_config,
    check_ranges,
    convert,
    convert_value,
    in_range,
    merge_trees,
    save_config,
    split_list,
    to_dict,
    with_presets,
)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--{dotted}: {p!r} is not a group of fields")
    node[leaf] = value


def _check_flag(cls: type, dotted: str) -> tuple[Any, bool]:
    """``(annotation, optional)`` of ``dotted`` in ``cls``, or a ConfigError naming the flag."""
    tp: Any = cls
    optional = False
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(tp):
            raise ConfigError(f"--{dotted}: {part!r} is not a field (its parent is not a group)")
        hints = get_type_hints(tp)
        if part not in hints:
            raise ConfigError(unknown_flag(dotted, sorted(all_flags(cls))))
        tp = hints[part]
        args = [a for a in get_args(tp) if a is not type(None)]
        optional = get_origin(tp) in (Union, types.UnionType) and type(None) in get_args(tp)
        if get_origin(tp) in (Union, types.UnionType) and len(args) == 1:
            tp = args[0]
    return tp, optional


def all_flags(cls: type, prefix: str = "") -> list[str]:
    """Every dotted field name of ``cls`` (``lr``, ``loss.td_window``), groups expanded."""
    out = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += all_flags(tp, f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


def unknown_flag(dotted: str, known: list[str]) -> str:
    """``--lrr: unknown flag; did you mean --lr?`` (the closest known spellings, or a hint)."""
    close = difflib.get_close_matches(dotted, known, n=3, cutoff=0.6)
    if not close:  # a group's field given without its group: --td_window for --loss.td_window
        close = [k for k in known if k.rsplit(".", 1)[-1] == dotted.rsplit(".", 1)[-1]]
    if close:
        return f"--{dotted}: unknown flag; did you mean {' or '.join('--' + c for c in close)}?"
    return f"--{dotted}: unknown flag (--help lists the {len(known)} flags)"


def parse_overrides(cls: type, argv: list[str]) -> dict[str, Any]:
    """``['--a.b', '1', '--c=x', '--flag']`` -> nested dict, validated against ``cls``'s fields."""
    tree: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}: overrides look like --field value")
        key, eq, raw = arg[2:].partition("=")
        key = key.replace("-", "_")
        tp, optional = _check_flag(cls, key)
        if not eq:
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            if tp is bool and (nxt is None or nxt.startswith("--")):
                raw, i = "true", i + 1
            elif nxt is None:
                raise ConfigError(f"--{key}: missing value")
            else:
                raw, i = nxt, i + 2
        else:
            i += 1
        value: Any = raw
        if optional and raw.strip().lower() in NONE_WORDS:
            value = None
        elif get_origin(tp) is Literal and raw in get_args(tp):
            value = raw  # a choice like "no" stays a string, not YAML's false
        elif tp is not str:
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError:
                value = raw
            if value is None and raw.strip().lower() not in ("null", "none", "~"):
                value = raw
        _set_dotted(tree, key, value)
    return tree


def read_yaml(path: Path) -> Any:
    """A YAML file's data; plain YAML only (no ``!!python`` tags).

    Raises:
        ConfigError: unreadable or not valid YAML (names the file, line and column).
    """
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a UTF-8 text file ({e.reason})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        if "\\t" in problem or "\t" in problem:  # PyYAML writes a tab as \t
            problem += " (YAML indents with spaces, not tabs)"
        raise ConfigError(f"{path}: {at}not valid YAML: {problem}") from None


def load_config(
    cls: type[C], config_file: str | Path | None = None, argv: list[str] | None = None
) -> C:
    """Build ``cls`` from its defaults, its presets, a YAML file and ``--field value``
    overrides (in that order; :func:`build_config`).

    Raises:
        ConfigError: unknown field, wrong type or invalid combination; names the flag or file.
    """
    tree: dict[str, Any] = {}
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"--config: no such file {path}")
        loaded = read_yaml(path) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of config fields at the top level")
        try:  # keys and types of the file alone, so errors name it; no __post_init__ yet
            convert(cls, loaded)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
        tree = loaded
    if argv:
        overrides = parse_overrides(cls, argv)
        try:  # the flags' values alone, so errors name the flag (``--lr``)
            convert(cls, overrides)
        except ConfigError as e:
            raise ConfigError(f"--{e}") from None
        tree = merge_trees(tree, overrides)
    return build_config(cls, tree)


__all__ = [
    "AT_LEAST_1",
    "LEARNING_RATE",
    "NONE_WORDS",
    "NON_NEGATIVE",
    "POSITIVE",
    "PROBABILITY",
    "UNIT",
    "ConfigError",
    "all_flags",
    "build_config",
    "Range",
    "check_ranges",
    "convert",
    "convert_value",
    "in_range",
    "load_config",
    "merge_trees",
    "parse_overrides",
    "read_yaml",
    "save_config",
    "split_list",
    "to_dict",
    "unknown_flag",
    "with_presets",
]
