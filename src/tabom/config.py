"""Typed configs: defaults < presets < a YAML file < ``--field value`` flags (DESIGN §1).

Every command's config is a dataclass (fields documented where declared, choices as
``Literal``), nested groups addressed with dots (``--model.hidden_size 256``). A field may
declare its range where it is declared, ``lr: float = field(default=2e-5, metadata=POSITIVE)``
(:class:`Range`); one generic check refuses a value outside it, naming the flag (``--lr``) and
what the field accepts. Every float must be finite. :func:`build_config` builds a config class
from a mapping of the values the user set; :func:`tabom.cli.load_config` reads them from YAML
and flags. An unknown field, a wrong type or a bad choice raises :class:`ConfigError` naming
the flag or the YAML file and key, before any compute starts.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from tabom.errors import TabomError

C = TypeVar("C")
NONE_WORDS = ("", "none", "null", "~")
"""Strings that mean ``None`` for an optional field (flags and YAML alike)."""


class ConfigError(TabomError):
    """A config value is unknown, mistyped or out of range; the message names where it came from."""


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a numeric field accepts (each list item, for a list field); ``None`` = open.

    Attributes:
        low: lower bound.
        high: upper bound.
        low_open: the bound itself is excluded (``> low``).
        high_open: the bound itself is excluded (``< high``).
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def accepts(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (
            self.high is not None and (value >= self.high if self.high_open else value > self.high)
        )

    def describe(self) -> str:
        """``>= 1``, ``> 0``, ``in [0, 1)``: what to write instead (always a possible value)."""
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"in {left}{self.low:g}, {self.high:g}{right}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return "any finite number"


def in_range(
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> dict[str, Range]:
    """Field metadata declaring a :class:`Range` (``field(default=..., metadata=in_range(0, 1))``)."""
    return {"range": Range(low, high, low_open, high_open)}


POSITIVE = in_range(0, low_open=True)
"""``> 0`` (a learning rate, a scale)."""
NON_NEGATIVE = in_range(0)
"""``>= 0`` (a weight, a margin, a count that may be 0 = off)."""
AT_LEAST_1 = in_range(1)
"""``>= 1`` (a size, a number of steps)."""
UNIT = in_range(0, 1)
"""``[0, 1]`` (a ratio)."""
PROBABILITY = in_range(0, 1, low_open=True)
"""``(0, 1]`` (top-p, a threshold)."""
LEARNING_RATE = in_range(0, 1e30, low_open=True)
"""``(0, 1e30]``: AdamW's float32 step (lr / (1 - β1)) overflows near 3.4e37; any rate this
large diverges, which training then reports as a non-finite gradient."""


def _check_range(value: Any, metadata: Any, where: str) -> None:
    """Refuse a number outside the field's declared :class:`Range` (items of a list too)."""
    rng = metadata.get("range") if metadata else None
    if rng is None or value is None:
        return
    for i, v in enumerate(value) if isinstance(value, (list, tuple)) else [(None, value)]:
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not rng.accepts(v):
            at = where if i is None else f"{where}[{i}]"
            raise ConfigError(f"{at}: {v!r} is out of range; it must be {rng.describe()}")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def check_ranges(cfg: Any) -> None:
    """Refuse a field of ``cfg`` outside its declared :class:`Range` or ``Literal`` choices, a
    non-finite float or a non-integer for an ``int`` (for ``__post_init__``).

    Flags and YAML are checked by :func:`tabom.cli.load_config` before ``cfg`` is built (naming the flag);
    this is the same check for a config built in Python, naming the field.

    Raises:
        ConfigError: the first such field, with what it accepts.
    """
    hints = _hints(type(cfg))  # once per class: annotations are strings
    for f in dataclasses.fields(cfg):
        value, tp = getattr(cfg, f.name), hints[f.name]
        if any(get_origin(a) is Literal for a in (tp, *get_args(tp))):
            convert_value(value, tp, f.name)  # a choice (or another member of the union)
        elif int in (tp, *get_args(tp)) and float not in get_args(tp) and isinstance(
            value, (bool, float)
        ):
            raise ConfigError(f"{f.name}: expected an integer, got {value!r}")
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{f.name}: {value!r} is not a finite number")
        _check_range(value, f.metadata, f.name)


def split_list(text: str) -> list[str]:
    """``a,b`` -> ``[a, b]``, keeping a task spec's own commas: a piece ``key=value`` with no
    ``:`` continues the previous ``name:key=value`` item, so
    ``addition:min_digits=1,max_digits=3,sudoku`` is two specs, not three."""
    items: list[str] = []
    for piece in text.split(","):
        if items and "=" in piece and ":" not in piece and ":" in items[-1]:
            items[-1] += "," + piece
        elif piece != "":
            items.append(piece)
    return items


