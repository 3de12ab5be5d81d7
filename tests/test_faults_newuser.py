"""Issue 21, a new user: refusals that are fast and one line (before torch is imported), no
noise from transformers' bars or nested bars, short labels, readable ``--help``."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import tabom
from tabom.cli import main
from test_faults_files import TASK, flag, one_line_error, train_argv

pytestmark = pytest.mark.usefixtures("one_thread")  # model_dir, one_thread: conftest.py
SRC = str(Path(tabom.__file__).resolve().parent.parent)  # the tabom under test


def _cli_without_torch(argv: list[str]) -> tuple[int, str, bool]:
    """Run ``main(argv)`` in a fresh interpreter: (exit code, stderr, torch was imported)."""
    code = (
        "import sys; from tabom.cli import main; rc = main(sys.argv[1:]); "
        "print('torch' in sys.modules); sys.exit(rc)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC},
        timeout=120,
    )
    return proc.returncode, proc.stderr, proc.stdout.strip().endswith("True")


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["train", "--lrr", "1e-4"], ["--lrr", "did you mean --lr?"]),
        (["train", "--td_window", "3"], ["did you mean --loss.td_window?"]),
        (["train", "--data", "MISSING.jsonl"], ["--data", "MISSING.jsonl"]),
        (["inspect", "MISSING.jsonl"], ["MISSING.jsonl"]),
        (["eval", "--adapter", "NO_SUCH_DIR"], ["--adapter", "NO_SUCH_DIR"]),
    ],
)
def test_a_misspelled_flag_or_a_missing_file_is_refused_before_torch(argv, needles):
    rc, err, torch_imported = _cli_without_torch(argv)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert not torch_imported
    assert "[Errno" not in lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_an_unknown_command_is_one_line_with_a_suggestion(capsys):
    assert main(["bogus"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown command 'bogus'" in err
    assert main(["trian"]) == 2
    assert "did you mean 'train'" in capsys.readouterr().err


def test_a_group_field_error_keeps_the_leading_dashes(capsys):
    assert main(["train", "--gt_task", TASK, "--loss.rank_loss", "hinge_sg"]) == 2
    one_line_error(capsys, "--loss.rank_loss", "hinge-sg")


def test_train_refuses_a_missing_data_file_from_yaml_before_loading_the_model(
    tmp_path, capsys, monkeypatch
):
    import tabom.commands.train as tr

    monkeypatch.setattr(tr, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    config = tmp_path / "c.yaml"
    config.write_text(f"data: {tmp_path / 'missing.jsonl'}\n")
    assert main(["train", "--config", str(config)]) == 2
    one_line_error(capsys, "missing.jsonl")


def test_loading_and_saving_a_tiny_model_shows_no_transformers_bars(tmp_path, capsys):
    from tabom.models import load_model, save_model

    save_model(load_model("tiny-base"), tmp_path / "m")
    load_model(str(tmp_path / "m"))
    err = capsys.readouterr().err
    assert "Loading weights" not in err and "Writing model shards" not in err, err


def test_outer_bars_only_on_a_terminal():
    from tqdm import tqdm

    from tabom.progress import outer_bar

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert outer_bar(True, Tty()) and not outer_bar(False, Tty())
    log = io.StringIO()  # a log file: the outer bar is off, so no cursor-up escapes
    for _ in tqdm(range(2), file=log, disable=not outer_bar(True, log)):
        for _ in tqdm(range(3), file=log, leave=False):
            pass
    assert "\x1b[A" not in log.getvalue()


def test_eval_bar_labels_are_short(model_dir, capsys):
    argv = ["eval", flag("model"), model_dir, flag("n_examples"), "2"]
    assert main([*argv, "--budget_tokens_per_step", "1,2"]) == 0
    bars = [x for x in capsys.readouterr().err.replace("\r", "\n").splitlines() if "it/s" in x]
    labels = {line.split(":  ")[0].split(": ", 1)[-1] for line in bars if "domain" in line}
    assert labels and "old domain: addition [1 x greedy]" in "".join(bars)
    assert not any("min_digits" in line for line in bars), bars
    assert max(len(line.split("|")[0]) for line in bars) <= 45, bars


def test_sft_bar_shows_no_rank_and_pretrain_prints_no_raw_dict(model_dir, tmp_path, capsys):
    argv = train_argv(model_dir, tmp_path / "t.jsonl", tmp_path / "run")
    argv = [a for a in argv if a not in ("--data", str(tmp_path / "t.jsonl"))]
    argv[argv.index("td")] = "sft"
    argv[argv.index(flag("progress")) + 1] = "true"
    assert main([*argv, flag("gt_task"), TASK, flag("gt_examples"), "4"]) == 0
    err = capsys.readouterr().err
    assert "ce=" in err and "rank=" not in err
    out = tmp_path / "pre"
    pre = ["pretrain", "--output_dir", str(out), "--steps", "1", "--batch_size", "4"]
    pre += ["--eval_examples", "2", "--model.hidden_size", "32", "--model.num_layers", "1"]
    assert main(pre) == 0
    text = "".join(capsys.readouterr())
    assert "greedy accuracy" in text and "{'" not in text


def test_lora_wrapping_raises_no_peft_future_warning(model_dir):
    from tabom.models import load_model
    from tabom.models.lora import with_lora

    dlm = load_model(model_dir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with_lora(dlm.model, rank=2, alpha=2.0, dropout=0.0, targets=["q_proj"])
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]


def test_help_renders_markup_and_wraps_to_the_terminal(capsys, monkeypatch):
    from tabom.cli import render_help

    monkeypatch.setenv("COLUMNS", "80")
    assert main(["distill", "--help"]) == 0
    out = capsys.readouterr().out
    assert "``" not in out and ":func:" not in out
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "--decode.steps (default None; >= 1)" in out
    assert render_help("  --a (default 1): ``x`` and :func:`f`", 60) == "  --a (default 1): x and f"


@pytest.mark.slow  # a second pytest process: torch's import under conftest.py
def test_the_readme_test_install_is_lean_and_lm_eval_tests_skip_without_it(tmp_path):
    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    assert "pip install -e '.[dev]' && HF_HUB_OFFLINE=1 pytest" in readme
    assert "--index-url https://download.pytorch.org/whl/cpu" in readme  # CPU-only users
    assert "rerun today" not in readme and "and beats `td`" not in readme  # unsupported claims
    code = (
        "import sys; sys.modules['lm_eval'] = None; import pytest; "
        f"sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', {str(root / 'tests' / 'test_lm_eval.py')!r}]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC},
        cwd=tmp_path,
        timeout=300,
    )
    # a module-level skip collects nothing: pytest's exit code 5, with the skip reported
    assert proc.returncode in (0, 5) and "1 skipped" in proc.stdout, proc.stdout + proc.stderr
    assert "error" not in proc.stdout.lower(), proc.stdout
