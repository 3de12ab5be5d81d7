"""Issue 13, config: every numeric setting of every command refuses non-finite and out-of-range
values with the flag named, through the CLI, before any work; advice is always possible."""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
import types
from pathlib import Path
from typing import Union, get_args, get_origin, get_type_hints

import pytest

from tabom import cli, cli_help
from tabom.cli import main
from test_faults_files import TASK, flag, one_line_error

# Config classes in one place (the command layer may move / rename them).
CONFIGS = {
    "pretrain": "tabom.commands.pretrain:PretrainConfig",
    "distill": "tabom.commands.distill:DistillConfig",
    "train": "tabom.commands.train:TrainConfig",
    "eval": "tabom.commands.eval:EvalConfig",
    "inspect": "tabom.commands.inspect:InspectConfig",
    "demo": "tabom.commands.demo.config:DemoConfig",
    "sweep": "tabom.commands.demo.sweep:SweepConfig",
    "export": "tabom.commands.export:ExportConfig",
}


def forbid_running(monkeypatch) -> None:
    """Fail the test if a command gets past its config (the CLI's lazy loaders give
    ``(config class, runner)``): a missing check must not start a whole demo."""
    real = cli._commands

    def forbidden(cfg):
        raise AssertionError(f"the command ran with {cfg}")

    def guarded():
        return {n: (s, lambda load=load: (load()[0], forbidden)) for n, (s, load) in real().items()}

    monkeypatch.setattr(cli, "_commands", guarded)


pytestmark = pytest.mark.usefixtures("one_thread")  # model_dir, one_thread: conftest.py


@pytest.fixture(scope="module")
def traj(model_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("traj") / "t.jsonl"
    argv = ["distill", flag("model"), model_dir, flag("task"), TASK, flag("n_prompts"), "4"]
    argv += [flag("n_samples"), "2", flag("ks"), "1", flag("keep"), "all"]
    argv += [flag("progress"), "false", flag("output"), str(path)]
    assert main(argv) == 0
    return path


def _numeric_fields(cls: type, prefix: str = "") -> list[tuple[str, type]]:
    """``(dotted name, int | float)`` of every numeric field, nested groups included."""
    out = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if get_origin(tp) in (Union, types.UnionType):
            args = [a for a in get_args(tp) if a is not type(None)]
            tp = args[0] if len(args) == 1 else tp
        if get_origin(tp) is list:
            (tp,) = get_args(tp)
        if dataclasses.is_dataclass(tp):
            out += _numeric_fields(tp, f"{prefix}{f.name}.")
        elif tp in (int, float):
            out.append((f"{prefix}{f.name}", tp))
    return out


def _config_class(command: str) -> type:
    module, name = CONFIGS[command].split(":")
    return getattr(importlib.import_module(module), name)


FLOAT_FIELDS = [
    (command, name)
    for command in CONFIGS
    for name, tp in _numeric_fields(_config_class(command))
    if tp is float
]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize(
    ("command", "name"), FLOAT_FIELDS, ids=[f"{c}-{n}" for c, n in FLOAT_FIELDS]
)
def test_every_float_setting_refuses_non_finite_values_naming_the_flag(
    command, name, value, capsys, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # nothing may be written, and nothing here is
    forbid_running(monkeypatch)
    assert main([command, flag(name), value]) == 2
    one_line_error(capsys, flag(name))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("command", "name", "value"),
    [
        ("train", "lr", "inf"),
        ("train", "rank_weight", "nan"),
        ("train", "grad_clip", "nan"),
        ("train", "weight_decay", "nan"),
        ("train", "rank_margin", "nan"),
    ],
)
def test_the_reported_non_finite_train_values_never_reach_a_step(
    model_dir, traj, tmp_path, capsys, command, name, value
):
    out = tmp_path / "run"
    argv = ["train", flag("model"), model_dir, flag("data"), str(traj), flag("output_dir")]
    argv += [str(out), flag("td_window"), "3", flag("rank_window"), "3", flag("lora_rank"), "0"]
    argv += [flag("max_steps"), "1", flag("progress"), "false", flag(name), value]
    assert main(argv) == 2
    one_line_error(capsys, flag(name))
    assert not out.exists()


@pytest.mark.parametrize(
    ("command", "name", "value"),
    [
        ("distill", "steps", "0"),
        ("distill", "gen_length", "0"),
        ("distill", "steps", "-3"),
        ("distill", "top_p", "1.5"),
        ("distill", "top_p", "0"),
        ("distill", "temperature", "-1"),
        ("distill", "threshold", "1.5"),
        ("distill", "block_length", "0"),
        ("distill", "top_k", "-1"),
        ("eval", "n_examples", "0"),
        ("eval", "batch_size", "0"),
        ("eval", "n_samples", "0"),
        ("eval", "top_p", "2"),
        ("eval", "temperature", "-0.5"),
        ("train", "lora_alpha", "0"),
        ("train", "lr", "-1"),
        ("train", "eval_examples", "0"),
        ("pretrain", "lr", "0"),
        ("pretrain", "warmup_steps", "-1"),
        ("pretrain", "grad_clip", "-1"),
        ("pretrain", "min_lr_ratio", "2"),
        ("pretrain", "eval_examples", "0"),
        ("pretrain", "model.hidden_size", "0"),
        ("pretrain", "model.max_length", "0"),
        ("inspect", "index", "-1"),
    ],
)
def test_out_of_range_values_are_refused_naming_the_flag(
    command, name, value, capsys, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    forbid_running(monkeypatch)
    (tmp_path / "x.jsonl").write_text("")  # inspect's file exists: the flag is what is wrong
    extra = [str(tmp_path / "x.jsonl")] if command == "inspect" else []
    assert main([command, *extra, flag(name), value]) == 2
    one_line_error(capsys, flag(name))


def test_window_advice_is_always_a_value_the_flag_accepts(model_dir, traj, tmp_path, capsys):
    """A file of one-step trajectories: `use td_window <= 0` would be impossible advice."""
    for order, path in (([0] * 6, "one-step.jsonl"), ([-1] * 6, "never.jsonl")):
        items = [json.loads(x) for x in traj.read_text().splitlines()]
        for r in items:
            r["decoding_order"] = order
        data = tmp_path / path
        data.write_text("".join(json.dumps(r) + "\n" for r in items))
        argv = ["train", flag("model"), model_dir, flag("data"), str(data), flag("output_dir")]
        argv += [str(tmp_path / "run"), flag("objective"), "td", flag("td_window"), "1"]
        argv += [flag("lora_rank"), "0", flag("max_steps"), "1", flag("progress"), "false"]
        assert main(argv) == 2
        # never-decoded records are refused as such (issue 21), before any window advice
        err = one_line_error(capsys, path, "td_window" if order[0] == 0 else "decoding_order")
        for bound in re.findall(r"td_window <= (-?\d+)", err):
            assert int(bound) >= 1, err


def test_the_generated_help_matches_the_config_classes():
    """``tabom COMMAND --help`` prints the generated text; it must be what the classes say
    (after changing a field: ``python -m tabom.cli --refresh-help``)."""
    cached = cli_help.cached_settings()
    assert cached, f"{cli_help.HELP_CACHE} is missing or of another version"
    assert cached == cli.live_settings(), "run: python -m tabom.cli --refresh-help"


def test_command_help_imports_no_torch():
    """The reported 10 s of `tabom train --help` were torch's import; help needs none."""
    import subprocess
    import sys

    code = (
        "import sys, io, contextlib\n"
        "from tabom.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    assert main(['train', '--help']) == 0\n"
        "assert '--lr' in out.getvalue()\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
