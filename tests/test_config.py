"""Typed configs: YAML and flag overrides, errors that name the flag or file."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from tabom.cli import load_config
from tabom.config import ConfigError


@dataclass
class Inner:
    width: int = 8
    kind: Literal["a", "b"] = "a"


@dataclass
class Outer:
    lr: float = 1e-3
    name: str = "x"
    flag: bool = False
    tasks: list[str] = field(default_factory=lambda: ["t1"])
    limit: int | None = None
    inner: Inner = field(default_factory=Inner)

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


def test_defaults_yaml_then_flags(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("lr: 0.5\ninner:\n  width: 16\n")
    cfg = load_config(Outer, f, ["--inner.kind", "b", "--flag", "--tasks", "a,b", "--lr=0.25"])
    assert cfg.lr == 0.25 and cfg.flag is True and cfg.tasks == ["a", "b"]
    assert cfg.inner == Inner(width=16, kind="b")
    assert load_config(Outer, None, ["--limit", "3"]).limit == 3
    assert load_config(Outer, None, ["--limit", "none"]).limit is None
    assert load_config(Outer, None, ["--name", "007"]).name == "007"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--nope", "1"], "--nope: unknown flag"),
        (["--inner.depth", "1"], "--inner.depth: unknown flag; did you mean --inner.width"),
        (["--inner.kind", "c"], "inner.kind: 'c' is not one of 'a', 'b'"),
        (["--lr", "fast"], "lr: expected a number"),
        (["--inner.width", "1.5"], "inner.width: expected an integer"),
        (["--lr", "-1"], "lr must be positive"),
        (["--lr"], "--lr: missing value"),
    ],
)
def test_bad_flags_name_the_flag(argv, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(Outer, None, argv)


def test_bad_yaml_names_the_file_and_key(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("inner:\n  colour: red\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: inner: unknown field 'colour'"):
        load_config(Outer, f)
    with pytest.raises(ConfigError, match="no such file"):
        load_config(Outer, tmp_path / "missing.yaml")


@dataclass
class WithOptional:
    label: str | None = "x"
    ks: list[int] = field(default_factory=lambda: [1])


def test_none_clears_an_optional_string_and_a_scalar_becomes_a_one_item_list():
    assert load_config(WithOptional, None, ["--label", "none"]).label is None
    assert load_config(WithOptional, None, ["--label", "nonesuch"]).label == "nonesuch"
    assert load_config(WithOptional, None, ["--ks", "8"]).ks == [8]


@dataclass
class WithChoice:
    precision: Literal["no", "bf16"] = "bf16"


def test_a_choice_that_yaml_would_read_as_a_bool_stays_a_string():
    assert load_config(WithChoice, None, ["--precision", "no"]).precision == "no"


@dataclass
class NeedsBoth:
    source: str | None = None
    target: str | None = None
    inner: Inner = field(default_factory=Inner)

    def __post_init__(self) -> None:
        if (self.source is None) != (self.target is None):
            raise ValueError("source and target go together")


def test_a_file_completed_by_a_flag_is_checked_only_once_merged(tmp_path):
    f = tmp_path / "half.yaml"
    f.write_text("source: a\ninner:\n  width: 4\n")
    cfg = load_config(NeedsBoth, f, ["--target", "b"])
    assert (cfg.source, cfg.target, cfg.inner.width) == ("a", "b", 4)
    with pytest.raises(ConfigError, match="source and target go together"):
        load_config(NeedsBoth, f)  # still incomplete once merged: refused
    f.write_text("source: a\ninner:\n  width: wide\n")  # types are still checked in the file
    with pytest.raises(ConfigError, match=r"half.yaml: inner.width: expected an integer"):
        load_config(NeedsBoth, f, ["--target", "b"])


def test_none_in_yaml_clears_an_optional_field_too(tmp_path):
    """One place turns ``none`` into None, for flags and YAML alike (no per-config coercion)."""
    path = tmp_path / "c.yaml"
    path.write_text("data: none\ngt_task: addition\nobjective: sft\n")
    from tabom.commands.train import TrainConfig

    cfg = load_config(TrainConfig, path)
    assert cfg.data is None and cfg.gt_task == "addition"
    cfg = load_config(TrainConfig, None, ["--objective", "sft", "--gt_task", "addition"])
    assert cfg.data is None


def test_a_nested_group_error_names_the_full_flag():
    from tabom.commands.demo.sweep import SweepConfig
    from tabom.commands.distill import DistillConfig

    with pytest.raises(
        ConfigError, match=r"^--decode\.top_p: 2\.0 is out of range; it must be in \(0, 1\]"
    ):
        load_config(DistillConfig, None, ["--decode.top_p", "2"])
    with pytest.raises(
        ConfigError, match=r"^--demo\.loss\.td_window: 0 is out of range; it must be >= 1"
    ):
        load_config(SweepConfig, None, ["--demo.loss.td_window", "0"])
    # a group override keeps the field's own default group: distillation stays at temperature 1
    cfg = load_config(DistillConfig, None, ["--decode.score", "entropy"])
    assert (cfg.decode.score, cfg.decode.temperature) == ("entropy", 1.0)
    sweep = load_config(SweepConfig, None, ["--demo.loss.rank_ties", "reference"])
    assert (sweep.demo.loss.rank_ties, sweep.demo.loss.td_window) == ("reference", 3)


def test_a_yaml_value_out_of_range_names_the_file_and_key(tmp_path):
    from tabom.commands.train import TrainConfig

    path = tmp_path / "run.yaml"
    path.write_text("lr: .inf\nloss:\n  rank_margin: -0.5\n")
    with pytest.raises(ConfigError, match=r"run.yaml: lr: inf is not a finite number"):
        load_config(TrainConfig, path)
    path.write_text("loss:\n  rank_margin: -0.5\n")
    with pytest.raises(ConfigError, match=r"run.yaml: loss.rank_margin: -0.5 is out of range"):
        load_config(TrainConfig, path)
