"""The demo's presets as YAML data (issue 20 item 5): shipped in the package, and the order
dataclass defaults < preset < the user's ``--config`` file < flags, decided by what the user
set (a flag equal to its default still beats the preset)."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest

from tabom.cli import load_config, main
from tabom.commands.demo import pipeline, sweep
from tabom.commands.demo.config import ALL_ARMS, PRESETS, DemoConfig, read_preset
from tabom.config import build_config

ROOT = Path(__file__).resolve().parents[1]


class Stop(Exception):
    """Raised by the patched first stage: the config the command would run is captured."""


@pytest.fixture
def first_stage(monkeypatch):
    """The DemoConfig that ``tabom demo`` / ``tabom sweep`` would run (their first stage,
    ``make_splits``, takes it and stops the command)."""
    seen: list[DemoConfig] = []

    def stop(cfg):
        seen.append(cfg)
        raise Stop

    monkeypatch.setattr(pipeline, "make_splits", stop)
    monkeypatch.setattr(sweep, "make_splits", stop)
    return seen


def test_a_flag_equal_to_its_default_beats_the_preset(tmp_path, first_stage):
    assert DemoConfig().distill_prompts == 1500 and read_preset("testbeds/sudoku")[
        "distill_prompts"
    ] == 500
    out = ["--output_dir", str(tmp_path), "--progress", "false"]
    with pytest.raises(Stop):
        main(["demo", "--testbed", "sudoku", "--distill_prompts", "1500", *out])
    with pytest.raises(Stop):  # a group's field: the preset's other loss fields stay
        main(["demo", "--testbed", "longadd", "--loss.td_window", "3", *out])
    with pytest.raises(Stop):  # --quick: the testbed's own set sizes win over quick.yaml's
        main(["demo", "--testbed", "sudoku", "--quick", "--test_examples", "500", *out])
    sudoku, longadd, quick = first_stage
    assert sudoku.distill_prompts == 1500 and sudoku.model == "tiny-sudoku"
    assert longadd.loss.td_window == 3 and longadd.loss.rank_window == 16
    assert quick.test_examples == 500 and quick.val_examples == 100 and quick.seeds == [0, 1]


def test_the_users_yaml_beats_the_preset_and_flags_beat_the_yaml(tmp_path, first_stage):
    user = tmp_path / "mine.yaml"
    user.write_text("testbed: sudoku\ndistill_prompts: 1500\nval_examples: 20\n")
    out = ["--output_dir", str(tmp_path), "--progress", "false"]
    with pytest.raises(Stop):
        main(["demo", "--config", str(user), "--val_examples", "100", *out])
    with pytest.raises(Stop):  # nested: the sweep's demo group gets its presets too
        main(["sweep", "--demo.testbed", "sudoku", "--demo.distill_prompts", "1500",
              "--demo.output_dir", str(tmp_path), "--demo.progress", "false"])  # fmt: skip
    mine, swept = first_stage
    assert (mine.distill_prompts, mine.val_examples, mine.test_examples) == (1500, 100, 224)
    assert swept.distill_prompts == 1500 and swept.model == "tiny-sudoku"


def test_every_testbed_and_protocol_has_a_shipped_preset_that_is_a_valid_config(tmp_path):
    hints = typing.get_type_hints(DemoConfig)
    names = [f"testbeds/{t}" for t in typing.get_args(hints["testbed"])]
    names += [f"protocols/{p}" for p in typing.get_args(hints["protocol"])]
    for name in names:  # read through importlib.resources, as an installed wheel does
        assert PRESETS.joinpath(*f"{name}.yaml".split("/")).is_file(), name
    files = sorted(p.relative_to(ROOT / "src/tabom/commands/demo/presets")
                   for p in (ROOT / "src/tabom/commands/demo/presets").rglob("*.yaml"))  # fmt: skip
    assert len(files) >= len(names) + 1
    for rel in files:  # each is a `tabom demo --config` file that selects its own preset
        values = read_preset(rel.with_suffix("").as_posix())
        chosen = {k: values[k] for k in ("testbed", "protocol", "quick") if k in values}
        assert chosen, rel
        as_file = load_config(DemoConfig, ROOT / "src/tabom/commands/demo/presets" / rel)
        assert as_file == build_config(DemoConfig, chosen), rel
    assert read_preset("protocols/full")["objectives"] == ALL_ARMS  # every arm, once
    assert read_preset("testbeds/nope") == {}


def test_configs_demo_in_a_clone_is_the_shipped_preset_folder():
    """``configs/demo`` (what a reader of the repository finds) is the package's folder, not a
    copy; pyproject ships it as package data."""
    here = ROOT / "configs" / "demo" / "testbeds" / "sudoku.yaml"
    shipped = ROOT / "src/tabom/commands/demo/presets/testbeds/sudoku.yaml"
    assert here.resolve() == shipped.resolve()
    lines = (ROOT / "pyproject.toml").read_text().splitlines()
    package_data = next(x for x in lines if x.startswith("tabom = ["))
    assert '"commands/demo/presets/**/*.yaml"' in package_data


def test_a_preset_choice_that_is_not_a_choice_is_refused_naming_the_flag():
    with pytest.raises(Exception, match="--testbed: 'sudokuu' is not one of"):
        load_config(DemoConfig, None, ["--testbed", "sudokuu"])
    assert build_config(DemoConfig, {"testbed": "sudoku"}).output_dir == "runs/demo-sudoku"
