"""The ``tabom`` command line: argv -> config -> ``tabom.commands.NAME`` (DESIGN §1, §8).

Each subcommand takes ``--config FILE.yaml`` plus ``--field value`` overrides of its config
dataclass (dots for nested groups: ``--decode.threshold``, ``--loss.td_window``). Every
:class:`tabom.errors.TabomError` a command raises is one line on stderr and exit code 2.
``main(argv) -> int`` is what tests call; ``python -m tabom`` runs it too.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path
from typing import Any, get_type_hints

from tabom import __version__
from tabom.config import ConfigError, load_config
from tabom.errors import TabomError


def _field_help(cls: type, prefix: str = "", defaults: Any = None) -> list[str]:
    """One line per config field, from the class docstring's Attributes section.

    ``defaults``: the enclosing field's default group (the demo's ``loss`` is not
    ``LossConfig()``), whose values are shown instead of the class defaults.
    """
    doc = cls.__doc__ or ""
    described: dict[str, str] = {}
    if "Attributes:" in doc:
        current = None
        for line in doc.split("Attributes:", 1)[1].splitlines():
            stripped = line.strip()
            if not stripped:
                continue
            name, sep, rest = stripped.partition(":")
            if (
                sep
                and name.isidentifier()
                and line.startswith(" " * 8)
                and not line.startswith(" " * 12)
            ):
                current = name
                described[name] = rest.strip()
            elif current:
                described[current] += " " + stripped
    lines = []
    hints = get_type_hints(cls)
    for f in fields(cls):
        tp = hints[f.name]
        if defaults is not None:
            default = getattr(defaults, f.name)
        elif f.default is not MISSING:
            default = f.default
        elif f.default_factory is not MISSING:
            default = f.default_factory()
        else:
            default = None
        if is_dataclass(tp):
            lines.extend(_field_help(tp, prefix=f"{prefix}{f.name}.", defaults=default))
            continue
        rng = f.metadata.get("range")
        accepts = f"; {rng.describe()}" if rng is not None else ""
        lines.append(
            f"  --{prefix}{f.name} (default {default!r}{accepts}): {described.get(f.name, '')}"
        )
    return lines


def _commands() -> dict[str, tuple[str, Callable[[], tuple[type, Callable[[Any], Any]]]]]:
    """name -> (summary, lazy loader of (config class, runner)); runners live in tabom.commands."""

    def pretrain():
        from tabom.commands.pretrain import PretrainConfig, run_pretrain

        return PretrainConfig, run_pretrain

    def evaluate():
        from tabom.commands.eval import EvalConfig, run_eval

        return EvalConfig, run_eval

    def likelihood():
        from tabom.commands.likelihood import LikelihoodRunConfig, run_likelihood

        return LikelihoodRunConfig, run_likelihood

    def distill():
        from tabom.commands.distill import DistillConfig, run_distill

        return DistillConfig, run_distill

    def inspect():
        from tabom.commands.inspect import InspectConfig, run_inspect

        return InspectConfig, run_inspect

    def train():
        from tabom.commands.train import TrainConfig, run_train

        return TrainConfig, run_train

    def export():
        from tabom.commands.export import ExportConfig, run

        return ExportConfig, run

    def demo():
        from tabom.commands.demo.config import DemoConfig
        from tabom.commands.demo.pipeline import run_demo

        return DemoConfig, run_demo

    def sweep():
        from tabom.commands.demo.sweep import SweepConfig, run_sweep

        return SweepConfig, run_sweep

    return {
        "pretrain": ("train a tiny DLM from scratch on built-in tasks (the old domain)", pretrain),
        "eval": ("accuracy and pass@k under diffusion decoding on tasks", evaluate),
        "likelihood": (
            "NELBO per token and perplexity bound of reference answers or a text file",
            likelihood,
        ),
        "distill": (
            "decode prompts with the model itself and write verified trajectories",
            distill,
        ),
        "inspect": (
            "summarise a trajectory file and draw one trajectory (tabom inspect FILE)",
            inspect,
        ),
        "train": (
            "post-train on trajectories or ground truth: sft, traj-sft, td, tabom, puma, papl",
            train,
        ),
        "export": ("write a trained LLaDA / Dream model back in its hub layout and names", export),
        "demo": (
            "the whole pipeline on the shipped base model: distill, train 4 objectives, "
            "evaluate, report.md (--quick: a smoke run)",
            demo,
        ),
        "sweep": ("a small validation-only sweep of TABOM's settings around the demo", sweep),
    }


HELP_CACHE = Path(__file__).with_name("cli_help.json")
"""``tabom COMMAND --help`` texts, generated from the config classes by
``python -m tabom.cli --refresh-help`` (a test fails when they differ from the live ones):
importing a command means importing torch, several seconds on a busy CPU, for a page of text."""


def command_help(name: str, summary: str, cfg_cls: type) -> str:
    """The ``--help`` text of one command, from its config class (docstring and fields)."""
    head = f"usage: tabom {name} [--config FILE.yaml] [--field value ...]\n\n{summary}\n"
    return "\n".join([head, "fields:", *_field_help(cfg_cls)])


def _cached_help() -> dict[str, str]:
    """The generated help texts of this version, or nothing (then the live text is built)."""
    try:
        data = json.loads(HELP_CACHE.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data.get("help", {}) if data.get("version") == __version__ else {}


def live_help() -> dict[str, str]:
    """Every command's ``--help`` text, built by importing each command (what the cache holds)."""
    return {
        name: command_help(name, summary, loader()[0])
        for name, (summary, loader) in _commands().items()
    }


def refresh_help() -> Path:
    """Regenerate :data:`HELP_CACHE` from the config classes."""
    payload = {"version": __version__, "help": live_help()}
    HELP_CACHE.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n", "utf-8")
    return HELP_CACHE


def run_command(name: str, runner: Callable[[Any], Any], cfg: Any) -> int:
    """``runner(cfg)`` as command ``name``: a :class:`TabomError` or a missing file is one line
    on stderr and exit code 2, for every command; so is an OS error (a full disk, no
    permission), which is the machine's to fix, not a bug to trace."""
    try:
        result = runner(cfg)
    except (TabomError, OSError) as e:
        print(f"tabom {name}: error: {e}", file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tabom`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
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
        print(f"wrote {refresh_help()}")
        return 0
    if argv and argv[0] == "--version":
        print(f"tabom {__version__}")
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    name, rest = argv[0], argv[1:]
    if name not in commands:
        parser.error(f"unknown command {name!r} (choose from {', '.join(commands)})")
    summary, loader = commands[name]
    if "-h" in rest or "--help" in rest:
        cached = _cached_help().get(name)  # no torch import: well under a second
        print(cached if cached is not None else command_help(name, summary, loader()[0]))
        return 0
    cfg_cls, runner = loader()
    if rest and not rest[0].startswith("-") and "path" in {f.name for f in fields(cfg_cls)}:
        rest = ["--path", *rest]  # a positional first argument is the config's ``path``
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
