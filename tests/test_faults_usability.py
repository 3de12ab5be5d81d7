"""Issue 13, a new user's view: labelled progress bars and tables, saved paths printed, the
distill rate counting answers and kept trajectories apart, readable demo plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tabom import plots
from tabom.cli import main
from test_faults_files import TASK, flag

pytestmark = pytest.mark.usefixtures("one_thread")  # model_dir, one_thread: conftest.py


def test_eval_labels_its_bars_and_tables_and_says_where_it_saved(model_dir, tmp_path, capsys):
    out = tmp_path / "res.json"
    argv = ["eval", flag("model"), model_dir, flag("n_examples"), "3", flag("n_samples"), "2"]
    argv += [flag("ks"), "1,2", flag("temperature"), "1.0", flag("output"), str(out)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    # the two default sets are both `addition`: the bars say which domain each one is
    assert "old domain: addition" in captured.err and "new domain: addition" in captured.err
    # the one-sample table is not greedy here, and says so
    assert "one answer per problem at each budget" in captured.out
    assert "sampled at T = 1" in captured.out and "greedy" not in captured.out
    assert f"saved: {out}" in captured.out and json.loads(out.read_text())["results"]
    assert (
        main([*argv[:-2], flag("temperature"), "0", flag("n_samples"), "1", flag("ks"), "1"]) == 0
    )
    assert "greedy (T = 0)" in capsys.readouterr().out


def test_distill_counts_answers_and_kept_trajectories_apart_and_says_where(
    model_dir, tmp_path, capsys
):
    out = tmp_path / "t.jsonl"
    argv = ["distill", flag("model"), model_dir, flag("task"), TASK, flag("n_prompts"), "4"]
    argv += [flag("n_samples"), "2", flag("ks"), "1", flag("keep"), "verified"]
    argv += [flag("progress"), "false", flag("output"), str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    kept = len(out.read_text().splitlines())  # a random model: few or none verified
    assert "decoded 8 answers" in text and f"kept {kept} as trajectories" in text
    assert f"saved: {out}" in text and f"{out}.summary.json" in text


def test_train_says_where_it_saved(model_dir, tmp_path, capsys):
    data = tmp_path / "t.jsonl"
    argv = ["distill", flag("model"), model_dir, flag("task"), TASK, flag("n_prompts"), "4"]
    argv += [flag("n_samples"), "2", flag("ks"), "1", flag("keep"), "all"]
    argv += [flag("progress"), "false", flag("output"), str(data)]
    assert main(argv) == 0
    run = tmp_path / "run"
    argv = ["train", flag("model"), model_dir, flag("data"), str(data), flag("output_dir")]
    argv += [str(run), flag("td_window"), "3", flag("rank_window"), "3", flag("lora_rank"), "0"]
    argv += [flag("max_steps"), "1", flag("batch_size"), "2", flag("grad_accum"), "1"]
    argv += [flag("progress"), "false"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert f"train: saved {run / 'model'}" in text and str(run / "log.jsonl") in text


def test_bar_values_sit_above_their_error_bars_and_axes_are_labelled(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or Path(path))
    panels = {
        "new domain: greedy acc": {
            "base": (0.06, 0.01),
            "sft": (0.71, 0.08),
            "tabom": (0.36, 0.25),
        },
        "new domain: pass@16 (T=1)": {
            "base": (0.31, 0.0),
            "sft": (0.88, 0.04),
            "tabom": (0.5, 0.3),
        },
    }
    plots.plot_metric_bars(panels, tmp_path / "a.png", ylabels={"new domain: greedy acc": "acc"})
    (fig,) = figures
    for ax, values in zip(fig.axes, panels.values(), strict=True):
        assert ax.get_ylabel()  # labelled: given, or from the metric title
        tops = [m + s for m, s in values.values()]
        texts = sorted(ax.texts, key=lambda t: t.get_position()[0])
        assert len(texts) == len(tops)
        for text, top in zip(texts, tops, strict=True):
            assert text.get_position()[1] > top  # above the cap of the error bar
        assert ax.get_ylim()[1] > max(tops)
    assert fig.axes[0].get_ylabel() == "acc" and fig.axes[1].get_ylabel() == "new domain: pass@16"


def test_plot_titles_name_tasks_in_words():
    from tabom.commands.demo.report import describe_task

    assert describe_task("addition:min_digits=4,max_digits=4,width=4") == "4-digit addition"
    assert describe_task("addition:min_digits=1,max_digits=3,width=4") == "1-3 digit addition"
    assert "=" not in describe_task("sudoku:n_blanks=8,max_blanks=12")
