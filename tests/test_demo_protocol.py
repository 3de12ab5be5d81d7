"""``tabom demo``'s testbeds and fair protocol (issue 12): arms, presets, the real Sudoku
held-out sets, the validation-only choice of each arm's setting, τ to a reference order and
the Welch interval of the report."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tabom.cli import main
from tabom.commands.demo import pipeline
from tabom.commands.demo.config import ALL_ARMS, DemoConfig, parse_arm
from tabom.config import build_config
from tabom.evaluate import tau_to_order
from tabom.losses import RANK_LOSSES
from tabom.metrics import diff_ci, t_quantile_975
from tabom.objectives import OBJECTIVES


def test_arms_are_objectives_or_ranking_variants():
    assert parse_arm("td") == ("td", {})
    assert parse_arm("tabom-logistic-sg") == ("tabom", {"rank_loss": "logistic-sg"})
    with pytest.raises(ValueError, match="tabom-VARIANT"):
        parse_arm("tabom-nope")
    with pytest.raises(ValueError, match="tabom-VARIANT"):
        DemoConfig(objectives=["td", "dpo"])
    # every objective and every variant is an arm of the full protocol, once
    assert set(OBJECTIVES) <= set(ALL_ARMS) and len(set(ALL_ARMS)) == len(ALL_ARMS)
    assert {f"tabom-{v}" for v in RANK_LOSSES if v != "hinge"} <= set(ALL_ARMS)


def test_every_arm_gets_the_same_tuning_budget():
    cfg = DemoConfig(tune_lr=[5e-4, 1e-3], tune_rank_weight=[0.3, 1.0])
    assert cfg.arm_points("td") == [{"lr": 5e-4}, {"lr": 1e-3}]
    assert cfg.arm_points("tabom-hinge-sg") == [{"rank_weight": 0.3}, {"rank_weight": 1.0}]
    assert DemoConfig().arm_points("tabom") == [{}]
    with pytest.raises(ValueError, match="same number of points"):
        DemoConfig(tune_lr=[5e-4, 1e-3], tune_rank_weight=[1.0])
    with pytest.raises(ValueError, match=r"tune_lr\[0\]: 0.0 is out of range; it must be > 0"):
        DemoConfig(tune_lr=[0.0])
    with pytest.raises(ValueError, match="tune_rank_weight: .*inf.* is not a finite number"):
        DemoConfig(tune_rank_weight=[float("inf")])


def test_presets_fill_only_fields_left_at_default():
    assert build_config(DemoConfig, {}) == DemoConfig()  # the no-flag demo is unchanged
    full = build_config(DemoConfig, {"protocol": "full", "seeds": [7, 8, 9, 10, 11]})
    assert full.seeds == [7, 8, 9, 10, 11] and full.objectives == ALL_ARMS
    assert full.output_dir == "runs/demo-full" and full.loss.td_cut_range == "inclusive"
    assert len(full.arm_points("td")) == len(full.arm_points("tabom")) == 2
    sud = build_config(DemoConfig, {"testbed": "sudoku", "protocol": "full"})
    assert sud.model == "tiny-sudoku" and sud.heldout == "sudoku-real"
    assert sud.stratum == "n_rounds" and sud.oracle_min_rank == 1
    assert sud.arm_points("td") == sud.arm_points("tabom") == [{}]
    assert sud.output_dir == "runs/demo-sudoku-full"
    assert build_config(DemoConfig, {"testbed": "sudoku", "output_dir": "x"}).output_dir == "x"
    la = build_config(DemoConfig, {"testbed": "longadd", "protocol": "full"})
    assert la.model == "tiny-longadd" and la.new_task == "longadd:digits=48"
    assert la.loss.td_window == la.loss.rank_window == la.loss.tad_delta == 16
    assert la.loss.td_cut_range == "inclusive" and la.output_dir == "runs/demo-longadd-full"
    assert "tad" in la.objectives and "sft-covered" in la.objectives


def test_sudoku_held_out_sets_are_real_puzzles_disjoint_from_distillation():
    cfg = build_config(
        DemoConfig, {"testbed": "sudoku", "distill_prompts": 200, "old_examples": 10}
    )
    s = pipeline.make_splits(cfg)
    assert len(s["val"]) == cfg.val_examples and len(s["test"]) == cfg.test_examples
    assert all(ex.id.startswith("sudoku-sudoku_4x4_") for ex in s["val"] + s["test"])
    prompts = {ex.prompt for ex in s["distill"]}
    assert not prompts & {ex.prompt for ex in s["val"] + s["test"]}
    assert not {ex.id for ex in s["val"]} & {ex.id for ex in s["test"]}
    with pytest.raises(ValueError, match="need 400"):
        pipeline.make_splits(
            build_config(
                DemoConfig, {"testbed": "sudoku", "test_examples": 300, "val_examples": 100}
            )
        )


def test_tau_to_order_against_hand_computed_cases():
    steps = [[0, 1, 2, -1], [2, 1, 0, 3], [0, 0, 1, 2]]
    ref = [[0, 1, 2, -1], [0, 1, 2, -1], [5, 1, 2, 3]]
    taus = tau_to_order(steps, ref)
    assert taus[0] == pytest.approx(1.0) and taus[1] == pytest.approx(-1.0)
    # row 3: (0,5) (0,1) (1,2) (2,3): 6 pairs, one tie in x; concordant 3, discordant 2
    assert taus[2] == pytest.approx((3 - 2) / math.sqrt(5 * 6))
    assert tau_to_order([[0, 1, 2]], [[0, 1, 2]], min_rank=1) == [pytest.approx(1.0)]
    assert math.isnan(tau_to_order([[0, 1]], [[0, -1]])[0])  # one position left: undefined
    with pytest.raises(ValueError, match="reference ranks"):
        tau_to_order([[0, 1]], [[0, 1, 2]])


def test_diff_ci_is_the_welch_interval():
    d, lo, hi = diff_ci([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    # se² = 1/3, df = 2 -> t = 4.303
    assert d == 2.0 and hi - d == pytest.approx(4.303 * math.sqrt(1 / 3)) and lo < 0 < d
    d, lo, hi = diff_ci([0.5, 0.5], [0.2, 0.2])
    assert (d, lo, hi) == (pytest.approx(0.3), pytest.approx(0.3), pytest.approx(0.3))
    assert math.isnan(diff_ci([0.5], [0.2, 0.3])[1])
    assert t_quantile_975(4) == 2.776 and t_quantile_975(100) == 1.96


def test_each_arm_keeps_the_point_best_on_validation(tmp_path, monkeypatch):
    """The choice reads only validation accuracy (a fake: lr 1e-3 / λ 0.3 score best)."""
    seen = []

    def fake_train_stage(cfg, objective, seed, steps, data):
        def fn(folder: Path):
            (folder / "model").mkdir()
            return {"lr": cfg.lr, "rank_weight": cfg.loss.rank_weight, "obj": objective}

        return fn

    def fake_validate(cfg, model, splits):
        seen.append(model)
        return 0.9 if ("lr0.001" in model or "rank_weight0.3" in model) else 0.1

    monkeypatch.setattr(pipeline, "train_stage", fake_train_stage)
    monkeypatch.setattr(pipeline, "validate_model", fake_validate)
    cfg = DemoConfig(
        objectives=["td", "tabom-hinge-sg"],
        seeds=[0, 1],
        tune_lr=[5e-4, 1e-3],
        tune_rank_weight=[0.3, 1.0],
    )
    splits = {"val": [], "test": []}
    models, tuning, _, _ = pipeline.train_arms(cfg, tmp_path, splits, {"key": "k"}, 3)
    assert tuning["td"]["chosen"] == "lr0.001"
    assert tuning["tabom-hinge-sg"]["chosen"] == "rank_weight0.3"
    assert all("lr0.001" in m for m in models["td"]) and len(models["td"]) == 2
    assert len(seen) == 8  # 2 arms x 2 points x 2 seeds, each validated once
    # the variant's own setting reached its training runs
    marker = tmp_path / "train" / "tabom-hinge-sg" / "rank_weight0.3" / "seed0" / "stage.json"
    assert '"rank_loss": "hinge-sg"' in marker.read_text().replace("\n", "").replace("  ", " ")


def test_the_setup_line_says_when_a_grid_replaces_its_lr_and_lambda():
    from tabom.commands.demo.report import _tuned_note

    assert _tuned_note(DemoConfig()) == ""
    note = _tuned_note(DemoConfig(tune_lr=[5e-4, 1e-3], tune_rank_weight=[0.1, 0.3]))
    assert "lr from [0.0005, 0.001]" in note and "λ of the ranking arms from [0.1, 0.3]" in note


def test_reverse_order_takes_the_runs_last_first_and_chooses_the_same(tmp_path, monkeypatch):
    """``--eval_order reverse`` (the second of two processes on one folder) trains and validates
    the runs in the opposite order; the models and the choice are the same as forward's."""
    trained = []

    def fake_train_stage(cfg, objective, seed, steps, data):
        def fn(folder: Path):
            trained.append((folder.parent.parent.name, folder.parent.name, seed))
            (folder / "model").mkdir()
            return {}

        return fn

    def fake_validate(cfg, model, splits):
        return 0.9 if ("lr0.001" in model or "rank_weight0.3" in model) else 0.1

    monkeypatch.setattr(pipeline, "train_stage", fake_train_stage)
    monkeypatch.setattr(pipeline, "validate_model", fake_validate)
    kw = {"objectives": ["td", "tabom"], "seeds": [0, 1], "tune_lr": [5e-4, 1e-3]}
    kw["tune_rank_weight"] = [0.3, 1.0]
    splits = {"val": [], "test": []}
    out = {}
    for order in ("forward", "reverse"):
        cfg = DemoConfig(eval_order=order, **kw)
        root = tmp_path / order
        models, tuning, _, _ = pipeline.train_arms(cfg, root, splits, {"key": "k"}, 3)
        rel = {a: [str(Path(m).relative_to(root)) for m in ms] for a, ms in models.items()}
        out[order] = (rel, tuning, trained[:])
        trained.clear()
    assert out["forward"][:2] == out["reverse"][:2]
    assert out["reverse"][2] == out["forward"][2][::-1]
    assert out["forward"][2][0] == ("td", "lr0.0005", 0)
    assert out["forward"][0]["tabom"] == [
        "train/tabom/rank_weight0.3/seed0/model",
        "train/tabom/rank_weight0.3/seed1/model",
    ]