def convert_value(value: Any, tp: Any, where: str, construct: bool = True) -> Any:
    """Check/coerce ``value`` against the annotation ``tp``; ``where`` names the source.

    With ``construct=False`` nested dataclass groups are checked field by field (names and
    types) but not built, so their ``__post_init__`` cross-field checks do not run.
    """
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if type(None) in args and (
            value is None or (isinstance(value, str) and value.strip().lower() in NONE_WORDS)
        ):
            return None  # ``--data none`` and YAML ``data: none`` alike
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return convert_value(value, arg, where, construct)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = split_list(value)
        elif isinstance(value, (int, float, bool)):
            value = [value]  # `--ks 1` reads as a scalar: a one-item list
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (inner, *_) = get_args(tp) or (Any,)
        items = [convert_value(v, inner, f"{where}[{i}]", construct) for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields")
        return _build(tp, value, where, construct=construct)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{where}: {value!r} is not a finite number")
        return number
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def _build(cls: type[C], values: dict[str, Any], where: str, construct: bool = True) -> Any:
    """``cls(**values)`` with every value checked against its annotation.

    With ``construct=False`` only the keys and types are checked (recursively into nested
    groups) and the converted mapping is returned: ``cls`` is not instantiated, so a partial
    tree (a YAML file that a flag completes) is not refused by ``__post_init__``.
    """
    hints = _hints(cls)
    meta = {f.name: f.metadata for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values = _onto_group_defaults(cls, values)
    kwargs = {}
    for key, value in values.items():
        if key not in meta:
            raise ConfigError(
                f"{where}: unknown field {key!r} for {cls.__name__} "
                f"(known: {', '.join(sorted(meta))})"
            )
        at = f"{where}.{key}" if where else key
        kwargs[key] = convert_value(value, hints[key], at, construct)
        _check_range(kwargs[key], meta[key], at)
    if not construct:
        return kwargs
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(_name_the_flag(str(e), where, set(meta), cls.__name__)) from None


def convert(cls: type, values: dict[str, Any], where: str = "") -> dict[str, Any]:
    """``values`` (some fields of the config class ``cls``) checked and converted, not built:
    types, choices and declared ranges, as flags and YAML are (``"0.9"`` -> 0.9, ``"none"`` ->
    None for an optional field).

    Raises:
        ConfigError: an unknown key or a bad value, naming ``where.key``.
    """
    return _build(cls, values, where, construct=False)


def _name_the_flag(message: str, where: str, names: set[str], cls_name: str) -> str:
    """A group's own error (``td_window must be >= 1``) with its full flag (``--loss.td_window``).

    A group validates its fields by their own names; nested at ``where`` the flag is
    ``--where.field``. Messages that start with another word get ``where:`` (or the class) in
    front.
    """
    head = message.split(" ", 1)[0].rstrip(":")
    if head.split(".")[0].split("[")[0] in names:
        return f"--{where}.{message}" if where else f"--{message}"
    return f"{where}: {message}" if where else f"{cls_name}: {message}"


def _onto_group_defaults(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """Overrides of a nested group start from the *field's* default group, not the group class's.

    ``DistillConfig.decode`` defaults to ``DecodeConfig(temperature=1.0)``: ``--decode.score
    entropy`` keeps that temperature.
    """
    out = dict(values)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        given = out.get(f.name)
        if not isinstance(given, dict) or f.default_factory is dataclasses.MISSING:
            continue
        default = f.default_factory()
        if dataclasses.is_dataclass(default):
            base = {g.name: getattr(default, g.name) for g in dataclasses.fields(default)}
            out[f.name] = {**base, **given}
    return out


def merge_trees(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on ``base``, nested mappings merged key by key (``over`` wins)."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge_trees(out[k], v)
        else:
            out[k] = v
    return out


def with_presets(cls: type, given: dict[str, Any]) -> dict[str, Any]:
    """``given`` (what the user set) over the presets it selects, in ``cls`` and its groups.

    A config class may define ``presets(given) -> dict``: values that go under the user's (the
    demo's testbed files, :mod:`tabom.commands.demo.config`). The order is dataclass defaults <
    presets < the user's YAML file < flags: a value the user set wins even when it equals the
    default.
    """
    hook = getattr(cls, "presets", None)
    out = merge_trees(hook(given), given) if hook is not None else dict(given)
    hints = _hints(cls)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        sub = out.get(f.name, {})
        if dataclasses.is_dataclass(hints[f.name]) and isinstance(sub, dict):
            sub = with_presets(hints[f.name], sub)
            if sub:
                out[f.name] = sub
    return out


def build_config(cls: type[C], values: dict[str, Any] | None = None, where: str = "") -> C:
    """``cls`` from a mapping of what the user set (nested groups as mappings), over its
    presets (:func:`with_presets`) and defaults; every value checked against its annotation.

    Raises:
        ConfigError: unknown field, wrong type, out of range or invalid combination.
    """
    return _build(cls, with_presets(cls, values or {}), where)


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


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON/YAML-ready dict of a config dataclass."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (what a run actually used)."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))

