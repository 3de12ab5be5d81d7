"""Every setting of every command, from one source: the config classes (DESIGN §1).

A config dataclass documents each field in its docstring's ``Attributes:`` section and declares
its range in field metadata (:class:`tabom.config.Range`); :func:`settings` reads both, with
the field's default. ``tabom COMMAND --help`` (:func:`help_text`) and the settings reference
docs/settings.md (:func:`settings_markdown`) are rendered from that list. Importing a command
imports torch (seconds on a busy CPU), so the lists are cached in ``cli_help.json``, which
``python -m tabom.cli --refresh-help`` regenerates (tests fail when cache or docs are stale).
"""

from __future__ import annotations

import inspect
import json
import re
import shutil
import textwrap
from dataclasses import MISSING, fields, is_dataclass
from itertools import takewhile
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from tabom import __version__

HELP_CACHE = Path(__file__).with_name("cli_help.json")
"""The settings of every command (:func:`settings`), generated from the config classes."""
USAGE = "usage: tabom {name} [--config FILE.yaml] [--field value ...]"


def field_docs(cls: type) -> dict[str, str]:
    """Each field's description in ``cls``'s docstring (Google style: an ``Attributes:``
    section of ``name: text`` entries, continuation lines indented deeper)."""
    lines = inspect.cleandoc(cls.__doc__ or "").partition("Attributes:")[2].splitlines()[1:]
    section = takewhile(lambda line: not line or line[0].isspace(), lines)  # to the next one
    docs: dict[str, str] = {}
    current = None
    for line in textwrap.dedent("\n".join(section)).splitlines():
        entry = re.match(r"(\w+):\s*(.*)", line)
        if entry and not line[0].isspace():
            current, docs[entry[1]] = entry[1], entry[2]
        elif line.strip() and current:
            docs[current] += " " + line.strip()
    return docs


def _default(f: Any, defaults: Any) -> Any:
    if defaults is not None:
        return getattr(defaults, f.name)
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else None


def settings(cls: type, prefix: str = "", defaults: Any = None) -> list[dict[str, str]]:
    """One ``{flag, default, accepts, doc}`` per field of ``cls``, nested groups expanded
    (``decode.top_p``); ``defaults``: the enclosing field's default group (the demo's ``loss``
    is not ``LossConfig()``), whose values are shown instead of the class defaults."""
    docs, hints = field_docs(cls), get_type_hints(cls)
    out = []
    for f in fields(cls):  # type: ignore[arg-type]
        default = _default(f, defaults)
        if is_dataclass(hints[f.name]):
            out += settings(hints[f.name], f"{prefix}{f.name}.", default)
            continue
        rng = f.metadata.get("range")
        accepts = rng.describe() if rng is not None else ""
        if get_origin(hints[f.name]) is Literal:
            accepts = "one of " + ", ".join(map(str, get_args(hints[f.name])))
        out.append(
            {
                "flag": prefix + f.name,
                "default": repr(default),
                "accepts": accepts,
                "doc": docs.get(f.name, ""),
            }
        )
    return out


def help_text(name: str, entry: dict[str, Any]) -> str:
    """``tabom NAME --help``: usage, summary and one line per setting (``entry``: a command's
    ``{summary, settings}``), reStructuredText markup as written."""
    lines = [USAGE.format(name=name), "", entry["summary"], "", "fields:"]
    for s in entry["settings"]:
        accepts = f"; {s['accepts']}" if s["accepts"] else ""
        lines.append(f"  --{s['flag']} (default {s['default']}{accepts}): {s['doc']}")
    return "\n".join(lines)


def _plain(text: str) -> str:
    """reStructuredText markup shown plainly: ````x```` -> ``x``, ``:func:`x``` -> ``x``."""
    return re.sub(r"``([^`]+)``", r"\1", re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", text))


def render_help(text: str, width: int | None = None) -> str:
    """Help text for a terminal: markup shown plainly and each field's line wrapped to
    ``width`` (default: the terminal's) under a hanging indent."""
    width = width or shutil.get_terminal_size((100, 24)).columns
    out = []
    for line in _plain(text).splitlines():
        indent = "      " if line.startswith("  --") else ""
        out.append(
            textwrap.fill(line, width=max(40, width - 1), subsequent_indent=indent)
            if line.strip()
            else line
        )
    return "\n".join(out)


def settings_markdown(commands: dict[str, dict[str, Any]]) -> str:
    """docs/settings.md: every command's settings as a table (the same list as ``--help``)."""
    out = [
        "# Settings reference",
        "",
        "Generated from the config classes (each field's docstring, default and declared range)",
        "by `python -m tabom.cli --refresh-help`, which also writes the `--help` texts: do not",
        "edit by hand. Every command takes `--config FILE.yaml` (these fields as keys, a group",
        "such as `decode` as a nested mapping) and `--field value` flags (`--decode.top_p 0.9`).",
        "Precedence: the dataclass defaults < a preset (`tabom demo --testbed`, `--protocol`,",
        "`--quick`: configs/demo) < the `--config` file < flags; a value you set wins even when",
        "it equals the default.",
    ]
    for name, entry in commands.items():
        out += ["", f"## tabom {name}", "", entry["summary"], ""]
        out += ["| flag | default | accepts | description |", "|---|---|---|---|"]
        for s in entry["settings"]:
            cells = [f"`--{s['flag']}`", f"`{s['default']}`", s["accepts"], _plain(s["doc"])]
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(out) + "\n"


FIELDS = ("flag", "default", "accepts", "doc")
"""A setting's keys; the cache stores each setting as one row of them."""


def cached_settings() -> dict[str, dict[str, Any]]:
    """The generated settings of this version, or nothing (then they are built live)."""
    try:
        data = json.loads(HELP_CACHE.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if data.get("version") != __version__:
        return {}
    commands = data.get("commands", {})
    return {
        name: {
            "summary": c["summary"],
            "settings": [dict(zip(FIELDS, r, strict=True)) for r in c["settings"]],
        }
        for name, c in commands.items()
    }


def write_cache(commands: dict[str, dict[str, Any]], docs: Path | None) -> list[Path]:
    """Write :data:`HELP_CACHE`, one line per setting (and ``docs``, the settings reference,
    when given)."""
    blocks = []
    for name, entry in commands.items():
        rows = ",\n".join(f"  {json.dumps([s[k] for k in FIELDS], ensure_ascii=False)}"
                           for s in entry["settings"])  # fmt: skip
        summary = json.dumps(entry["summary"], ensure_ascii=False)
        blocks.append(f' "{name}": {{"summary": {summary}, "settings": [\n{rows}\n ]}}')
    version = json.dumps(__version__)
    text = f'{{"version": {version}, "commands": {{\n' + ",\n".join(blocks) + "\n}}\n"
    HELP_CACHE.write_text(text, encoding="utf-8")
    if docs is None:
        return [HELP_CACHE]
    docs.write_text(settings_markdown(commands), encoding="utf-8")
    return [HELP_CACHE, docs]


__all__ = [
    "HELP_CACHE",
    "cached_settings",
    "field_docs",
    "help_text",
    "render_help",
    "settings",
    "settings_markdown",
    "write_cache",
]
