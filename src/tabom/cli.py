"""The ``tabom`` command line: argv -> config -> ``tabom.commands.NAME`` (DESIGN §1, §8).

Each subcommand takes ``--config FILE.yaml`` plus ``--field value`` overrides of its config
dataclass (dots for nested groups: ``--decode.threshold``, ``--loss.td_window``). Every
:class:`tabom.errors.TabomError` a command raises is one line on stderr and exit code 2.
``main(argv) -> int`` is what tests call; ``python -m tabom`` runs it too.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib
import os
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from tabom import __version__
from tabom.cli_help import cached_settings, help_text, render_help, settings, write_cache
from tabom.config import NONE_WORDS, C, ConfigError, build_config, convert, merge_trees, read_yaml
from tabom.errors import TabomError

COMMANDS = {
    "pretrain": (
        "train a tiny DLM from scratch on built-in tasks (the old domain)",
        "pretrain:PretrainConfig:run_pretrain",
    ),
    "eval": ("accuracy and pass@k under diffusion decoding on tasks", "eval:EvalConfig:run_eval"),
    "likelihood": (
        "NELBO per token and perplexity bound of reference answers or a text file",
        "likelihood:LikelihoodRunConfig:run_likelihood",
    ),
    "distill": (
        "decode prompts with the model itself and write verified trajectories",
        "distill:DistillConfig:run_distill",
    ),
    "inspect": (
        "summarise a trajectory file and draw one trajectory (tabom inspect FILE)",
        "inspect:InspectConfig:run_inspect",
    ),
    "train": (
        "post-train on trajectories or ground truth: sft, traj-sft, td, tabom, puma, papl",
        "train:TrainConfig:run_train",
    ),
    "export": (
        "write a trained LLaDA / Dream model back in its hub layout and names",
        "export:ExportConfig:run",
    ),
    "demo": (
        "the whole pipeline on the shipped base model: distill, train 4 objectives, "
        "evaluate, report.md (--quick: a smoke run)",
        "demo.pipeline:DemoConfig:run_demo",
    ),
    "sweep": (
        "a small validation-only sweep of TABOM's settings around the demo",
        "demo.sweep:SweepConfig:run_sweep",
    ),
}
"""name -> (summary, ``module:ConfigClass:runner`` under ``tabom.commands``)."""


def _commands() -> dict[str, tuple[str, Callable[[], tuple[type, Callable[[Any], Any]]]]]:
    """name -> (summary, lazy loader of (config class, runner)): a command imports torch."""

    def loader(where: str) -> Callable[[], tuple[type, Callable[[Any], Any]]]:
        module, cfg_cls, runner = where.split(":")

        def load() -> tuple[type, Callable[[Any], Any]]:
            found = importlib.import_module(f"tabom.commands.{module}")
            return getattr(found, cfg_cls), getattr(found, runner)

        return load

    return {name: (summary, loader(where)) for name, (summary, where) in COMMANDS.items()}


DOCS = Path(__file__).resolve().parents[2] / "docs" / "settings.md"
"""The settings reference that ``--refresh-help`` writes too, in a clone (docs/ is not installed)."""


def live_settings() -> dict[str, dict[str, Any]]:
    """Every command's summary and settings, built by importing each command (the cache's
    content, :func:`tabom.cli_help.settings`)."""
    return {
        name: {"summary": summary, "settings": settings(loader()[0])}
        for name, (summary, loader) in _commands().items()
    }


IO_ERRORS = ("SafetensorError",)
"""Exception types (by name: their libraries load late) whose I/O failures are the machine's
(a full disk while writing safetensors), reported like an ``OSError``."""


def _one_line(e: BaseException) -> str:
    """An exception as one line: an OS error as ``FILE: reason``, not ``[Errno 2] ...``."""
    if isinstance(e, OSError) and e.strerror and e.filename:
        return f"{e.filename}: {e.strerror}"
    return " ".join(str(e).split()) or type(e).__name__


def run_command(name: str, runner: Callable[[Any], Any], cfg: Any) -> int:
    """``runner(cfg)`` as command ``name``: a :class:`TabomError` or a missing file is one line
    on stderr and exit code 2, for every command; so is an OS error (a full disk, no
    permission; also safetensors' own I/O error), which is the machine's to fix, not a bug to
    trace."""
    try:
        result = runner(cfg)
    except (TabomError, OSError) as e:
        print(f"tabom {name}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:
        if type(e).__name__ not in IO_ERRORS or "Io" not in str(e):
            raise
        print(f"tabom {name}: error: writing failed: {_one_line(e)}", file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0


INPUT_FILES = {
    "train": ("data",),
    "inspect": ("path",),
    "eval": ("adapter", "trajectories"),
}
"""Flags that name an existing local file or folder, checked before torch is imported."""


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

def precheck(name: str, rest: list[str]) -> str | None:
    """The first problem with ``rest`` found without importing torch, as an error line.

    Flags are checked against the generated settings of ``name`` (``cli_help.json``; skipped
    when it is missing or stale), with the closest spellings; :data:`INPUT_FILES` and ``--config``
    must exist. ``None``: nothing found (the full check still runs after the import).
    """
    known = [s["flag"] for s in cached_settings().get(name, {}).get("settings", [])]
    given: dict[str, str | None] = {}
    for i, arg in enumerate(rest):
        if not arg.startswith("--"):
            continue
        key, eq, value = arg[2:].partition("=")
        key = key.replace("-", "_")
        nxt = rest[i + 1] if i + 1 < len(rest) and not rest[i + 1].startswith("--") else None
        given[key] = value if eq else nxt
        if known and key != "config" and key not in known:
            return unknown_flag(key, known)
    if given.get("config") and not os.path.isfile(str(given["config"])):
        return f"--config: no such file {given['config']}"
    for key in INPUT_FILES.get(name, ()):
        value = given.get(key)
        if value and value.lower() not in ("none", "null", "~") and not os.path.exists(value):
            return f"--{key}: no such file or folder {value}"
    return None


def _print(text: str) -> None:
    """``print`` that ends quietly when the reader of stdout has gone (``| head``)."""
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:
        _stdout_gone()


def _stdout_gone() -> None:
    """Point stdout at /dev/null so the interpreter's final flush raises nothing."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tabom`` console script; returns the exit code."""
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    except BrokenPipeError:  # stdout closed by its reader (``tabom eval | head``)?
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            _stdout_gone()
            return 0
        raise  # another pipe or socket: not the reader of our output


def _main(argv: list[str]) -> int:
    commands = _commands()
    parser = argparse.ArgumentParser(
        prog="tabom",
        description="Post-train masked diffusion LMs with TABOM (trajectory-aligned "
        "optimization via Boltzmann modeling).",
        epilog="Each command takes --config FILE.yaml and --field value overrides; "
        "`tabom COMMAND --help` lists the fields.",
    )
    parser.add_argument("--version", action="version", version=f"tabom {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (summary, _) in commands.items():
        sub.add_parser(name, help=summary, add_help=False)
    if argv == ["--refresh-help"]:  # maintainers: after changing a config field
        for path in write_cache(live_settings(), DOCS if DOCS.parent.is_dir() else None):
            print(f"wrote {path}")
        return 0
    if argv and argv[0] == "--version":
        print(f"tabom {__version__}")
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        _print(parser.format_help().rstrip())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in commands:
        close = difflib.get_close_matches(name, list(commands), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        print(
            f"tabom: error: unknown command {name!r} ({hint}commands: {', '.join(commands)})",
            file=sys.stderr,
        )
        return 2
    summary, loader = commands[name]
    if "-h" in rest or "--help" in rest:
        entry = cached_settings().get(name)  # no torch import: well under a second
        entry = entry or {"summary": summary, "settings": settings(loader()[0])}
        _print(render_help(help_text(name, entry)))
        return 0
    if rest and not rest[0].startswith("-") and name == "inspect":
        rest = ["--path", *rest]  # a positional first argument is the config's ``path``
    problem = precheck(name, rest)  # before torch: a misspelled flag, a missing file
    if problem is not None:
        print(f"tabom {name}: error: {problem}", file=sys.stderr)
        return 2
    cfg_cls, runner = loader()
    config_file = None
    if "--config" in rest:
        i = rest.index("--config")
        if i + 1 >= len(rest):
            print("tabom: error: --config needs a file", file=sys.stderr)
            return 2
        config_file = rest[i + 1]
        rest = rest[:i] + rest[i + 2 :]
    try:
        cfg = load_config(cfg_cls, config_file, rest)
    except ConfigError as e:
        print(f"tabom {name}: error: {e}", file=sys.stderr)
        return 2
    return run_command(name, runner, cfg)


if __name__ == "__main__":
    raise SystemExit(main())