@pytest.mark.slow
def test_sudoku_testbed_with_variants_and_controls_end_to_end(tmp_path):
    out = tmp_path / "demo"
    argv = ["demo", "--testbed", "sudoku", "--output_dir", str(out), "--progress", "false"]
    argv += ["--objectives", "td,tabom-logistic-sg,puma", "--seeds", "0,1"]
    argv += ["--distill_prompts", "24", "--distill_samples", "2", "--epochs", "1"]
    argv += ["--test_examples", "20", "--val_examples", "20", "--pass_examples", "10"]
    argv += ["--old_examples", "30", "--n_samples", "2", "--ks", "1,2", "--align_samples", "1"]
    argv += ["--tokens_per_step", "1", "--tune_lr", "5e-4,1e-3", "--tune_rank_weight", "0.3,1"]
    assert main(argv) == 0
    report = (out / "report.md").read_text()
    for arm in ("td", "tabom-logistic-sg", "puma"):
        assert f"| {arm} |" in report, arm
    assert "n_rounds = " in report and "τ decode→oracle" in report
    assert "Differences to td" in report and "Verdict (sudoku)" in report
    assert "val acc per point" in report
    assert "λ of the ranking arms from [0.3, 1.0] per arm on validation: see Tuning" in report


def test_covered_arms_train_the_ground_truth_objectives_on_the_covered_prompts(
    tmp_path, monkeypatch
):
    """``sft-covered`` & co. (issue 19): the same objective, the ground truth of only the prompts
    with a verified trajectory, its own stage key beside the all-prompt arm."""
    import json

    import torch

    from tabom.commands.demo.config import is_covered
    from tabom.tasks import make_task

    assert parse_arm("sft-covered") == ("sft", {}) and parse_arm("papl-covered") == ("papl", {})
    assert is_covered("puma-covered") and not is_covered("puma")
    with pytest.raises(ValueError, match="-covered"):
        parse_arm("td-covered")  # trajectory arms are covered by construction
    assert {"tad", "sft-covered", "puma-covered", "papl-covered"} <= set(ALL_ARMS)

    exs = make_task("addition:min_digits=4,max_digits=4,width=4").generate(
        5, torch.Generator().manual_seed(0)
    )
    distill_dir = tmp_path / "distill"
    distill_dir.mkdir()
    recs = [  # prompt 0: two verified; prompt 2: one verified; prompt 3: only a failed one
        {"prompt_id": exs[0].id, "verified": True},
        {"prompt_id": exs[0].id, "verified": True},
        {"prompt_id": exs[2].id, "verified": True},
        {"prompt_id": exs[3].id, "verified": False},
    ]
    (distill_dir / "trajectories.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    splits = {"distill": exs, "val": [], "test": []}
    assert pipeline.write_covered_ground_truth(distill_dir, splits) == 2
    rows = [json.loads(x) for x in (distill_dir / pipeline.COVERED_FILE).read_text().splitlines()]
    assert rows == [{"prompt": e.prompt, "answer": e.answer} for e in (exs[0], exs[2])]

    seen = []

    def fake_train_stage(cfg, objective, seed, steps, data, covered=False):
        def fn(folder: Path):
            seen.append((folder.parent.parent.name, objective, covered))
            (folder / "model").mkdir()
            return {}

        return fn

    monkeypatch.setattr(pipeline, "train_stage", fake_train_stage)
    cfg = DemoConfig(objectives=["sft", "sft-covered", "papl-covered"], seeds=[0])
    pipeline.train_arms(cfg, tmp_path, splits, {"key": "k"}, 3)
    assert seen == [
        ("sft", "sft", False),
        ("sft-covered", "sft", True),
        ("papl-covered", "papl", True),
    ]
    keys = [
        json.loads((tmp_path / "train" / a / "default" / "seed0" / "stage.json").read_text())
        for a in ("sft", "sft-covered")
    ]
    assert keys[0]["key"] != keys[1]["key"] and keys[1]["settings"]["data"] == "covered"


def test_report_command_line_names_what_differs_from_the_preset():
    """The report's command reproduces the run: a subset of arms or seeds shows as flags (the
    old line was testbed / protocol only, so a 4-arm run read as the 14-arm protocol)."""
    from tabom.commands.demo.report import command_line

    assert command_line(build_config(DemoConfig, {})) == "tabom demo"
    full = {"testbed": "longadd", "protocol": "full"}
    assert command_line(build_config(DemoConfig, full)) == (
        "tabom demo --testbed longadd --protocol full"
    )
    subset = build_config(
        DemoConfig, {**full, "objectives": "traj-sft,td,tabom", "seeds": "0,1", "output_dir": "x"}
    )
    assert command_line(subset) == (
        "tabom demo --testbed longadd --protocol full --objectives traj-sft,td,tabom --seeds 0,1"
    )
    # the flags build the same settings back (bools, None and lists spelled as the CLI reads them)
    given = {"testbed": "sudoku", "seeds": [3], "heldout": None, "quick": True, "pass_examples": 7}
    cfg = build_config(DemoConfig, given)
    words, flags = command_line(cfg).split()[2:], {}
    for i, w in enumerate(words):
        if w.startswith("--"):
            nxt = words[i + 1] if i + 1 < len(words) else "--"
            flags[w[2:]] = "true" if nxt.startswith("--") else nxt
    assert flags == {
        "testbed": "sudoku",
        "quick": "true",
        "seeds": "3",
        "pass_examples": "7",
        "heldout": "None",
    }
    back = build_config(DemoConfig, flags)
    assert {f: getattr(back, f) for f in given} == {f: getattr(cfg, f) for f in given}
