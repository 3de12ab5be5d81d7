"""The command line, through main(argv)."""

from __future__ import annotations

import json

from tabom.cli import main


def test_help_lists_the_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("pretrain", "eval"):
        assert command in out


def test_command_help_lists_fields(capsys):
    assert main(["pretrain", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--model.hidden_size" in out and "--steps" in out


def test_unknown_field_is_rejected_with_the_flag_named(capsys):
    assert main(["pretrain", "--stepz", "3"]) == 2
    assert "--stepz: unknown flag; did you mean --steps?" in capsys.readouterr().err


def test_eval_writes_json_and_a_table(tmp_path, model_dir, capsys):
    out = tmp_path / "res.json"
    argv = ["eval", "--model", model_dir, "--tasks", "addition:max_digits=2"]
    argv += ["--n_examples", "6", "--n_samples", "2", "--ks", "1,2", "--decode.temperature", "1.0"]
    assert main([*argv, "--output", str(out)]) == 0
    table = capsys.readouterr().out
    assert "pass@2" in table and "addition:max_digits=2" in table
    res = json.loads(out.read_text())["results"]["addition:max_digits=2"]
    assert res["n_examples"] == 6 and res["n_samples"] == 2
    assert len(res["correct"]) == 6 and all(len(c) == 2 for c in res["correct"])
    # a random model decodes one token per step: T forwards per answer
    assert res["nfe_per_answer"] == 4.0 and res["tokens_per_forward"] == 1.0


def test_eval_threshold_and_top_k_reach_the_decoder(tmp_path, model_dir, capsys):
    """``tabom eval --decode.threshold 0.9`` decodes in parallel and reports tokens per forward."""
    out = tmp_path / "res.json"
    argv = ["eval", "--model", model_dir, "--tasks", "addition:max_digits=2"]
    argv += ["--n_examples", "6", "--decode.threshold", "0.01", "--decode.top_k", "3"]
    assert main([*argv, "--output", str(out)]) == 0
    table = capsys.readouterr().out
    assert "tok/fwd" in table and "acc confidence@t0.01" in table
    res = json.loads(out.read_text())
    assert res["config"]["decode"]["threshold"] == 0.01 and res["config"]["decode"]["top_k"] == 3
    r = res["results"]["addition:max_digits=2"]
    # a threshold every proposal passes commits the whole response in one forward
    assert r["nfe_per_answer"] == 1.0 and r["tokens_per_forward"] == 4.0
    assert main([*argv[:-4], "--decode.threshold", "0.9"]) == 0
    assert "tok/fwd" in capsys.readouterr().out
    assert main([*argv[:-4], "--decode.threshold", "1.5"]) == 2
    assert (
        "--decode.threshold: 1.5 is out of range; it must be in (0, 1]" in capsys.readouterr().err
    )


def test_every_commands_tabom_error_is_one_line_and_exit_2(tmp_path, capsys):
    """``cli.main`` maps a :class:`tabom.errors.TabomError` to exit 2, whatever the command."""
    from tabom.errors import DataFileError, TabomError

    assert issubclass(DataFileError, TabomError) and issubclass(TabomError, ValueError)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json}\n")
    assert main(["inspect", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tabom inspect: error: ") and "bad.jsonl:1" in err[0]


def test_python_dash_m_tabom_is_the_cli():
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "tabom", "--version"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.startswith("tabom ")


def test_the_settings_reference_in_docs_is_the_generated_one():
    """docs/settings.md lists the settings once, from the same source as ``--help`` (after
    changing a config field: ``python -m tabom.cli --refresh-help`` rewrites both)."""
    from pathlib import Path

    from tabom.cli_help import cached_settings, settings_markdown

    docs = Path(__file__).resolve().parents[1] / "docs" / "settings.md"
    commands = cached_settings()
    assert docs.read_text(encoding="utf-8") == settings_markdown(commands), (
        "run: python -m tabom.cli --refresh-help"
    )
    text = docs.read_text(encoding="utf-8")
    for name in commands:
        assert f"## tabom {name}\n" in text
    assert "| `--loss.loss_chunk` | `0` | >= 0 |" in text  # the field the README's list lost
    assert "| `--decode.cache` | `'none'` | one of none, prefix, dual |" in text


def test_field_docs_read_the_attributes_section():
    from tabom.cli_help import field_docs

    class Config:
        """A config.

        Attributes:
            alpha: the first
                line and its continuation.
            beta: ``b``: a colon inside.

        Raises:
            ValueError: never.
        """

    assert field_docs(Config) == {
        "alpha": "the first line and its continuation.",
        "beta": "``b``: a colon inside.",
    }
