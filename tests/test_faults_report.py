"""Issue 21, the demo's report and plots: one verdict rule (the Welch 95% interval), tables a
screen wide, no one-point tuning rows, no self-contradicting verdict, plots that say what
they show."""

from __future__ import annotations

from pathlib import Path

import pytest

from tabom import plots
from tabom.commands.demo.config import DemoConfig
from tabom.commands.demo.report import compare, protocol_section, table
from tabom.commands.demo.report import testbed_verdict as verdict_line


def test_one_verdict_rule_the_welch_interval():
    a, b = [0.30, 0.36, 0.42], [0.45, 0.46, 0.47]  # -0.10: over 2 SE, inside Welch's 95%
    assert compare(a, b)[1] == "no clear difference"
    assert compare([0.5, 0.5, 0.5], [0.2, 0.2, 0.2])[1] == "better"
    # against base's one greedy run: the arm's one-sample interval
    assert compare([0.5, 0.6, 0.7], [0.1])[1] == "better"
    assert compare([0.1, 0.6, 0.9], [0.4])[1] == "no clear difference"
    assert compare([0.3], [0.1])[1] == "no clear difference"  # one run each: no interval


def _rows(arms: dict[str, list[float]], cfg: DemoConfig) -> dict:
    """Report rows where every metric of an arm has the given per-seed values."""
    keys = [f"new@{t}" for t in cfg.tokens_per_step] + [f"nfe@{t}" for t in cfg.tokens_per_step]
    keys += [f"pass@{k}" for k in cfg.ks]
    keys += ["old", "val", "forgetting", "c2w", "w2c", "tau", "tau0", "tds", "hard"]
    keys += ["tau_oracle", "tau_base"]
    rows = {name: {k: list(v) for k in keys} for name, v in arms.items()}
    rows["_kmax"] = str(max(cfg.ks))
    return rows


def test_the_main_table_fits_a_screen():
    cfg = DemoConfig()
    rows = _rows({"base": [0.1], "sft": [0.8, 0.8, 0.9], "tabom": [0.3, 0.4, 0.5]}, cfg)
    for line in table(rows, cfg).splitlines():
        assert line.count("|") - 1 <= 12, line  # was 20


def test_no_one_point_tuning_rows_and_no_best_of_one_arm():
    cfg = DemoConfig(objectives=["traj-sft", "td", "tabom"], seeds=[0, 1, 2])
    rows = _rows(
        {"traj-sft": [0.7, 0.8, 0.75], "td": [0.2, 0.3, 0.25], "tabom": [0.3, 0.2, 0.4]}, cfg
    )
    tuning = {a: {"points": [{}], "val": {}, "chosen": {}} for a in cfg.objectives}
    text = "\n".join(protocol_section(rows, cfg, tuning))
    assert "(one point)" not in text and "### Tuning" not in text
    for line in [x for x in text.splitlines() if x.startswith("| ")]:
        assert line.count("|") - 1 <= 6, line  # one table per reference
    verdict = verdict_line(rows, cfg, {"new@1": "new@1"})
    assert "no arm" not in verdict and "best arm" not in verdict
    assert "tabom is" in verdict and "no clear difference" in verdict


def test_entropy_plot_has_error_bars_a_note_and_a_floor(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or Path(path))
    curves = {"base": [(0.0, 0.0), (0.5, 0.0)], "tabom": [(0.0, 0.0), (0.7, 0.1)]}
    plots.plot_entropy_curves(curves, tmp_path / "e.png", note="averaged over 9 trajectories")
    (fig,) = figures
    ax = fig.axes[0]
    assert len(ax.containers) == 2  # one errorbar container per model
    assert ax.get_ylim()[0] == 0
    assert "averaged over" in ax.get_xlabel() and "s = 0" in ax.get_xlabel()


def test_accuracy_panels_share_one_scale_and_trajectory_names_its_model(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or Path(path))
    panels = {"a": {"x": (0.9, 0.05)}, "b": {"x": (0.2, 0.01)}}
    plots.plot_metric_bars(panels, tmp_path / "a.png", sharey=True)
    ylims = {ax.get_ylim() for ax in figures[0].axes}
    assert len(ylims) == 1
    from tabom.trajectory import TrajectoryRecord

    rec = TrajectoryRecord(
        id="p#0",
        prompt_id="p",
        sample=0,
        prompt="1+1=",
        prompt_token_ids=[5],
        response_token_ids=[6, 7],
        decoding_order=[1, 0],
        response_text="2",
        method="confidence",
        data_source="t",
        verified=True,
        gen={"model": "tiny-base"},
    )
    plots.plot_trajectory(rec, tmp_path / "t.png")
    ax = figures[1].axes[0]
    assert "tiny-base" in ax.get_title() and list(ax.get_yticks()) == []


def test_metric_bars_past_ten_arms_keep_distinct_colours_and_wider_panels(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.colors import to_rgba

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or Path(path))
    few = {"acc": {f"arm{j}": (0.1 * (j % 9), 0.01) for j in range(4)}}
    many = {"acc": {f"arm{j}": (0.1 * (j % 9), 0.01) for j in range(14)}}  # the full protocol
    plots.plot_metric_bars(few, tmp_path / "few.png")
    plots.plot_metric_bars(many, tmp_path / "many.png")
    small, big = figures
    bars = big.axes[0].patches
    assert len(bars) == 14
    assert len({to_rgba(b.get_facecolor()) for b in bars}) == 14  # C0..C9 repeat after 10
    assert big.get_figwidth() > small.get_figwidth()
    # value labels stand upright past 8 bars so neighbours do not overlap
    assert {t.get_rotation() for t in big.axes[0].texts} == {90.0}
    assert {t.get_rotation() for t in small.axes[0].texts} == {0.0}


@pytest.mark.parametrize("n", [14, 25])
def test_curve_plots_give_every_model_its_own_colour(tmp_path, monkeypatch, n):
    """The entropy and budget plots of a full-protocol report (14 arms) colour each model
    apart, like the bars (one palette), and so does a sweep past tab20's 20 colours."""
    pytest.importorskip("matplotlib")
    from matplotlib.colors import to_rgba

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or Path(path))
    plots.plot_entropy_curves({f"m{j}": [0.1 * j, 0.05 * j] for j in range(n)}, tmp_path / "e")
    plots.plot_budgets({f"m{j}": {1: (0.5, 0.1), 2: (0.4, 0.1)} for j in range(n)}, tmp_path / "b")
    for fig in figures:
        containers = fig.axes[0].containers  # one errorbar container per model
        assert len(containers) == n
        assert len({to_rgba(c.lines[0].get_color()) for c in containers}) == n
    bars = {f"m{j}": (0.5, 0.1) for j in range(n)}
    plots.plot_metric_bars({"acc": bars}, tmp_path / "a")
    assert len({to_rgba(b.get_facecolor()) for b in figures[-1].axes[0].patches}) == n
